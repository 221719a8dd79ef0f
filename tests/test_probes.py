"""Gradient-flow probes against gradients computed by hand with plain autograd."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vgbench.matrix import expand
from vgbench.models import FAMILIES
from vgbench.models.recipe import Recipe
from vgbench.probes.failure import failure_label, log10_ratio
from vgbench.probes.gradient_flow import GradientFlowProbe, first_last_ratio
from vgbench.config import WandbSettings
from vgbench.training.run_cell import run_cell


def mlp(recipe: Recipe, depth: int = 5, width: int = 12):
    torch.manual_seed(0)
    entry = FAMILIES.get("mlp")
    return entry.build((40,), 10, depth, recipe, entry.hparams(width=width))


def by_hand(model, x, y):
    """The same forward pass written out, keeping every h_l and pre-activation z_l."""
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
    F.cross_entropy(model.head(h), y).backward()
    return hidden, pre


def probed(model, x, y):
    model.taps.arm()
    F.cross_entropy(model(x), y).backward()
    record = model.taps.disarm()
    return GradientFlowProbe._statistics(record)


@pytest.mark.parametrize("recipe", [Recipe(), Recipe(activation="relu", init="he"),
                                    Recipe(activation="tanh", init="xavier", skip="residual"),
                                    Recipe(norm="batchnorm")])
def test_taps_match_autograd(recipe):
    model = mlp(recipe)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    hidden, pre = by_hand(model, x, y)
    hand_norms = [h.grad.double().norm().item() for h in hidden]
    hand_weight = [layer.linear.weight.grad.double().norm().item() for layer in model.hidden]
    model.zero_grad()
    stats = probed(model, x, y)
    assert stats["dL_dh_norm"] == pytest.approx(hand_norms, rel=1e-6)
    probe_weight = [p.grad.double().norm().item() for _, p in model.probe_weights()]
    assert probe_weight == pytest.approx(hand_weight, rel=1e-6)
    variances = [h.detach().double().var(unbiased=False).item() for h in hidden]
    assert stats["activation_variance"] == pytest.approx(variances, rel=1e-6)
    if recipe.activation == "sigmoid":
        saturated = [((torch.sigmoid(z) < 0.01) | (torch.sigmoid(z) > 0.99)).double().mean().item() for z in pre]
        assert stats["saturated_fraction"] == pytest.approx(saturated) and stats["dead_fraction"] is None
    if recipe.activation == "relu":
        dead = [(z <= 0).all(dim=0).double().mean().item() for z in pre]
        assert stats["dead_fraction"] == pytest.approx(dead) and stats["saturated_fraction"] is None


def test_saturation_and_death_are_detected():
    model = mlp(Recipe(activation="sigmoid"), depth=2)
    with torch.no_grad():
        model.hidden[0].linear.bias.fill_(50.0)  # every first-layer unit pinned at 1
    stats = probed(model, torch.randn(16, 40), torch.randint(0, 10, (16,)))
    assert stats["saturated_fraction"][0] == 1.0
    relu = mlp(Recipe(activation="relu", init="he"), depth=2)
    with torch.no_grad():
        relu.hidden[1].linear.bias[:6].fill_(-100.0)  # half the second layer never fires
    stats = probed(relu, torch.randn(16, 40), torch.randint(0, 10, (16,)))
    assert stats["dead_fraction"][1] == pytest.approx(0.5)


def test_disarmed_taps_cost_nothing_and_record_nothing():
    model = mlp(Recipe())
    F.cross_entropy(model(torch.randn(8, 40)), torch.randint(0, 10, (8,))).backward()
    assert model.taps.record.grad_sq_sum == {} and model.taps.seconds == 0.0


def test_baseline_vanishes_and_he_relu_does_not():
    x, y = torch.randn(128, 40), torch.randint(0, 10, (128,))
    deep_baseline = probed(mlp(Recipe(), depth=12, width=32), x, y)
    deep_relu = probed(mlp(Recipe(activation="relu", init="he"), depth=12, width=32), x, y)
    assert log10_ratio(first_last_ratio(deep_baseline["dL_dh_norm"])) < -10
    assert abs(log10_ratio(first_last_ratio(deep_relu["dL_dh_norm"]))) < 1.5


def _cell(tiny_params, remedy: str, depth: int, **changes):
    cell = next(c for c in expand(tiny_params.active) if c.remedy == remedy and c.depth == depth)
    return dataclasses.replace(cell, **changes)


def test_probe_callback_records_init_and_every_k_steps(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "he_relu", 6)
    metrics = run_cell(cell, tiny_data, tmp_path, WandbSettings(mode="disabled"))
    records = json.loads((tmp_path / "cells" / cell.cell_id / "grad_profile.json").read_text())["records"]
    interval = cell.probes["interval_steps"]
    train_steps = [r["step"] for r in records if r["phase"] == "train"]
    assert records[0]["phase"] == "init" and records[0]["step"] == 0
    assert train_steps == list(range(0, metrics["steps"], interval))
    # The init record is the fixed batch probed by hand on a freshly built, identically seeded model.
    torch.manual_seed(cell.seed)
    import lightning as L
    L.seed_everything(cell.seed, verbose=False)
    entry = FAMILIES.get("mlp")
    model = entry.build(tiny_data.input_shape, 10, cell.depth, Recipe(**cell.recipe), entry.hparams(**cell.model))
    size = cell.probes["init_batch_size"]
    x, y = tiny_data.splits["train"]["x"][:size], tiny_data.splits["train"]["y"][:size]
    hidden, _ = by_hand(model, x, y)
    assert records[0]["dL_dh_norm"] == pytest.approx([h.grad.double().norm().item() for h in hidden], rel=1e-5)
    assert metrics["init_log10_dL_dh_first_last"] == pytest.approx(
        math.log10(hidden[0].grad.norm().item() / hidden[-1].grad.norm().item()), rel=1e-4)
    assert 0 < metrics["probe_seconds"] < metrics["fit_seconds"]
    assert metrics["probe_overhead_fraction"] == pytest.approx(metrics["probe_seconds"] / metrics["fit_seconds"])


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
    unclipped = _cell(tiny_params, "baseline", 2)
    run_cell(unclipped, tiny_data, tmp_path, WandbSettings(mode="disabled"))
    records = json.loads((tmp_path / "cells" / unclipped.cell_id / "grad_profile.json").read_text())["records"]
    assert all(r["weight_grad_norm_clipped"] is None for r in records)


def test_failure_labels():
    init = {"dL_dh_first_last_ratio": 1e-8, "grad_total_norm": 1.0}
    last = {"grad_total_norm": 1.0, "dead_fraction": [0.9, 0.1]}
    kwargs = dict(vanished_log10_ratio=-3, exploded_log10_ratio=3, dead_fraction=0.5)
    assert failure_label(diverged=True, trainable=False, init_record=init, last_record=last, **kwargs) == "diverged"
    assert failure_label(diverged=False, trainable=True, init_record=init, last_record=last, **kwargs) is None
    assert failure_label(diverged=False, trainable=False, init_record=init, last_record=last, **kwargs) == "vanished"
    assert failure_label(diverged=False, trainable=False, init_record={**init, "dL_dh_first_last_ratio": 1e5},
                         last_record=last, **kwargs) == "exploded"
    assert failure_label(diverged=False, trainable=False, init_record={**init, "dL_dh_first_last_ratio": 0.5},
                         last_record=last, **kwargs) == "dead_units"
    assert failure_label(diverged=False, trainable=False, init_record={**init, "dL_dh_first_last_ratio": 0.5},
                         last_record={**last, "dead_fraction": [0.1]}, **kwargs) == "no_learning"
    assert log10_ratio(0.0) == float("-inf") and math.isnan(log10_ratio(float("nan")))
