"""Every family x remedy builds, runs and back-propagates; each remedy does what it claims."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vgbench.activations import ACTIVATIONS
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import INITS, Recipe
from vgbench.models.stacked import StackedNorm
from vgbench.remedies import REMEDIES

PAIRS = [(family, remedy) for family in FAMILIES.names() for remedy, entry in REMEDIES.items()
         if family in entry.families]
SHAPES = {"vector": (40,), "sequence": (12, 3)}  # one sample of each input kind
DEPTHS = {"resnet": 8}  # families whose depth has a form (6n + 2); 4 elsewhere


def shape_for(family: str) -> tuple[int, ...]:
    inputs = FAMILIES.get(family).inputs
    return SHAPES["vector"] if "vector" in inputs else SHAPES["sequence"]


def build(family: str, recipe: Recipe, depth: int | None = None, num_outputs: int = 10, per_step=False,
          seeds=(0,), **hparams):
    entry = FAMILIES.get(family)
    io = ModelIO(shape_for(family), num_outputs, per_step)
    return entry.build(io, depth or DEPTHS.get(family, 4), recipe, entry.hparams(**hparams), seeds)


@pytest.mark.parametrize("family, remedy", PAIRS)
def test_every_pair_builds_runs_and_has_finite_gradients(family, remedy):
    torch.manual_seed(0)
    model = build(family, REMEDIES.get(remedy).recipe(family), seeds=(0, 1))  # a stack of two models
    assert model.models == 2
    x, y = torch.randn(2, 32, *shape_for(family)), torch.randint(0, 10, (2, 32))
    model.taps.arm()  # the probed path too (a family may run another kernel when unprobed)
    logits = model(x)
    assert logits.shape == (2, 32, 10)
    nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    record = model.taps.disarm()
    for name, param in model.named_parameters():
        assert param.shape[0] == 2, name  # every parameter has the leading model dimension
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.probe_weights() and all(p.requires_grad for _, p in model.probe_weights())
    assert len(record.grad_sq_sum) == len(record.hidden_count) > 0
    assert all(value.shape == (2,) for value in record.grad_sq_sum.values())  # one sum per model
    # Two seeds, two models: their first probed weights differ.
    first = model.probe_weights()[0][1]
    assert not torch.equal(first[0], first[1])


def test_mlp_rejects_per_step_outputs():
    with pytest.raises(ValueError, match="per-time-step tasks need the rnn family"):
        build("mlp", Recipe(), per_step=True)


def test_mlp_parameter_count_and_layers():
    width, depth = 16, 5
    model = build("mlp", Recipe(), depth=depth, width=width)
    expected = (40 * width + width) + (depth - 1) * (width * width + width) + (width * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected
    with_bn = build("mlp", Recipe(norm="batchnorm"), depth=depth, width=width)
    assert sum(p.numel() for p in with_bn.parameters()) == expected + depth * 2 * width
    norms = [m for m in with_bn.modules() if isinstance(m, StackedNorm)]
    assert len(norms) == depth and all(m.kind == "batchnorm" for m in norms)
    # K stacked models hold K times the parameters, K sets of batchnorm running statistics.
    three = build("mlp", Recipe(norm="batchnorm"), depth=depth, width=width, seeds=(0, 1, 2))
    assert sum(p.numel() for p in three.parameters()) == 3 * (expected + depth * 2 * width)
    assert three.hidden[0].norm.running_mean.shape == (3, width)


def _weight(recipe: Recipe, fan_in: int = 512, fan_out: int = 256) -> torch.Tensor:
    torch.manual_seed(0)
    weight = torch.empty(fan_out, fan_in)
    recipe.init_weight(weight)
    return weight


@pytest.mark.parametrize("init, activation, expected_variance", [
    ("small_normal", "sigmoid", 0.01 ** 2),
    ("xavier", "tanh", 2.0 / (512 + 256)),
    ("he", "relu", 2.0 / 512),
    ("he", "leaky_relu", 2.0 / (1 + 0.01 ** 2) / 512),
    ("lecun", "selu", 1.0 / 512),
    ("pytorch_default", "relu", 1.0 / (3 * 512)),
])
def test_init_variance_matches_its_paper(init, activation, expected_variance):
    weight = _weight(Recipe(init=init, activation=activation))
    assert weight.var().item() == pytest.approx(expected_variance, rel=0.03)
    # zero mean: within 5 standard errors of the mean of weight.numel() draws
    assert abs(weight.mean().item()) < 5 * math.sqrt(expected_variance / weight.numel())


def test_orthogonal_init_is_orthogonal_with_gain():
    weight = _weight(Recipe(init="orthogonal", activation="tanh"), fan_in=64, fan_out=64)
    gain = nn.init.calculate_gain("tanh")
    assert torch.allclose(weight @ weight.T, gain ** 2 * torch.eye(64), atol=1e-4)


# What each paper's remedy uses (README, "The matrix"); the remedies that change no activation keep the mlp
# baseline's sigmoid, so that they are measured against the sigmoid baseline they claim to rescue.
PAPER_ACTIVATIONS = {"small_init": nn.Sigmoid, "sigmoid_standard": nn.Sigmoid, "tanh_standard": nn.Tanh,
                     "xavier": nn.Tanh, "orthogonal": nn.Tanh, "he_relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
                     "elu": nn.ELU, "selu_lecun": nn.SELU, "modern": nn.ReLU, "batchnorm": nn.Sigmoid,
                     "layernorm": nn.Sigmoid, "grad_clip": nn.Sigmoid, "residual": nn.Sigmoid}


def test_every_mlp_remedy_has_its_paper_s_activation():
    assert set(PAPER_ACTIVATIONS) == {name for name, entry in REMEDIES.items() if "mlp" in entry.families}


@pytest.mark.parametrize("remedy", [name for name, entry in REMEDIES.items() if "mlp" in entry.families])
def test_remedy_sets_its_activation(remedy):
    model = build("mlp", REMEDIES.get(remedy).recipe("mlp"))
    kinds = tuple(type(spec.make()) for spec in ACTIVATIONS.values())
    activations = [m for m in model.modules() if isinstance(m, kinds)]
    assert activations and all(type(m) is PAPER_ACTIVATIONS[remedy] for m in activations)


def test_leaky_relu_slope_and_selu_constants():
    x = torch.tensor([-2.0, 3.0])
    assert torch.allclose(ACTIVATIONS["leaky_relu"].make()(x), torch.tensor([-0.02, 3.0]))
    assert ACTIVATIONS["selu"].make()(torch.tensor([1.0])).item() == pytest.approx(1.0507, abs=1e-4)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_one_activation_spec_says_gain_bounds_and_rectifier(name):
    spec = ACTIVATIONS[name]
    assert nn.init.calculate_gain(spec.gain) > 0
    unit = spec.make()
    wide = unit(torch.linspace(-50, 50, 1001))
    if spec.bounds is not None:  # a saturating unit reaches its bounds, and only they
        low, high = spec.bounds
        assert not spec.rectifier and wide.min().item() == pytest.approx(low, abs=1e-6)
        assert wide.max().item() == pytest.approx(high, abs=1e-6)
    else:  # a rectifier-like unit is unbounded above and (near) flat for very negative inputs
        assert spec.rectifier and wide.max().item() == pytest.approx(50.0, rel=0.06)
        assert abs(float(unit(torch.tensor([-50.0])) - unit(torch.tensor([-49.0])))) < 0.02


def test_residual_adds_the_identity():
    torch.manual_seed(0)
    plain = build("mlp", Recipe(), depth=3)
    residual = build("mlp", Recipe(skip="residual"), depth=3)
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 40)  # [K=1, N, features]
    h_plain = torch.sigmoid(plain.hidden[0].linear(x))
    h_res = h_plain
    for layer in list(residual.hidden)[1:]:
        h_res = h_res + torch.sigmoid(layer.linear(h_res))
    assert torch.allclose(residual(x), residual.head(h_res), atol=1e-6)


def test_recipe_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"recipe.activation='swish' is not allowed; choose one of"):
        Recipe(activation="swish")
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe().with_overrides(dropout=0.5)
    assert set(INITS) == {"small_normal", "pytorch_default", "xavier", "he", "lecun", "orthogonal"}
    with pytest.raises(ValueError, match=r"recipe.cell='transformer' is not allowed"):
        Recipe(cell="transformer")


def test_remedy_outside_its_families_says_why():
    with pytest.raises(ValueError, match=r"remedy 'irnn' does not apply to family 'mlp'"):
        REMEDIES.get("irnn").recipe("mlp")
    # The same remedy name may mean a family-specific change ("modern").
    assert REMEDIES.get("modern").recipe("mlp").norm == "batchnorm"
    assert REMEDIES.get("modern").recipe("rnn").cell == "gru"
    # Remedies override the family's own baseline: tanh for the RNN, sigmoid for the MLP.
    assert REMEDIES.get("small_init").recipe("rnn").activation == "tanh"
    assert REMEDIES.get("small_init").recipe("mlp").activation == "sigmoid"


def test_no_two_remedies_of_a_family_train_the_same_network():
    """Two names for one recipe would put the same networks in a leaderboard twice, ranked against each
    other (highway's base recipe is tanh + Xavier, so ``xavier`` does not apply there: it is ``plain``)."""
    for family in FAMILIES.names():
        by_recipe: dict[str, list[str]] = {}
        for name, entry in REMEDIES.items():
            if family in entry.families:
                by_recipe.setdefault(repr(sorted(entry.recipe(family).as_dict().items())), []).append(name)
        assert [names for names in by_recipe.values() if len(names) > 1] == [], family
        assert len(by_recipe) >= 3, family


def test_registries_fail_loudly():
    from vgbench.registry import Registry, UnknownNameError

    registry = Registry("widget")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", 2)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'b'; known: a"):
        registry.get("b")


def test_every_remedy_cites_a_source():
    for name, remedy in REMEDIES.items():
        assert remedy.citation and remedy.summary, name
        assert any(str(year) in remedy.citation for year in range(1990, 2030)), name
