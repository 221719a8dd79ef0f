"""The remedy axis: each remedy is a named override of the baseline recipe.

A remedy changes as little as it needs to (so a leaderboard row isolates one
idea) and cites where it comes from. ``families`` says which model families it
applies to; ``expand`` only builds valid (family, remedy) pairs and
``skip_reason`` says why a pair is absent (benchopt's ``skip()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgbench.models.recipe import Recipe
from vgbench.registry import Registry


@dataclass(frozen=True)
class Remedy:
    name: str
    summary: str
    citation: str
    overrides: dict = field(default_factory=dict)
    families: frozenset[str] = frozenset({"mlp"})

    def recipe(self, base: Recipe | None = None) -> Recipe:
        return (base or Recipe()).with_overrides(**self.overrides)


REMEDIES: Registry[Remedy] = Registry("remedy")


def _remedy(name: str, summary: str, citation: str, families=("mlp",), **overrides) -> None:
    REMEDIES.add(name, Remedy(name, summary, citation, dict(overrides), frozenset(families)))


_remedy("baseline", "sigmoid units, small N(0, 0.01^2) init: the pre-2010 deep net that vanishes",
        "Glorot & Bengio 2010, AISTATS (the failure they analyse)")
_remedy("xavier", "tanh with Glorot's normalized init",
        "Glorot & Bengio 2010, AISTATS", activation="tanh", init="xavier")
_remedy("orthogonal", "tanh with orthogonal init",
        "Saxe, McClelland & Ganguli 2014, ICLR", activation="tanh", init="orthogonal")
_remedy("he_relu", "ReLU with He (Kaiming) init",
        "Glorot, Bordes & Bengio 2011; He et al. 2015, ICCV", activation="relu", init="he")
_remedy("leaky_relu", "leaky ReLU (slope 0.01) with He init",
        "Maas, Hannun & Ng 2013, ICML workshop", activation="leaky_relu", init="he")
_remedy("elu", "ELU with He init",
        "Clevert, Unterthiner & Hochreiter 2016, ICLR", activation="elu", init="he")
_remedy("selu_lecun", "SELU with LeCun-normal init (self-normalizing)",
        "Klambauer et al. 2017, NeurIPS", activation="selu", init="lecun")
_remedy("batchnorm", "batch normalization before each sigmoid",
        "Ioffe & Szegedy 2015, ICML", norm="batchnorm")
_remedy("grad_clip", "gradient-norm clipping at 1.0 (fights explosion, not vanishing)",
        "Pascanu, Mikolov & Bengio 2013, ICML", grad_clip="norm", grad_clip_value=1.0)
_remedy("residual", "identity skip connections around each hidden layer",
        "He, Zhang, Ren & Sun 2016, CVPR", skip="residual")
_remedy("modern", "all that apply at once: ReLU + He init + batchnorm + residual + norm clipping",
        "He et al. 2015; Ioffe & Szegedy 2015; He et al. 2016; Pascanu et al. 2013",
        activation="relu", init="he", norm="batchnorm", skip="residual",
        grad_clip="norm", grad_clip_value=1.0)


def skip_reason(family: str, remedy: str) -> str | None:
    """Why ``remedy`` does not apply to ``family``; None when it does."""
    entry = REMEDIES.get(remedy)
    if family in entry.families:
        return None
    return f"remedy {remedy!r} does not apply to family {family!r} (applies to: {sorted(entry.families)})"
