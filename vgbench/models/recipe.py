"""The model recipe: every knob a remedy may turn, with the allowed values.

Families build from a ``Recipe`` and never look at remedy names:
activation, weight init and normalization are resolved from strings here, the
way timm's ``create_act`` / ``create_norm`` do. Gradient clipping is part of the
recipe too but is applied by the Lightning Trainer, not by the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
from torch import nn

from vgbench.activations import ACTIVATIONS
from vgbench.models.stacked import pytorch_default_init


def _small_normal(weight: torch.Tensor, recipe: "Recipe") -> None:
    # The pre-2010 habit: i.i.d. N(0, std^2) with a fixed small std regardless of
    # fan-in (e.g. Hinton's 2010 RBM guide uses 0.01). It shrinks the signal at
    # every layer, which is what makes deep sigmoid nets vanish.
    nn.init.normal_(weight, 0.0, recipe.init_std)


def _pytorch_default(weight: torch.Tensor, recipe: "Recipe") -> None:
    # What nn.Linear / nn.Conv do on construction: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pytorch_default_init(weight, None)


def _xavier(weight: torch.Tensor, recipe: "Recipe") -> None:
    # Glorot & Bengio 2010, "normalized initialization": Var = 2 / (fan_in + fan_out).
    nn.init.xavier_uniform_(weight, gain=1.0)


def _he(weight: torch.Tensor, recipe: "Recipe") -> None:
    # He, Zhang, Ren & Sun 2015: Var = 2 / fan_in for rectifiers (fan_in mode keeps
    # the forward signal's variance; a is the leaky slope where there is one).
    slope = 0.01 if recipe.activation == "leaky_relu" else 0.0
    nn.init.kaiming_normal_(weight, a=slope, mode="fan_in", nonlinearity="leaky_relu")


def _lecun(weight: torch.Tensor, recipe: "Recipe") -> None:
    # LeCun et al. 1998, Var = 1 / fan_in; the init SELU's fixed point assumes
    # (Klambauer et al. 2017).
    fan_in = nn.init._calculate_fan_in_and_fan_out(weight)[0]
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in))


def _orthogonal(weight: torch.Tensor, recipe: "Recipe") -> None:
    # Saxe, McClelland & Ganguli 2014: orthogonal matrices keep all singular
    # values at the gain, so norms are preserved through a linear chain.
    gain = nn.init.calculate_gain(ACTIVATIONS[recipe.activation].gain)
    nn.init.orthogonal_(weight.view(weight.shape[0], -1), gain=gain)


INITS: dict[str, Callable[[torch.Tensor, "Recipe"], None]] = {
    "small_normal": _small_normal,
    "pytorch_default": _pytorch_default,
    "xavier": _xavier,
    "he": _he,
    "lecun": _lecun,
    "orthogonal": _orthogonal,
}

NORMS = ("none", "batchnorm", "layernorm")
SKIPS = ("none", "residual", "highway")
GRAD_CLIPS = ("none", "norm", "value")
CELLS = ("rnn", "lstm", "gru")  # read by the recurrent family only
# Recurrent (hidden-to-hidden) weights: "same" as the input weights, or identity
# (IRNN, Le, Jaitly & Hinton 2015), or any of INITS.
RECURRENT_INITS = ("same", "identity", *INITS)
PRETRAINS = ("none", "rbm")  # read by the DBN family: greedy RBM pretraining


@dataclass(frozen=True)
class Recipe:
    """How to build one network; defaults are the MLP's vanishing baseline.

    A family may start from other defaults (``Family.base_recipe``, e.g. tanh for
    the recurrent family) and ignores the fields that do not concern it.
    """

    activation: str = "sigmoid"
    init: str = "small_normal"
    init_std: float = 0.01  # only read by init="small_normal"
    norm: str = "none"
    skip: str = "none"
    grad_clip: str = "none"  # applied by the Trainer (gradient_clip_algorithm)
    grad_clip_value: float = 1.0
    cell: str = "rnn"
    recurrent_init: str = "same"
    pretrain: str = "none"

    def __post_init__(self) -> None:
        allowed = {"activation": tuple(ACTIVATIONS), "init": tuple(INITS), "norm": NORMS,
                   "skip": SKIPS, "grad_clip": GRAD_CLIPS, "cell": CELLS,
                   "recurrent_init": RECURRENT_INITS, "pretrain": PRETRAINS}
        for key, options in allowed.items():
            value = getattr(self, key)
            if value not in options:
                raise ValueError(f"recipe.{key}={value!r} is not allowed; choose one of {list(options)}")
        for key in ("init_std", "grad_clip_value"):
            if not getattr(self, key) > 0:
                raise ValueError(f"recipe.{key}={getattr(self, key)!r} must be > 0")

    def with_overrides(self, **overrides) -> "Recipe":
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return replace(self, **overrides)

    def as_dict(self) -> dict:
        return asdict(self)

    def make_activation(self) -> nn.Module:
        return ACTIVATIONS[self.activation].make()

    def make_norm(self, models: int, features: int) -> nn.Module:
        """Normalization of ``[K, N, features]``, per model (vgbench/models/stacked.py)."""
        from vgbench.models.stacked import StackedNorm

        return StackedNorm(models, features, self.norm) if self.norm != "none" else nn.Identity()

    def init_weight(self, weight: torch.Tensor) -> None:
        INITS[self.init](weight, self)

    def init_recurrent_weight(self, weight: torch.Tensor) -> None:
        """One square hidden-to-hidden block (a family initialises each gate's block apart)."""
        if self.recurrent_init == "same":
            self.init_weight(weight)
        elif self.recurrent_init == "identity":
            with torch.no_grad():
                weight.copy_(torch.eye(weight.shape[0], weight.shape[1]))
        elif self.recurrent_init == "orthogonal":
            # Gain 1, not the activation's: repeated through time, any other gain
            # grows or shrinks the state geometrically (Saxe et al. 2014).
            nn.init.orthogonal_(weight, gain=1.0)
        else:
            INITS[self.recurrent_init](weight, self)
