"""Gradient-flow probes against gradients computed by hand with plain autograd."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vgbench.matrix import expand
from vgbench.models import FAMILIES, ModelIO
from vgbench.activations import ACTIVATIONS
from vgbench.models.recipe import Recipe
from vgbench.probes.failure import failure_label, log10_ratio
from vgbench.probes.gradient_flow import GradientFlowProbe, first_last_ratio
from vgbench.probes.taps import SATURATION_MARGIN, Taps
from vgbench.config import WandbSettings
from vgbench.training.run_group import run_cell


def mlp(recipe: Recipe, depth: int = 5, width: int = 12, seeds=(0,)):
    torch.manual_seed(0)
    entry = FAMILIES.get("mlp")
    return entry.build(ModelIO((40,), 10), depth, recipe, entry.hparams(width=width), seeds)


def stacked_cross_entropy(logits, y):
    """What training back-propagates: the sum over models of each model's mean loss."""
    return sum(F.cross_entropy(logits[k], y[k]) for k in range(len(y)))


def by_hand(model, x, y):
    """The same forward pass written out, keeping every h_l and pre-activation z_l (``[K, N, ...]``)."""
    hidden, pre = [], []
    h = x
    for layer in model.hidden:
        z = layer.norm(layer.linear(h))
        out = layer.activation(z)
        if model.residual and out.shape == h.shape:
            out = out + h
        out.retain_grad()
        hidden.append(out)
        pre.append(z.detach())
        h = out
    stacked_cross_entropy(model.head(h), y).backward()
    return hidden, pre


def probed(model, x, y) -> list[dict]:
    """The probe's statistics of one step, one dict per model."""
    model.taps.arm()
    stacked_cross_entropy(model(x), y).backward()
    record = model.taps.disarm()
    return GradientFlowProbe._statistics(record, model.models)


@pytest.mark.parametrize("recipe", [Recipe(), Recipe(activation="relu", init="he"),
                                    Recipe(activation="tanh", init="xavier", skip="residual"),
                                    Recipe(norm="batchnorm")])
@pytest.mark.parametrize("models", [1, 2])
def test_taps_match_autograd(recipe, models):
    model = mlp(recipe, seeds=range(models))
    x, y = torch.randn(models, 64, 40), torch.randint(0, 10, (models, 64))
    hidden, pre = by_hand(model, x, y)
    hand_weight = [layer.linear.weight.grad.double() for layer in model.hidden]
    model.zero_grad()
    per_model = probed(model, x, y)
    assert len(per_model) == models
    probe_weight = [p.grad.double() for _, p in model.probe_weights()]
    for k, stats in enumerate(per_model):  # each model's statistics are of its own slice alone
        assert stats["dL_dh_norm"] == pytest.approx([h.grad[k].double().norm().item() for h in hidden], rel=1e-6)
        assert [g[k].norm().item() for g in probe_weight] == pytest.approx(
            [g[k].norm().item() for g in hand_weight], rel=1e-6)
        variances = [h[k].detach().double().var(unbiased=False).item() for h in hidden]
        assert stats["activation_variance"] == pytest.approx(variances, rel=1e-6)
        if recipe.activation == "sigmoid":
            saturated = [((torch.sigmoid(z[k]) < 0.01) | (torch.sigmoid(z[k]) > 0.99)).double().mean().item()
                         for z in pre]
            assert stats["saturated_fraction"] == pytest.approx(saturated) and stats["dead_fraction"] is None
        if recipe.activation == "relu":
            dead = [(z[k] <= 0).all(dim=0).double().mean().item() for z in pre]
            assert stats["dead_fraction"] == pytest.approx(dead) and stats["saturated_fraction"] is None
    if models == 2:  # two seeds: two different profiles
        assert per_model[0]["dL_dh_norm"] != pytest.approx(per_model[1]["dL_dh_norm"], rel=1e-3)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(3, 32, 8), (3, 16, 6, 5)], ids=["dense", "conv"])
def test_the_taps_count_saturated_and_dead_units_as_defined(activation, shape):
    """The taps read both off the input z (thresholds on z, the largest z per unit); the definitions are
    on the unit itself: its output within SATURATION_MARGIN of a bound, or dead, passing no gradient
    for any sample and position. Only ReLU units can die: leaky ReLU, ELU and SELU keep a slope below 0."""
    generator = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(shape, generator=generator)
    z[1, :, 0] = -z[1, :, 0].abs()  # unit 0 of model 1 never fires
    taps = Taps(activation)
    taps.arm()
    taps.preactivation(0, z)
    record = taps.disarm()
    spec = ACTIVATIONS[activation]
    if spec.bounds is not None:
        out, (low, high) = spec.make()(z), spec.bounds
        saturated = ((out < low + SATURATION_MARGIN) | (out > high - SATURATION_MARGIN)).flatten(1).sum(dim=1)
        assert record.saturated_count[0].tolist() == saturated.double().tolist()
        assert 0 < saturated.min() and saturated.max() < z[0].numel()  # both kinds of unit-sample occur
    else:
        z.requires_grad_(True)
        slope, = torch.autograd.grad(spec.make()(z).sum(), z)
        dead = (slope.transpose(1, 2).flatten(2) == 0).all(dim=2).sum(dim=1)
        if spec.dies:
            assert record.dead_units[0].tolist() == dead.double().tolist() and dead[1] >= 1
        else:
            assert dead.sum() == 0 and not record.dead_units
    assert record.units[0] == shape[2] and record.elements[0] == z[0].numel()


def test_saturating_inputs_are_where_the_unit_comes_within_the_margin_of_its_bounds():
    assert ACTIVATIONS["sigmoid"].saturating_inputs(0.01) == pytest.approx((math.log(1 / 99), math.log(99)), abs=1e-9)
    assert ACTIVATIONS["tanh"].saturating_inputs(0.01) == pytest.approx((-math.atanh(0.99), math.atanh(0.99)),
                                                                       abs=1e-9)
    with pytest.raises(ValueError, match="ReLU: not a saturating unit"):
        ACTIVATIONS["relu"].saturating_inputs(0.01)
    with pytest.raises(ValueError, match="ELU: not a saturating unit"):  # its init gain is ReLU's
        ACTIVATIONS["elu"].saturating_inputs(0.01)


def test_saturation_and_death_are_detected():
    model = mlp(Recipe(activation="sigmoid"), depth=2, seeds=(0, 1))
    with torch.no_grad():
        model.hidden[0].linear.bias[0].fill_(50.0)  # every first-layer unit of model 0 pinned at 1
    stats = probed(model, torch.randn(2, 16, 40), torch.randint(0, 10, (2, 16)))
    assert stats[0]["saturated_fraction"][0] == 1.0
    assert stats[1]["saturated_fraction"][0] < 1.0  # model 1 is untouched
    relu = mlp(Recipe(activation="relu", init="he"), depth=2, seeds=(0, 1))
    with torch.no_grad():
        relu.hidden[1].linear.bias[0, :6].fill_(-100.0)  # half of model 0's second layer never fires
    stats = probed(relu, torch.randn(2, 16, 40), torch.randint(0, 10, (2, 16)))
    assert stats[0]["dead_fraction"][1] == pytest.approx(0.5)
    assert stats[1]["dead_fraction"][1] < 0.5


def test_disarmed_taps_cost_nothing_and_record_nothing():
    model = mlp(Recipe())
    stacked_cross_entropy(model(torch.randn(1, 8, 40)), torch.randint(0, 10, (1, 8))).backward()
    assert model.taps.record.grad_sq_sum == {} and model.taps.seconds == 0.0


def test_baseline_vanishes_and_he_relu_does_not():
    x, y = torch.randn(1, 128, 40), torch.randint(0, 10, (1, 128))
    [deep_baseline] = probed(mlp(Recipe(), depth=12, width=32), x, y)
    [deep_relu] = probed(mlp(Recipe(activation="relu", init="he"), depth=12, width=32), x, y)
    assert log10_ratio(first_last_ratio(deep_baseline["dL_dh_norm"])) < -10
    assert abs(log10_ratio(first_last_ratio(deep_relu["dL_dh_norm"]))) < 1.5


def _cell(tiny_params, remedy: str, depth: int, family: str = "mlp", **changes):
    cell = next(c for c in expand(tiny_params.active)
                if c.family == family and c.remedy == remedy and c.depth == depth)
    return dataclasses.replace(cell, **changes)


def test_probe_callback_records_init_and_every_k_steps(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "he_relu", 6)
    metrics = run_cell(cell, tiny_data, tmp_path, WandbSettings(mode="disabled"))
    records = json.loads((tmp_path / "cells" / cell.cell_id / "grad_profile.json").read_text())["records"]
    interval = cell.probes["interval_steps"]
    train_steps = [r["step"] for r in records if r["phase"] == "train"]
    assert records[0]["phase"] == "init" and records[0]["step"] == 0
    assert train_steps == list(range(0, metrics.steps, interval))
    # The init record is the fixed batch probed by hand on a freshly built model of the cell's seed.
    entry = FAMILIES.get("mlp")
    model = entry.build(ModelIO(tiny_data.input_shape, 10), cell.depth, Recipe(**cell.recipe),
                        entry.hparams(**cell.model), [cell.seed])
    size = cell.probes["init_batch_size"]
    x, y = tiny_data.splits["train"]["x"][:size][None], tiny_data.splits["train"]["y"][:size][None]
    hidden, _ = by_hand(model, x, y)
    assert records[0]["dL_dh_norm"] == pytest.approx([h.grad.double().norm().item() for h in hidden], rel=1e-5)
    assert metrics.init_log10_dL_dh_first_last == pytest.approx(
        math.log10(hidden[0].grad.norm().item() / hidden[-1].grad.norm().item()), rel=1e-4)
    assert 0 < metrics.probe_seconds < metrics.fit_seconds
    assert metrics.probe_overhead_fraction == pytest.approx(metrics.probe_seconds / metrics.fit_seconds)


def test_clipping_is_recorded_before_and_after(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "grad_clip", 2)
    cell = dataclasses.replace(cell, recipe={**cell.recipe, "grad_clip_value": 1e-4})  # always clips
    run_cell(cell, tiny_data, tmp_path, WandbSettings(mode="disabled"))
    records = json.loads((tmp_path / "cells" / cell.cell_id / "grad_profile.json").read_text())["records"]
    train = [r for r in records if r["phase"] == "train"]
    assert train
    for record in train:
        assert record["grad_total_norm"] > 1e-4
        assert record["grad_total_norm_clipped"] == pytest.approx(1e-4, rel=1e-3)
        scale = record["grad_total_norm_clipped"] / record["grad_total_norm"]
        assert record["weight_grad_norm_clipped"] == pytest.approx(
            [n * scale for n in record["weight_grad_norm"]], rel=1e-3)
    unclipped = _cell(tiny_params, "small_init", 2)
    run_cell(unclipped, tiny_data, tmp_path, WandbSettings(mode="disabled"))
    records = json.loads((tmp_path / "cells" / unclipped.cell_id / "grad_profile.json").read_text())["records"]
    assert all(r["weight_grad_norm_clipped"] is None for r in records)


def rnn(recipe: Recipe, per_step: bool, hidden: int = 6, steps: int = 9, features: int = 3, seeds=(0,)):
    torch.manual_seed(0)
    entry = FAMILIES.get("rnn")
    outputs = 5 if per_step else 1
    return entry.build(ModelIO((steps, features), outputs, per_step), steps, recipe, entry.hparams(hidden_size=hidden),
                       seeds)


def rnn_by_hand(model, x, k: int = 0):
    """Model k's recurrence with torch's own single-step cells (RNNCell / LSTMCell / GRUCell) holding
    its slice of the weights, keeping every h_t: an implementation independent of the family's."""
    cells = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
    kwargs = {"nonlinearity": model.taps.activation} if model.cell == "rnn" else {}
    cell = cells[model.cell](x.shape[-1], model.hidden_size, **kwargs)
    weights = {name: getattr(model.rnn, name)[k] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    h = x.new_zeros(x.shape[1], model.hidden_size)
    c = torch.zeros_like(h)
    states = []
    for t in range(x.shape[2]):
        if model.cell == "lstm":
            h, c = torch.func.functional_call(cell, weights, (x[k, :, t], (h, c)))
        else:
            h = torch.func.functional_call(cell, weights, (x[k, :, t], h))
        h.retain_grad()
        states.append(h)
    return states


@pytest.mark.parametrize("recipe", [Recipe(activation="tanh"), Recipe(activation="tanh", init="xavier"),
                                    Recipe(activation="relu", recurrent_init="identity"),
                                    Recipe(activation="tanh", cell="lstm"), Recipe(activation="tanh", cell="gru")])
@pytest.mark.parametrize("per_step", [False, True])
def test_rnn_taps_give_dL_dh_t_for_every_step(recipe, per_step):
    models = 2
    model = rnn(recipe, per_step, seeds=(0, 1))
    x = torch.randn(models, 16, 9, 3)
    target = torch.randint(0, 5, (models, 16, 9)) if per_step else torch.randn(models, 16)

    def loss_of(out, k):  # model k's mean loss
        return (F.cross_entropy(out.flatten(0, 1), target[k].flatten()) if per_step
                else F.mse_loss(out.squeeze(-1), target[k]))

    states = [rnn_by_hand(model, x, k) for k in range(models)]
    head = [{"weight": model.head.weight[k], "bias": model.head.bias[k]} for k in range(models)]

    def head_of(k, h):  # model k's head, as a plain linear map
        return F.linear(h, head[k]["weight"], head[k]["bias"])

    sum(loss_of(head_of(k, torch.stack(states[k], dim=1)) if per_step else head_of(k, states[k][-1]), k)
        for k in range(models)).backward()
    hand = [[h.grad.double().norm().item() for h in states[k]] for k in range(models)]
    model.zero_grad()
    model.taps.arm()
    out = model(x)
    sum(loss_of(out[k], k) for k in range(models)).backward()
    per_model = GradientFlowProbe._statistics(model.taps.disarm(), models)
    for k, stats in enumerate(per_model):
        assert len(stats["dL_dh_norm"]) == 9
        assert stats["dL_dh_norm"] == pytest.approx(hand[k], rel=1e-4, abs=1e-12)
        if not per_step:  # the loss reads only h_T: the gradient can only shrink or grow backwards from there
            assert first_last_ratio(stats["dL_dh_norm"]) == pytest.approx(hand[k][0] / hand[k][-1], rel=1e-4)
    assert hand[0] != pytest.approx(hand[1], rel=1e-3)  # two seeds, two models


def test_sigmoid_rnn_runs_the_unrolled_loop_and_reports_saturation():
    # PyTorch's fused RNN has no sigmoid: this cell never takes the fused path.
    model = rnn(Recipe(activation="sigmoid"), per_step=False)
    assert model.fused is None
    x = 300 * torch.randn(1, 16, 9, 3)  # inputs large for its small weights: a share of the units saturates
    states, inputs = rnn_by_hand_sigmoid(model, x)
    assert torch.allclose(model(x), model.head(torch.stack(states, dim=2)[:, :, -1]), atol=1e-6)
    model.taps.arm()
    F.mse_loss(model(x).squeeze(-1), torch.randn(1, 16)).backward()
    [stats] = GradientFlowProbe._statistics(model.taps.disarm(), model.models)
    # Per time step, the share of unit-samples whose output is within 0.01 of 0 or 1.
    expected = [((torch.sigmoid(z) < 0.01) | (torch.sigmoid(z) > 0.99)).double().mean().item() for z in inputs]
    assert 0.05 < max(expected) < 1 and stats["saturated_fraction"] == pytest.approx(expected, abs=1e-12)
    assert stats["dead_fraction"] is None


def rnn_by_hand_sigmoid(model, x):
    """All K models at once: x is [K, N, T, features], the weights [K, ...]. The states h_t and the
    nonlinearity's inputs z_t."""
    rnn = model.rnn
    h = x.new_zeros(x.shape[0], x.shape[1], model.hidden_size)
    states, inputs = [], []
    for t in range(x.shape[2]):
        z = (x[:, :, t] @ rnn.weight_ih.transpose(1, 2) + rnn.bias_ih.unsqueeze(1)
             + h @ rnn.weight_hh.transpose(1, 2) + rnn.bias_hh.unsqueeze(1))
        h = torch.sigmoid(z)
        states.append(h)
        inputs.append(z)
    return states, inputs


def test_rnn_fused_and_unrolled_paths_agree():
    for recipe in (Recipe(activation="tanh"), Recipe(activation="relu"), Recipe(cell="lstm"), Recipe(cell="gru")):
        model = rnn(recipe, per_step=True, seeds=(0, 1))
        x = torch.randn(2, 4, 9, 3)
        assert model.fused is not None
        fused, unrolled = model.fused_calls(x), model.unrolled(x)
        assert fused.shape == unrolled.shape == (2, 4, 9, model.hidden_size)
        assert torch.allclose(fused, unrolled, atol=1e-6)
        logits = model(x)  # unprobed: the fused path
        assert logits.shape == (2, 4, 9, 5)
        assert torch.allclose(logits, model.head(unrolled.flatten(1, 2)).unflatten(1, (4, 9)), atol=1e-6)


def test_small_init_rnn_vanishes_through_time_and_lstm_does_not():
    x = torch.randn(1, 32, 40, 3)
    ratios = {}
    for name, recipe in {"tanh": Recipe(activation="tanh"), "lstm": Recipe(activation="tanh", cell="lstm")}.items():
        model = rnn(recipe, per_step=False, hidden=16, steps=40)
        model.taps.arm()
        F.mse_loss(model(x).squeeze(-1), torch.randn(1, 32)).backward()
        [stats] = GradientFlowProbe._statistics(model.taps.disarm(), model.models)
        ratios[name] = log10_ratio(first_last_ratio(stats["dL_dh_norm"]))
    # N(0, 0.01^2) recurrent weights shrink dL/dh_t by ~0.04 per step; the forget gate (bias 1) keeps ~0.7.
    assert ratios["tanh"] < -30
    assert -10 < ratios["lstm"] < 0


def test_failure_labels():
    init = {"dL_dh_first_last_ratio": 1e-8, "grad_total_norm": 1.0}
    last = {"dL_dh_first_last_ratio": 1e-6, "grad_total_norm": 1.0, "dead_fraction": [0.9, 0.1]}
    kwargs = dict(vanished_log10_ratio=-3, exploded_log10_ratio=3, dead_fraction=0.5)

    def label(trainable=False, converged=True, diverged=False, init_record=init, last_record=last):
        return failure_label(diverged=diverged, trainable=trainable, converged=converged, init_record=init_record,
                             last_record=last_record, **kwargs)

    assert label(diverged=True) == "diverged"
    assert label(trainable=True) is None
    assert label() == "vanished"
    # Still improving when the epochs ran out: the budget stopped it, whatever its gradient at init.
    assert label(converged=False) == "undertrained"
    assert label(converged=None) == "vanished"  # no verdict on convergence (too few epochs)
    # Vanished at init but healthy by the last probe (an LSTM learning to carry its gradient): not vanished.
    assert label(last_record={**last, "dL_dh_first_last_ratio": 0.5}) == "dead_units"
    assert label(init_record={**init, "dL_dh_first_last_ratio": 1e5}) == "exploded"
    assert label(init_record={**init, "dL_dh_first_last_ratio": 0.5}) == "dead_units"
    assert label(init_record={**init, "dL_dh_first_last_ratio": 0.5}, last_record={**last, "dead_fraction": [0.1]}) \
        == "no_learning"
    assert log10_ratio(0.0) == float("-inf") and math.isnan(log10_ratio(float("nan")))


def test_late_improvement_and_convergence():
    from vgbench.training.convergence import converged, late_improvement

    # 10 epochs: the last fifth is epochs 8 and 9; best before 0.60, best overall 0.64.
    accuracy = [0.2, 0.4, 0.5, 0.55, 0.58, 0.59, 0.60, 0.60, 0.63, 0.64]
    assert late_improvement(accuracy, True, 0.1) == pytest.approx(0.04)
    assert converged(0.04, 0.01) is False and converged(0.004, 0.01) is True
    # A plateau, with a noisy dip at the end, converged: the best so far did not move.
    assert late_improvement([0.2, 0.6, 0.61, 0.61, 0.5], True, 0.1) == 0.0
    # Loss tasks: a fraction of the baseline (MSE 1/6): 0.02 -> 0.01 is 6% of it.
    assert late_improvement([0.1, 0.05, 0.03, 0.02, 0.01], False, 1 / 6) == pytest.approx(0.06)
    assert math.isnan(late_improvement([0.5], True, 0.1)) and converged(math.nan, 0.01) is None
    assert late_improvement([math.nan, math.nan, math.nan, math.nan, 0.3], True, 0.1) == math.inf


def test_weight_gradient_ratio_only_with_one_weight_per_probed_state():
    probe = GradientFlowProbe((torch.zeros(1, 40), torch.zeros(1, dtype=torch.long)), 1, models=2)
    probe._finish(1, {"dL_dh_norm": [1.0, 2.0, 4.0], "weight_grad_norm": [3.0, 6.0, 12.0]}, True)
    probe._finish(1, {"dL_dh_norm": [1.0, 2.0, 4.0], "weight_grad_norm": [3.0, 6.0]}, True)  # 2 weights, 3 states
    probe._finish(1, {"dL_dh_norm": [1.0, 4.0], "weight_grad_norm": [3.0, 6.0]}, False)  # an RNN at T = 2
    assert probe.records[0] == []  # records are kept per model
    assert probe.records[1][0]["weight_grad_first_last_ratio"] == 0.25
    assert math.isnan(probe.records[1][1]["weight_grad_first_last_ratio"])
    assert probe.records[1][1]["dL_dh_first_last_ratio"] == 0.25
    assert math.isnan(probe.records[1][2]["weight_grad_first_last_ratio"])  # the lengths agree, the model says no


def test_init_ratio_is_finite_where_float32_underflows(tiny_params, tmp_path):
    """A small-init tanh RNN at T = 50: in float32 dL/dh_t underflows to 0 for the early steps (a -inf
    ratio); the init probe, seeing that, runs again in float64 and gives the finite, tiny true value."""
    from vgbench.data.store import load, prepare

    cell = next(c for c in expand(tiny_params.active) if c.family == "rnn" and c.remedy == "small_init")
    cell = dataclasses.replace(cell, depth=50, training={**cell.training, "max_epochs": 1})
    settings = tiny_params.active.dataset_settings("adding")
    prepare("adding", settings, tmp_path / "data", 50)
    metrics = run_cell(cell, load("adding", settings, tmp_path / "data", 50), tmp_path / "results",
                       WandbSettings(mode="disabled"))
    init = json.loads((tmp_path / "results" / "cells" / cell.cell_id / "grad_profile.json").read_text())["records"][0]
    assert init["dtype"] == "float64" and min(init["dL_dh_norm"]) > 0
    assert math.isfinite(metrics.init_log10_dL_dh_first_last) and metrics.init_log10_dL_dh_first_last < -38
    # Mean-field theory beside it (vgbench/probes/theory.py): the same order, recorded per cell.
    assert metrics.theory.startswith("mean field") and init["theory"] == metrics.theory
    assert metrics.theory_log10_dL_dh_first_last == pytest.approx(metrics.init_log10_dL_dh_first_last, rel=0.15)
    # What float32 gives on the same network and batch: zeros at the first steps.
    family = FAMILIES.get("rnn")
    data = load("adding", settings, tmp_path / "data", 50)
    model = family.build(ModelIO(data.input_shape, 1), 50, Recipe(**cell.recipe), family.hparams(**cell.model), [0])
    size = cell.probes["init_batch_size"]
    x, y = data.splits["train"]["x"][:size][None], data.splits["train"]["y"][:size][None]
    model.taps.arm()
    ((model(x).squeeze(-1) - y) ** 2).mean().backward()
    assert float(model.taps.disarm().grad_sq_sum[0][0]) == 0.0


@pytest.mark.parametrize("pretrained", [False, True], ids=["predicted", "not predicted"])
def test_init_probe_goes_straight_to_float64_where_theory_predicts_underflow(pretrained, monkeypatch):
    """The small-init sigmoid MLP at depth 20 (predicted about 10^-32): one float64 pass, no float32 pass
    thrown away. Without a prediction (weights flagged as pretrained) float32 is tried first, underflows
    and is redone in float64: two passes, the same records."""
    from types import SimpleNamespace

    from vgbench.tasks import TASKS

    model = mlp(Recipe(), depth=20, width=64, seeds=(0, 1))
    x, y = torch.randn(128, 40, generator=torch.Generator().manual_seed(1)), torch.arange(128) % 10
    module = SimpleNamespace(model=model, device=torch.device("cpu"), task=TASKS.get("classification"),
                             after_clipping=[], runs_per_model=[None, None])
    passes = []
    real_pass = GradientFlowProbe._init_pass
    monkeypatch.setattr(GradientFlowProbe, "_init_pass",
                        lambda self, pl_module, dtype: passes.append(dtype) or real_pass(self, pl_module, dtype))
    probe = GradientFlowProbe((x, y), interval_steps=1, models=2, pretrained=pretrained)
    probe.on_train_start(None, module)
    assert passes == ([torch.float32, torch.float64] if pretrained else [torch.float64])
    init = [records[0] for records in probe.records]
    assert [record["dtype"] for record in init] == ["float64", "float64"]
    measured = [math.log10(record["dL_dh_first_last_ratio"]) for record in init]
    assert all(-40 < value < -28 for value in measured)
    if not pretrained:
        assert [record["theory_log10_dL_dh_first_last"] for record in init] == pytest.approx(measured, abs=0.5)


def test_init_probe_runs_in_float32_and_in_float64_only_when_a_norm_underflows():
    """The init probe's float32 pass is kept when every norm is clear of underflow (and then agrees with
    the float64 pass to float32 precision); a net whose gradient falls below float32's range is probed
    again in float64 (the small-init tanh RNN above)."""
    from types import SimpleNamespace

    from vgbench.probes.gradient_flow import resolved_in_float32
    from vgbench.tasks import TASKS

    model = mlp(Recipe(activation="relu", init="he"), depth=6, seeds=(0, 1))
    x, y = torch.randn(64, 40, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 10
    module = SimpleNamespace(model=model, device=torch.device("cpu"), task=TASKS.get("classification"),
                             after_clipping=[], runs_per_model=[None, None])
    probe = GradientFlowProbe((x, y), interval_steps=1, models=2)
    probe.on_train_start(None, module)
    assert [records[0]["dtype"] for records in probe.records] == ["float32", "float32"]
    _, stats64, gradients64 = probe._init_pass(module, torch.float64)
    for k, records in enumerate(probe.records):
        assert records[0]["dL_dh_norm"] == pytest.approx(stats64[k]["dL_dh_norm"], rel=1e-4)
        assert records[0]["weight_grad_norm"] == pytest.approx(gradients64[k]["weight_grad_norm"], rel=1e-4)
    assert model.hidden[0].linear.weight.grad is None  # the real net was left alone
    # The rule itself: any norm below 1e-30, zero or non-finite sends the pass to float64.
    fine = {"dL_dh_norm": [1e-3, 1.0]}, {"weight_grad_norm": [1e-2], "grad_total_norm": 1.0}
    assert resolved_in_float32(*fine)
    for bad in (0.0, 1e-31, math.inf, math.nan):
        assert not resolved_in_float32({"dL_dh_norm": [bad, 1.0]}, fine[1])


def test_an_rnn_of_two_steps_has_no_weight_gradient_depth_profile():
    """An RNN's two probed matrices (input, recurrent) serve every step. At T = 2 there are as many of them as
    probed states, and the record took |dW_ih| / |dW_hh| for a first/last weight-gradient ratio."""
    from types import SimpleNamespace

    from vgbench.tasks import TASKS

    entry = FAMILIES.get("rnn")
    model = entry.build(ModelIO((2, 2), 1, False), 2, Recipe(activation="tanh"), entry.hparams(hidden_size=8), [0])
    x, y = torch.randn(16, 2, 2, generator=torch.Generator().manual_seed(1)), torch.randn(16, 1)
    module = SimpleNamespace(model=model, device=torch.device("cpu"), task=TASKS.get("regression"),
                             after_clipping=[], runs_per_model=[None])
    probe = GradientFlowProbe((x, y), interval_steps=1, models=1)
    probe.on_train_start(None, module)
    [init] = [records[0] for records in probe.records]
    assert len(init["weight_grad_norm"]) == len(init["dL_dh_norm"]) == 2
    assert math.isnan(init["weight_grad_first_last_ratio"])
    assert init["dL_dh_first_last_ratio"] > 0  # the states' profile is there


def _recall_by_hand(model, x, y) -> list[list[float]]:
    """Per model: ||dL_recall/dh_t|| for every t, where L_recall is the cross-entropy of the last RECALL_LENGTH
    outputs only, through torch's own cells (rnn_by_hand)."""
    from vgbench.tasks import RECALL_LENGTH

    norms = []
    for k in range(model.models):
        states = rnn_by_hand(model, x, k)
        logits = F.linear(torch.stack(states, dim=1), model.head.weight[k], model.head.bias[k])
        F.cross_entropy(logits[:, -RECALL_LENGTH:].flatten(0, 1), y[k, :, -RECALL_LENGTH:].flatten()).backward()
        norms.append([h.grad.double().norm().item() for h in states])
    return norms


@pytest.mark.parametrize("cell_type", ["rnn", "gru"])
def test_copy_memory_is_probed_by_the_gradient_of_its_recall(cell_type):
    """Copy memory scores every step, so the training loss gives each state a direct term of its own and its
    first/last ratio stays near 1. The probe follows back the recall's loss instead (the last 10 steps), which
    must travel T + 10 steps to reach the states that saw the symbols. At initialization (init pass) and on a
    probe step (a pass of its own before the training step, leaving .grad alone), both for two stacked models."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision

    from vgbench.data.copy_memory import generate
    from vgbench.tasks import TASKS

    delay, task = 15, TASKS.get("copy_memory")
    model = rnn(Recipe(activation="tanh", cell=cell_type), per_step=True, hidden=8, steps=delay + 20, features=10,
                seeds=(0, 1))
    model.head = type(model.head)(2, 8, 10)  # ten symbols out
    model.head.init_model(0), model.head.init_model(1)
    x, y = generate(32, delay, torch.Generator().manual_seed(2))
    hand = _recall_by_hand(model, x.expand(2, *x.shape), y.expand(2, *y.shape))
    model.zero_grad(set_to_none=True)
    module = SimpleNamespace(model=model, device=torch.device("cpu"), task=task, after_clipping=[],
                             runs_per_model=[None, None])
    probe = GradientFlowProbe((x, y), interval_steps=1, models=2)
    probe.on_train_start(None, module)
    live = SimpleNamespace(global_step=0, precision_plugin=Precision())
    probe.on_train_batch_start(live, module, (x.expand(2, *x.shape), y.expand(2, *y.shape)), 0)
    assert not model.taps.armed and all(p.grad is None for p in model.parameters())
    trained = GradientFlowProbe._statistics(probe._probe_loss_taps, 2)
    for k in range(2):
        init = probe.records[k][0]
        assert init["dL_dh_norm"] == pytest.approx(hand[k], rel=1e-4)
        assert trained[k]["dL_dh_norm"] == pytest.approx(hand[k], rel=1e-4)
        recall_ratio = log10_ratio(init["dL_dh_first_last_ratio"])
        # The training loss's own gradient, for contrast: it does not vanish through time.
        every_step = _every_step_norms(model, x, y, k)
        assert abs(math.log10(every_step[0] / every_step[-1])) < 1.5
        # The weight-gradient norms stay the training loss's (what the optimizer uses), as on a training step.
        slices = [p.grad[k] for p in model.parameters()]
        assert init["weight_grad_norm"] == pytest.approx(
            [model.rnn.weight_ih.grad[k].norm().item(), model.rnn.weight_hh.grad[k].norm().item()], rel=1e-4)
        assert init["grad_total_norm"] == pytest.approx(torch.stack([g.norm() for g in slices]).norm().item(), rel=1e-4)
        assert recall_ratio < math.log10(every_step[0] / every_step[-1]) - 3
        if cell_type == "rnn":  # N(0, 0.01^2) weights: ~10^-1.4 per step over 25 steps, as predicted
            assert recall_ratio < -25
            assert init["theory_log10_dL_dh_first_last"] == pytest.approx(recall_ratio, rel=0.15, abs=0.25)
    assert hand[0] != pytest.approx(hand[1], rel=1e-3)


def _every_step_norms(model, x, y, k: int) -> list[float]:
    states = rnn_by_hand(model, x.expand(model.models, *x.shape), k)
    logits = F.linear(torch.stack(states, dim=1), model.head.weight[k], model.head.bias[k])
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    return [h.grad.double().norm().item() for h in states]


def test_a_copy_memory_cell_records_its_recall_gradient_and_trains_as_if_unprobed(tiny_params, tiny_data_root,
                                                                                 tmp_path):
    """The recall's gradient gets a pass of its own on probe steps, so the training step keeps the path it takes
    unprobed (the GRU's fused kernel): the same cell probed at every step and at none but the first trains to the
    very same numbers. Its records say what they follow back, and every one shows the vanishing."""
    from vgbench.remedies import REMEDIES
    from vgbench.training.run_group import data_for

    base = next(c for c in expand(tiny_params.active) if c.dataset == "copy_memory")
    small_init = dataclasses.replace(base, remedy="small_init", recipe=REMEDIES.get("small_init").recipe("rnn").as_dict())
    data = data_for(base, tiny_data_root, {})
    for cell in (base, small_init):
        outcomes = {}
        for interval in (1, 10 ** 6):
            probed = dataclasses.replace(cell, probes={**cell.probes, "interval_steps": interval})
            metrics = run_cell(probed, data, tmp_path / str(interval), WandbSettings(mode="disabled"))
            profile = json.loads((tmp_path / str(interval) / "cells" / probed.cell_id / "grad_profile.json").read_text())
            outcomes[interval] = metrics, profile
        (every, profile), (once, _) = outcomes[1], outcomes[10 ** 6]
        assert every.test == once.test and every.history == once.history and every.steps > 2
        assert profile["dL_dh_of"] == "the recall: the cross-entropy of the last 10 steps"
        trained = [r for r in profile["records"] if r["phase"] == "train"]
        assert [r["step"] for r in trained] == list(range(every.steps))
        if cell is small_init:  # 0.01-std weights: some 10^-1.4 per step, 13 steps from the nearest recall step
            ratios = [log10_ratio(r["dL_dh_first_last_ratio"]) for r in profile["records"]]
            assert all(ratio < -10 for ratio in ratios), ratios


class _Float16Mixed:
    """What Lightning's 16-mixed precision plugin gives the probe: float16 autocast for the training step and
    a GradScaler whose scale multiplies the loss before backward (here on the CPU, which autocasts to float16
    as a GPU does)."""

    def __init__(self):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

    @staticmethod
    def train_step_context():
        return torch.autocast("cpu", dtype=torch.float16)


@pytest.mark.parametrize("task_name", ["classification", "copy_memory"])
def test_under_16_mixed_the_taps_take_the_loss_scale_out(task_name):
    """Under 16-mixed the loss is multiplied by the GradScaler's scale (65536 at first) before backward, so
    that float16 gradients do not underflow. The taps saw the scaled gradient (||dL/dh|| 65536 times too large),
    and copy memory's own recall pass did not scale at all: its first states' gradients underflowed to 0
    (log10 ratio -inf) where training's did not. Both now agree with float32 to float16's precision."""
    from types import SimpleNamespace

    from vgbench.data.copy_memory import generate
    from vgbench.tasks import TASKS

    task, plugin = TASKS.get(task_name), _Float16Mixed()
    if task_name == "copy_memory":
        model = rnn(Recipe(activation="tanh", init="pytorch_default"), per_step=True, hidden=32, steps=35,
                    features=10, seeds=(0, 1))
        model.head = type(model.head)(2, 32, 10)
        model.head.init_model(0), model.head.init_model(1)
        x, y = generate(64, 15, torch.Generator().manual_seed(2))
    else:
        model = mlp(Recipe(activation="tanh", init="xavier"), depth=6, seeds=(0, 1))
        x, y = torch.randn(64, 40, generator=torch.Generator().manual_seed(2)), torch.arange(64) % 10
    batch = (x.expand(2, *x.shape), y.expand(2, *y.shape))
    model.taps.arm()  # float32, unscaled: the reference
    task.probe_loss(model(batch[0]), batch[1]).sum().backward()
    reference = GradientFlowProbe._statistics(model.taps.disarm(), 2)
    model.zero_grad(set_to_none=True)

    module = SimpleNamespace(model=model, task=task, active_at_step_start=torch.tensor([True, True]))
    trainer = SimpleNamespace(global_step=0, current_epoch=0, world_size=1, precision_plugin=plugin,
                              strategy=SimpleNamespace(reduce=lambda table, reduce_op: table, root_device="cpu"))
    probe = GradientFlowProbe((x, y), interval_steps=1, models=2)
    probe.on_train_batch_start(trainer, module, batch, 0)
    with plugin.train_step_context():  # the training step, as Lightning runs it: scaled loss, backward
        loss = task.loss(model(batch[0]), batch[1]).sum()
    plugin.scaler.scale(loss).backward()
    probe.on_before_optimizer_step(trainer, module, None)
    for k, record in enumerate(probe._pending):
        assert record["dL_dh_norm"] == pytest.approx(reference[k]["dL_dh_norm"], rel=0.02)
        assert math.isfinite(log10_ratio(first_last_ratio(record["dL_dh_norm"])))
