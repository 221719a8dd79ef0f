"""The skip-connection families: CIFAR-style ResNet (He et al. 2016) and highway nets
(Srivastava et al. 2015).

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_skip_families.py -q  (a few seconds on one core)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vgbench.models.highway  # noqa: F401  (registers "highway")
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.models.resnet import ZeroPadShortcut  # and registers "resnet"
from vgbench.models.stacked import StackedConv
from vgbench.probes.gradient_flow import GradientFlowProbe, first_last_ratio
from vgbench.probes.taps import Taps

VECTOR = ModelIO((40,), 10)       # MNIST-1D
IMAGE = ModelIO((3, 32, 32), 10)  # CIFAR-10


def build(family: str, io: ModelIO, depth: int, recipe: Recipe | None = None, seeds=(0,), **hparams):
    torch.manual_seed(0)
    entry = FAMILIES.get(family)
    return entry.build(io, depth, recipe or entry.base_recipe, entry.hparams(**hparams), seeds)


def parameter_count(model) -> int:
    """Parameters of one model of the stack."""
    return sum(p[0].numel() for p in model.parameters())


def probed_statistics(model, x, y) -> dict:
    """The probe's statistics of a stack of one model, for inputs ``[N, ...]``."""
    assert model.models == 1
    model.taps.arm()
    F.cross_entropy(model(x.unsqueeze(0))[0], y).backward()
    [stats] = GradientFlowProbe._statistics(model.taps.disarm(), model.models)
    return stats


# -- ResNet -------------------------------------------------------------------------------------------

# Bias-free 3x3 convs + batchnorm (2 per channel) + a 64*10+10 classifier. ResNet-20 (n=3):
# stem 432+32, stage 1 6*(2304+32), stage 2 (4608+64)+5*(9216+64), stage 3 (18432+128)+5*(36864+128),
# head 650 = 269,722. The paper's Table 6 rounds them to 0.27M and 0.85M.
EXACT_RESNET_PARAMETERS = {20: 269_722, 56: 853_018}
PAPER_RESNET_PARAMETERS = {20: 0.27e6, 56: 0.85e6}


@pytest.mark.parametrize("depth", [20, 56])
def test_resnet_parameter_count_matches_the_paper(depth):
    recipe = FAMILIES.get("resnet").base_recipe.with_overrides(norm="batchnorm", skip="residual")
    count = parameter_count(build("resnet", IMAGE, depth, recipe))
    print(f"ResNet-{depth} on (3, 32, 32), 10 classes: {count:,} parameters")
    assert count == EXACT_RESNET_PARAMETERS[depth]
    assert count == pytest.approx(PAPER_RESNET_PARAMETERS[depth], rel=0.03)


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_plain_and_residual_resnets_have_the_same_parameters(norm):
    base = FAMILIES.get("resnet").base_recipe.with_overrides(norm=norm)
    plain = build("resnet", IMAGE, 20, base.with_overrides(skip="none"))
    residual = build("resnet", IMAGE, 20, base.with_overrides(skip="residual"))
    assert parameter_count(plain) == parameter_count(residual)
    # Same layers, same names: one state dict loads strictly into the other.
    plain.load_state_dict(residual.state_dict(), strict=True)
    x = torch.randn(1, 2, 3, 32, 32)
    plain.eval()
    residual.eval()
    assert not torch.allclose(plain(x), residual(x))  # ... and only the shortcuts differ


@pytest.mark.parametrize("io", [VECTOR, ModelIO((41,), 3), ModelIO((3, 8, 8), 10), ModelIO((1, 7, 7), 4)],
                         ids=["mnist1d", "odd-length", "image", "odd-image"])
@pytest.mark.parametrize("skip", ["none", "residual"])
@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_resnet_output_shape_in_1d_and_2d(io, skip, norm):
    recipe = FAMILIES.get("resnet").base_recipe.with_overrides(skip=skip, norm=norm)
    model = build("resnet", io, 8, recipe, seeds=(0, 1), width=4)
    dims = 1 if len(io.input_shape) == 1 else 2
    conv = model.blocks[0].conv1
    assert isinstance(conv, StackedConv) and conv.dims == dims
    assert conv.weight.shape == (2, 4, 4, *(3,) * dims)  # [K, out, in, kernel...]
    logits = model(torch.randn(2, 3, *io.input_shape))
    assert logits.shape == (2, 3, io.num_outputs) and torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(2, 2, 4, 6, 7), (2, 2, 4, 9)], ids=["2d", "1d"])
def test_option_a_shortcut_is_strided_identity_padded_with_zeros(shape):
    shortcut = ZeroPadShortcut(out_channels=8, stride=2)
    assert list(shortcut.parameters()) == []
    x = torch.randn(*shape)  # [K, N, C, *spatial]
    out = shortcut(x)
    strided = x[:, :, :, ::2, ::2] if x.dim() == 5 else x[:, :, :, ::2]
    assert out.shape == (*shape[:2], 8, *strided.shape[3:])
    assert torch.equal(out[:, :, :4], strided)
    assert torch.equal(out[:, :, 4:], torch.zeros_like(out[:, :, 4:]))
    assert torch.equal(ZeroPadShortcut(4, 1)(x), x)  # inside a stage: the plain identity


@pytest.mark.parametrize("depth", [7, 21, 2, 0])
def test_resnet_rejects_depths_not_of_the_form_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"6n\+2"):
        build("resnet", IMAGE, depth)


@pytest.mark.parametrize("io, overrides, message", [
    (ModelIO((40,), 10, per_step=True), {}, "per-time-step"),
    (ModelIO((20, 3), 10), {}, r"\(C, H, W\)"),
    (VECTOR, {"norm": "layernorm"}, "layernorm"),
    (VECTOR, {"skip": "highway"}, "highway"),
])
def test_resnet_refuses_what_it_cannot_build(io, overrides, message):
    with pytest.raises(ValueError, match=message):
        build("resnet", io, 8, FAMILIES.get("resnet").base_recipe.with_overrides(**overrides))


def test_resnet_taps_one_state_per_block():
    model = build("resnet", VECTOR, 14, width=4)  # n = 2: 3n = 6 residual blocks
    stats = probed_statistics(model, torch.randn(8, 40), torch.randint(0, 10, (8,)))
    assert len(stats["dL_dh_norm"]) == 6 and len(stats["dead_fraction"]) == 6
    assert all(value > 0 for value in stats["dL_dh_norm"])
    assert [name for name, _ in model.probe_weights()] == [f"blocks.{i}.conv1.weight" for i in range(6)]
    assert stats["gate_mean"] is None


# -- Highway --------------------------------------------------------------------------------------------

def highway_recipe(skip: str, **overrides) -> Recipe:
    return FAMILIES.get("highway").base_recipe.with_overrides(skip=skip, **overrides)


def test_gate_bias_starts_at_the_hparam_and_only_highway_layers_have_gates():
    highway = build("highway", VECTOR, 4, highway_recipe("highway"), seeds=(0, 1), width=6, gate_bias=-3.5)
    assert all(torch.equal(layer.gate.bias, torch.full((2, 6), -3.5)) for layer in highway.layers)
    for skip in ("none", "residual"):
        twin = build("highway", VECTOR, 4, highway_recipe(skip), width=6)
        assert all(layer.gate is None for layer in twin.layers)
        assert parameter_count(highway) == parameter_count(twin) + 4 * (6 * 6 + 6)  # W_T, b_T per layer


def test_highway_layer_computes_the_papers_formula():
    model = build("highway", VECTOR, 2, highway_recipe("highway", activation="tanh"), width=5)
    x = torch.randn(1, 3, 40)  # [K, N, features]
    h = torch.tanh(model.projection(x))
    for layer in model.layers:
        transform, gate = torch.tanh(layer.linear(h)), torch.sigmoid(layer.gate(h))
        h = transform * gate + h * (1 - gate)
    torch.testing.assert_close(model(x), model.head(h))


@pytest.mark.parametrize("gate_bias", [-2.0, -1.0, 0.5])
def test_gate_mean_is_sigmoid_of_the_bias_when_gate_weights_are_zero(gate_bias):
    model = build("highway", VECTOR, 3, highway_recipe("highway"), width=6, gate_bias=gate_bias)
    with torch.no_grad():
        for layer in model.layers:
            layer.gate.weight.zero_()
    stats = probed_statistics(model, torch.randn(8, 40), torch.randint(0, 10, (8,)))
    sigmoid = 1 / (1 + math.exp(-gate_bias))
    assert stats["gate_mean"] == pytest.approx([sigmoid] * 3, rel=1e-6)


def test_gate_mean_is_unchanged_by_the_rank_sum():
    taps = Taps("relu")
    taps.arm()
    taps.hidden(0, torch.ones(2, 2, 3))  # two models
    taps.gate(0, torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], [[0.7, 0.8, 0.9], [0.6, 0.7, 0.8]]]))
    record = taps.disarm()
    assert record.gate_count == {0: 6}  # per model
    alone = GradientFlowProbe._statistics(record, 2)
    two_equal_ranks = GradientFlowProbe._statistics(record, 2, reduce_sum=lambda table: 2 * table, world_size=2)
    assert [stats["gate_mean"] for stats in alone] == [pytest.approx([0.35]), pytest.approx([0.75])]
    assert [stats["gate_mean"] for stats in two_equal_ranks] == [pytest.approx([0.35]), pytest.approx([0.75])]
    gate = torch.zeros(1)
    # Disarmed: the identity, recording nothing.
    assert taps.gate(0, gate) is gate and taps.record.gate_sum[0].tolist() == pytest.approx([2.1, 4.5])


@pytest.mark.parametrize("io", [VECTOR, ModelIO((1, 6, 6), 4)], ids=["vector", "image"])
@pytest.mark.parametrize("skip", ["none", "residual", "highway"])
@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
def test_highway_output_shape(io, skip, norm):
    model = build("highway", io, 3, highway_recipe(skip, norm=norm), seeds=(0, 1), width=8)
    logits = model(torch.randn(2, 4, *io.input_shape))
    assert logits.shape == (2, 4, io.num_outputs) and torch.isfinite(logits).all()


def test_highway_refuses_per_step_tasks():
    with pytest.raises(ValueError, match="per-time-step"):
        build("highway", ModelIO((40,), 10, per_step=True), 3)


def test_highway_gates_carry_the_gradient_where_a_plain_sigmoid_net_loses_it():
    """Depth 30, sigmoid, Glorot init: the plain net's dL/dh shrinks by ~1e-18 from last to
    first layer (each layer multiplies by at most sigmoid' = 1/4); with gates at sigmoid(-2)
    ~ 0.12 the carry path keeps ~0.88 per layer, ~2e-2 over 30 layers."""
    x, y = torch.randn(32, 40), torch.randint(0, 10, (32,))
    ratios = {}
    for skip in ("none", "highway"):
        model = build("highway", VECTOR, 30, highway_recipe(skip, activation="sigmoid", init="xavier"))
        ratios[skip] = first_last_ratio(probed_statistics(model, x, y)["dL_dh_norm"])
    assert ratios["none"] < 1e-10
    assert ratios["highway"] > 1e-3


def test_highway_taps_one_state_per_layer():
    model = build("highway", ModelIO((1, 6, 6), 4), 7, highway_recipe("highway"), width=8)
    stats = probed_statistics(model, torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,)))
    assert len(stats["dL_dh_norm"]) == len(stats["gate_mean"]) == len(stats["saturated_fraction"]) == 7  # tanh
    assert [name for name, _ in model.probe_weights()] == [f"layers.{i}.linear.weight" for i in range(7)]


def test_both_families_are_registered_with_their_plain_baselines():
    for name, state, activation, init in (("resnet", "residual block", "relu", "he"),
                                          ("highway", "hidden layer", "tanh", "xavier")):
        family = FAMILIES.get(name)
        assert family.probed_state == state and family.inputs == frozenset({"vector", "image"})
        assert family.base_recipe == Recipe(activation=activation, init=init, norm="none", skip="none")
