"""The remedy axis: each remedy is a named override of a family's baseline recipe.

A remedy changes as little as it needs to (so a leaderboard row isolates one
idea) and cites where it comes from (BibTeX keys in vgbench/references.bib, and the same
sources as text). It lists the families it applies to, with
the overrides for each (usually the same ones; "modern" differs per family).
``expand`` only builds valid (family, remedy) pairs and ``skip_reason`` says
why a pair is absent (benchopt's ``skip()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgbench.models import FAMILIES
from vgbench.models.recipe import Recipe
from vgbench.references import check_keys
from vgbench.registry import Registry


@dataclass(frozen=True)
class Remedy:
    name: str
    cites: tuple[str, ...]  # BibTeX keys in vgbench/references.bib
    summary: str
    citation: str  # the same sources for a reader, with the figure or equation where it helps
    overrides: dict[str, dict] = field(default_factory=dict)  # family -> recipe overrides

    @property
    def families(self) -> frozenset[str]:
        return frozenset(self.overrides)

    def recipe(self, family: str) -> Recipe:
        """The family's baseline recipe with this remedy's overrides for that family."""
        if family not in self.overrides:
            raise ValueError(skip_reason(family, self.name))
        return FAMILIES.get(family).base_recipe.with_overrides(**self.overrides[family])


REMEDIES: Registry[Remedy] = Registry("remedy")


def _remedy(name: str, cites: tuple[str, ...], summary: str, citation: str, families=("mlp",), per_family=None,
            **overrides) -> None:
    """Register a remedy citing ``cites`` (BibTeX keys): the same ``overrides`` for every family in
    ``families``, plus (or instead) family-specific ones in ``per_family``."""
    table = {family: dict(overrides) for family in families}
    table.update(per_family or {})
    REMEDIES.add(name, Remedy(name, check_keys(cites, f"remedy {name!r}"), summary, citation, table))


_remedy("small_init", ("hochreiter1991untersuchungen", "bengio1994learning", "hinton2010practical"),
        "the family's base recipe: N(0, 0.01^2) weights whatever the fan-in (the pre-2010 habit, "
        "e.g. Hinton's 2010 RBM guide); sigmoid (MLP, DBN) or tanh (RNN) units. It vanishes by construction "
        "(about 10^-1.7 per sigmoid layer of width 64): the failure, not a fair baseline; see *_standard",
        "Hochreiter 1991 (diploma thesis); Bengio, Simard & Frasconi 1994; Hinton 2010, UTML TR 2010-003",
        families=("mlp", "rnn", "dbn"))
_remedy("sigmoid_standard", ("glorot2010understanding",),
        "sigmoid with the 'standard' init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) that Glorot & "
        "Bengio 2010 studied (their eq. 1; also PyTorch's nn.Linear default): the fair sigmoid baseline",
        "Glorot & Bengio 2010, AISTATS", activation="sigmoid", init="pytorch_default")
_remedy("tanh_standard", ("glorot2010understanding",),
        "tanh with that standard init (RNN: input and recurrent weights)",
        "Glorot & Bengio 2010, AISTATS", families=("mlp", "rnn"), activation="tanh", init="pytorch_default")
_remedy("xavier", ("glorot2010understanding",),
        "tanh with Glorot's normalized init (DBN: the sigmoid stack keeps sigmoid)",
        "Glorot & Bengio 2010, AISTATS", families=("mlp", "rnn", "resnet"),  # highway: its base recipe
        activation="tanh", init="xavier", per_family={"dbn": dict(init="xavier")})
_remedy("orthogonal", ("saxe2014exact",),
        "tanh with orthogonal init (RNN: the recurrent weights, gain 1)",
        "Saxe, McClelland & Ganguli 2014, ICLR", families=("mlp",), activation="tanh", init="orthogonal",
        per_family={"rnn": dict(recurrent_init="orthogonal")})
_remedy("he_relu", ("glorot2011deep", "he2015delving"),
        "ReLU with He (Kaiming) init",
        "Glorot, Bordes & Bengio 2011; He et al. 2015, ICCV", activation="relu", init="he")
_remedy("leaky_relu", ("maas2013rectifier",),
        "leaky ReLU (slope 0.01) with He init",
        "Maas, Hannun & Ng 2013, ICML workshop", activation="leaky_relu", init="he")
_remedy("elu", ("clevert2016fast",),
        "ELU with He init",
        "Clevert, Unterthiner & Hochreiter 2016, ICLR", activation="elu", init="he")
_remedy("selu_lecun", ("klambauer2017self",),
        "SELU with LeCun-normal init (self-normalizing)",
        "Klambauer et al. 2017, NeurIPS", families=("mlp", "highway", "resnet"), activation="selu", init="lecun")
_remedy("batchnorm", ("ioffe2015batch",),
        "batch normalization before each sigmoid",
        "Ioffe & Szegedy 2015, ICML", families=("mlp", "dbn"), norm="batchnorm")
_remedy("grad_clip", ("pascanu2013difficulty",),
        "gradient-norm clipping at 1.0 (fights explosion, not vanishing)",
        "Pascanu, Mikolov & Bengio 2013, ICML", families=("mlp", "rnn"), grad_clip="norm", grad_clip_value=1.0)
_remedy("layernorm", ("ba2016layer",),
        "layer normalization of each layer's (each step's) summed input",
        "Ba, Kiros & Hinton 2016, arXiv:1607.06450", families=("mlp", "rnn"), norm="layernorm")
_remedy("irnn", ("le2015simple",),
        "ReLU units with identity-initialized recurrent weights",
        "Le, Jaitly & Hinton 2015, arXiv:1504.00941", families=("rnn",), activation="relu",
        recurrent_init="identity")
_remedy("lstm", ("hochreiter1997long", "gers2000learning"),
        "LSTM cell: a gated, additive memory (forget-gate bias 1)",
        "Hochreiter & Schmidhuber 1997, Neural Computation; Gers et al. 2000", families=("rnn",), cell="lstm")
_remedy("gru", ("cho2014learning",),
        "GRU cell: gated, interpolating memory",
        "Cho et al. 2014, EMNLP", families=("rnn",), cell="gru")
_remedy("residual", ("he2016deep",),
        "identity skip connections around each hidden layer (ResNet: each block, option A)",
        "He, Zhang, Ren & Sun 2016, CVPR", families=("mlp", "dbn", "resnet", "highway"), skip="residual")
_remedy("pretrain", ("hinton2006fast", "bengio2007greedy"),
        "greedy layer-wise RBM pretraining of the sigmoid stack, then fine-tuning by backprop",
        "Hinton, Osindero & Teh 2006, Neural Computation; Bengio, Lamblin, Popovici & Larochelle 2007, NeurIPS",
        families=("dbn",), pretrain="rbm")
_remedy("plain", ("he2016deep", "srivastava2015training"),
        "the skip families' plain twin, no skip and no normalization (ResNet: ReLU + He; highway: tanh + Xavier)",
        "He, Zhang, Ren & Sun 2016, CVPR (plain nets, Fig. 6); Srivastava, Greff & Schmidhuber 2015 (Fig. 1)",
        families=("resnet", "highway"))
_remedy("plain_bn", ("ioffe2015batch", "he2016deep"),
        "the plain twin with batch normalization after each conv / linear map",
        "Ioffe & Szegedy 2015, ICML; He et al. 2016, CVPR (their plain-20/56 use it)",
        families=("resnet", "highway"), norm="batchnorm")
_remedy("residual_bn", ("he2016deep",),
        "identity shortcuts and batch normalization: the paper's CIFAR ResNet",
        "He, Zhang, Ren & Sun 2016, CVPR", families=("resnet", "highway"), norm="batchnorm", skip="residual")
_remedy("highway", ("srivastava2015training",),
        "gated highway skips; transform-gate bias from the family's gate_bias (default -2)",
        "Srivastava, Greff & Schmidhuber 2015, NeurIPS", families=("highway",), skip="highway")
_remedy("highway_bn", ("srivastava2015training", "ioffe2015batch"),
        "gated highway skips with batch normalization of the transform's pre-activation",
        "Srivastava et al. 2015, NeurIPS; Ioffe & Szegedy 2015, ICML", families=("highway",),
        norm="batchnorm", skip="highway")
_remedy("modern", ("he2015delving", "ioffe2015batch", "he2016deep", "pascanu2013difficulty", "cho2014learning",
                  "saxe2014exact"),
        "the best combination. MLP: ReLU + He init + batchnorm + residual + norm clipping; "
        "RNN: GRU + Xavier input / orthogonal recurrent init + norm clipping",
        "He et al. 2015; Ioffe & Szegedy 2015; He et al. 2016; Pascanu et al. 2013; Cho et al. 2014; "
        "Saxe et al. 2014", families=(),
        per_family={"mlp": dict(activation="relu", init="he", norm="batchnorm", skip="residual",
                                grad_clip="norm", grad_clip_value=1.0),
                    "rnn": dict(cell="gru", init="xavier", recurrent_init="orthogonal",
                                grad_clip="norm", grad_clip_value=1.0)})


def skip_reason(family: str, remedy: str) -> str | None:
    """Why ``remedy`` does not apply to ``family``; None when it does."""
    entry = REMEDIES.get(remedy)
    if family in entry.families:
        return None
    return f"remedy {remedy!r} does not apply to family {family!r} (applies to: {sorted(entry.families)})"
