"""Cell groups: a cell's result is a function of its config only, never of the cells that shared its group.

Every family's tiny-profile cell is trained alone (a group of one) and inside a
group of nine (3 seeds x 3 learning rates); its metrics.json (all but timings
and provenance) and grad_profile.json must be identical, bit for bit, on this
CPU. The optimizers and per-model clipping are checked against PyTorch's own.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vgbench.config import WandbSettings
from vgbench.groups import group, group_id, row_key
from vgbench.matrix import expand
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.training.batches import loader
from vgbench.training.run_group import data_for, run_group
from vgbench.training.stacked_optim import StackedAdam, StackedSGD

NO_WANDB = WandbSettings(mode="disabled")
PROVENANCE = ("fit_seconds", "wall_seconds", "probe_seconds", "probe_overhead_fraction", "environment", "launch",
              "group", "wandb")
SEEDS, RATES = (0, 1, 2), (0.01, 0.03, 0.1)


def _comparable(result) -> dict:
    return {key: value for key, value in result.model_dump().items() if key not in PROVENANCE}


def _profile(root, cell_id: str) -> list:
    return json.loads((root / "cells" / cell_id / "grad_profile.json").read_text())["records"]


def _same(a, b) -> bool:
    """Equal, with nan equal to nan (a diverged cell's metrics are nan)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _first_cell_of(tiny_params, family: str):
    return next(cell for cell in expand(tiny_params.active) if cell.family == family)


FAMILIES_TO_STACK = ["mlp", "dbn", "highway", "resnet", "rnn"]


@pytest.mark.parametrize("family", FAMILIES_TO_STACK)
def test_a_cell_trained_alone_equals_the_same_cell_in_a_group_of_nine(family, tiny_params, tiny_data_root, tmp_path):
    """Nine cells of one row (3 seeds x 3 rates) trained as a group, and the middle one alone: the same
    metrics and probe records, bit for bit (on this CPU; tests/test_gpu.py says what a GPU guarantees)."""
    base = _first_cell_of(tiny_params, family)
    cells = [dataclasses.replace(base, seed=seed, learning_rate=rate) for seed in SEEDS for rate in RATES]
    data = data_for(base, tiny_data_root, {})
    grouped = run_group(cells, data, tmp_path / "group", NO_WANDB)
    middle = cells[4]  # seed 1, rate 0.03: a model with neighbours on both sides of the stack
    alone = run_group([middle], data, tmp_path / "alone", NO_WANDB)[0]
    in_group = grouped[4]
    assert in_group.cell_id == alone.cell_id == middle.cell_id
    assert _same(_comparable(in_group), _comparable(alone))
    assert _same(_profile(tmp_path / "group", middle.cell_id), _profile(tmp_path / "alone", middle.cell_id))
    # The group is recorded in each result, and the nine models did not all learn the same thing.
    assert in_group.group.size == 9 and in_group.group.index == 4 and in_group.group.cells == [c.cell_id for c in cells]
    assert alone.group.size == 1
    assert len({r.init_log10_dL_dh_first_last for r in grouped}) == 3  # one init per seed, not per rate
    assert len({r.final_train_loss for r in grouped}) == 9


def test_a_diverging_model_stops_alone_and_the_others_go_on(tiny_params, tiny_data, tmp_path):
    base = next(cell for cell in expand(tiny_params.active) if cell.remedy == "he_relu" and cell.depth == 6)
    cells = [dataclasses.replace(base, learning_rate=rate) for rate in (0.01, 1e6, 0.1)]
    grouped = run_group(cells, tiny_data, tmp_path / "group", NO_WANDB)
    assert [r.status for r in grouped] == ["completed", "diverged", "completed"]
    diverged = grouped[1]
    assert diverged.failure == "diverged" and diverged.steps == diverged.diverged_at_step + 1
    assert math.isnan(diverged.test_metric)
    assert all(math.isfinite(r.test_metric) and r.history[-1]["epoch"] == 1 for r in (grouped[0], grouped[2]))
    # Each, alone, is the same cell: the diverged one too, and its neighbours never saw it.
    for k in range(3):
        alone = run_group([cells[k]], tiny_data, tmp_path / f"alone{k}", NO_WANDB)[0]
        assert _same(_comparable(grouped[k]), _comparable(alone)), cells[k].cell_id
    profile = _profile(tmp_path / "group", diverged.cell_id)
    assert max(record["step"] for record in profile) <= diverged.diverged_at_step  # not probed after diverging


def test_groups_are_rows_of_seeds_and_rates(tiny_params):
    cells = expand(tiny_params.active)
    wider = [dataclasses.replace(c, seed=s, learning_rate=r) for c in cells for s in SEEDS for r in RATES]
    groups = group(wider)
    assert len(groups) == len(cells) and all(len(g) == 9 for g in groups)
    assert all(len({row_key(c) for c in g}) == 1 for g in groups)
    assert sorted(c.cell_id for g in groups for c in g) == sorted(c.cell_id for c in wider)
    capped = group(wider, max_size=4)
    assert [len(g) for g in capped[:3]] == [4, 4, 1]
    assert group_id(groups[0]) == group_id(list(reversed(groups[0])))  # named by members, not order
    with pytest.raises(ValueError, match="differ in more than seed and learning rate"):
        run_group([cells[0], cells[1]], None, None, NO_WANDB)


def test_each_model_reads_its_own_seed_s_order_and_evaluation_is_shared():
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    batches = list(loader(x, y, 5, True, [3, 7, 3]))
    alone = list(loader(x, y, 5, True, [7]))
    assert all(torch.equal(b[0][1], a[0][0]) for b, a in zip(batches, alone))
    assert all(torch.equal(b[1][0], b[1][2]) and not torch.equal(b[1][0], b[1][1]) for b in batches)
    evaluation = list(loader(x, y, 5, False, [3, 7]))
    assert all(torch.equal(b[1][0], b[1][1]) for b in evaluation)


def _stacked_and_plain(optimizer: str):
    torch.manual_seed(0)
    weights = torch.randn(3, 4, 5)
    rates = [0.1, 0.01, 0.3]
    stacked = torch.nn.Parameter(weights.clone())
    plain = [torch.nn.Parameter(w.clone()) for w in weights]
    if optimizer == "sgd":
        ours = StackedSGD([stacked], rates, momentum=0.9, weight_decay=1e-3)
        theirs = [torch.optim.SGD([p], lr=r, momentum=0.9, weight_decay=1e-3) for p, r in zip(plain, rates)]
    else:
        ours = StackedAdam([stacked], rates, weight_decay=1e-3)
        theirs = [torch.optim.Adam([p], lr=r, weight_decay=1e-3) for p, r in zip(plain, rates)]
    return stacked, plain, ours, theirs


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stacked_optimizers_follow_pytorch_per_model_and_freeze_stopped_models(optimizer):
    stacked, plain, ours, theirs = _stacked_and_plain(optimizer)
    for step in range(5):
        grads = torch.randn(3, 4, 5)
        if step == 3:
            ours.active[1] = False  # model 1 diverged: it must not move again
            frozen = stacked.detach()[1].clone()
            grads[1] = float("nan")
        stacked.grad = grads.clone()
        ours.step()
        for k, (p, opt) in enumerate(zip(plain, theirs)):
            if step >= 3 and k == 1:
                continue
            p.grad = grads[k].clone()
            opt.step()
    for k in (0, 2):
        torch.testing.assert_close(stacked.detach()[k], plain[k].detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(stacked.detach()[1], frozen)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_in_float64_the_stacked_optimizers_use_each_rate_exactly(optimizer):
    """precision: 64-true. A rate kept in float32 (0.1 as 0.10000000149) moved float64 weights by another
    amount than torch.optim's 0.1; they now agree to float64 rounding."""
    stacked, plain, ours, theirs = _stacked_and_plain(optimizer)
    stacked.data, plain = stacked.data.double(), [torch.nn.Parameter(p.detach().double()) for p in plain]
    theirs = [type(opt)([p], **{k: v for k, v in opt.defaults.items() if k in ("lr", "momentum", "weight_decay")})
              for p, opt in zip(plain, theirs)]
    grads = torch.randn(3, 4, 5, dtype=torch.float64)
    stacked.grad = grads.clone()
    ours.step()
    for k, (p, opt) in enumerate(zip(plain, theirs)):
        p.grad = grads[k].clone()
        opt.step()
        torch.testing.assert_close(stacked.detach()[k], p.detach(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_closure_given_to_step_computes_its_gradients_as_with_torch_optimizers(optimizer):
    """``step(closure)`` runs under no_grad; torch's optimizers re-enable gradients for the closure, and a caller
    who hands it one that calls backward (as LBFGS-style code does) got "element 0 of tensors does not require
    grad". Lightning's own closure re-enables them itself, which hid it."""
    stacked, plain, ours, theirs = _stacked_and_plain(optimizer)
    target = torch.randn(3, 4, 5)

    def closure(param, optimizer_, goal):
        def compute():
            optimizer_.zero_grad()
            loss = ((param - goal) ** 2).sum()
            loss.backward()
            return loss
        return compute

    loss = ours.step(closure(stacked, ours, target))
    theirs_losses = [opt.step(closure(p, opt, target[k])) for k, (p, opt) in enumerate(zip(plain, theirs))]
    assert loss.item() == pytest.approx(sum(theirs_losses).item(), rel=1e-6)
    for k, p in enumerate(plain):
        torch.testing.assert_close(stacked.detach()[k], p.detach(), rtol=1e-5, atol=1e-6)


def test_clipping_is_per_model(tiny_params, tiny_data):
    from vgbench.training.module import TaskModule

    family = FAMILIES.get("mlp")
    model = family.build(ModelIO((40,), 10), 3, Recipe(activation="relu", init="he"), family.hparams(width=8),
                         [0, 1])
    module = TaskModule(model, "classification", [0.1, 0.1], grad_clip="norm", grad_clip_value=1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        p.grad[1] *= 1e-4  # model 1's gradient is far below the threshold
    before = [p.grad[1].clone() for p in model.parameters()]
    module.configure_gradient_clipping(None)
    norm0 = math.sqrt(sum(float(p.grad[0].pow(2).sum()) for p in model.parameters()))
    assert norm0 == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(p.grad[1], b) for p, b in zip(model.parameters(), before))


def test_each_cell_of_a_group_gets_its_own_wandb_run(tiny_params, tiny_data, tmp_path):
    """Three cells trained together write three offline runs, each with its own cell's numbers only."""
    from tests.wandb_offline import offline_runs, read_run, wandb_dir_env

    base = next(cell for cell in expand(tiny_params.active) if cell.remedy == "he_relu" and cell.depth == 2)
    cells = [dataclasses.replace(base, seed=seed, learning_rate=rate) for seed, rate in ((0, 0.1), (1, 0.1), (0, 0.03))]
    with wandb_dir_env(tmp_path / "wandb-root") as wandb_dir:
        results = run_group(cells, tiny_data, tmp_path / "results", WandbSettings(mode="offline"), profile="tiny")
    runs = {run.config["cell_id"]: run for run in map(read_run, offline_runs(wandb_dir))}
    assert sorted(runs) == sorted(cell.cell_id for cell in cells)
    for cell, result in zip(cells, results):
        run = runs[cell.cell_id]
        assert run.exit_code == 0 and run.run.run_id == result.wandb["run_id"]
        assert run.config["seed"] == cell.seed and run.config["learning_rate"] == cell.learning_rate
        assert run.config["cell_group"]["size"] == 3
        logged = [row["val/accuracy"] for row in run.history if "val/accuracy" in row]
        assert logged == pytest.approx([row["val_accuracy"] for row in result.history], rel=1e-9)
        records = _profile(tmp_path / "results", cell.cell_id)
        assert len([row for row in run.history if "probe/grad_total_norm" in row]) == len(records)
        assert run.summary["test_metric"] == pytest.approx(result.test_metric, rel=1e-12)


def _deepest_default_cells():
    """One cell per (family, data set, remedy) of the default profile, at its block's deepest depth."""
    from tests.conftest import REPO
    from vgbench.config import load_params

    cells = expand(load_params(REPO / "params.yaml", profile="default").active)
    deepest: dict = {}
    for cell in cells:
        key = (cell.family, cell.dataset, cell.remedy)
        if key not in deepest or cell.depth > deepest[key].depth:
            deepest[key] = cell
    return list(deepest.values())


def model_four_in_stack(cell, size: int, x: torch.Tensor, armed: bool) -> list[tuple[str, torch.Tensor]]:
    """Model 4 (seed 4) of a stack of ``size`` models (seeds 0..size-1; alone when ``size`` is 1) on
    ``x[4]``, in training mode: its output, parameter gradients and batch-norm running statistics, named."""
    from vgbench.plan import build_model, data_shape

    seeds, index = ([4], 0) if size == 1 else (list(range(size)), 4)
    model = build_model(dataclasses.replace(cell, seed=seeds[0]), data_shape(cell), seeds=seeds).to(x.device)
    inputs = x[4:5] if size == 1 else x[:size]
    if armed:
        model.taps.arm()
    out = model(inputs)
    out.pow(2).flatten(1).mean(dim=1).sum().backward()
    model.taps.disarm()
    return ([("output", out.detach()[index])] + [(name, p.grad[index]) for name, p in model.named_parameters()]
            + [(name, b[index]) for name, b in model.named_buffers() if "running" in name])


def assert_same_tensors(first: list[tuple[str, torch.Tensor]], second: list[tuple[str, torch.Tensor]],
                        relative: float, context: str) -> None:
    """The same named tensors, equal bit for bit, or, with ``relative``, within that fraction of each of
    ``second``'s tensors' largest value, or of 1e-4 of the largest value of any of its tensors where that is
    larger (a bias before batch norm has no gradient in exact arithmetic: its float gradient is rounding
    residue, ~1e-8 on an H200, that no relative bound holds). The message names the first tensor off and by
    how much."""
    assert [name for name, _ in first] == [name for name, _ in second]
    scale = max(tensor.abs().max().item() for _, tensor in second)
    for (name, one), (_, other) in zip(first, second):
        largest = other.abs().max().item()
        difference = (one - other).abs().max().item()
        same = torch.equal(one, other) if relative == 0.0 else difference <= relative * max(largest, 1e-4 * scale)
        assert same, f"{name} differs ({context}): max |diff| {difference:.3g}, max |value| {largest:.3g}"


def assert_same_model_in_stacks(cell, device: str = "cpu", reference: int = 1, relative: float = 0.0):
    """Model 4 computes the same numbers in a stack of 9 as in a stack of ``reference`` (1: alone), on the
    probed and the unprobed path (``assert_same_tensors``)."""
    from vgbench.plan import data_shape

    torch.manual_seed(0)
    x = torch.randn(max(9, reference), 16, *data_shape(cell).input_shape).to(device)
    for armed in (False, True):
        assert_same_tensors(model_four_in_stack(cell, 9, x, armed), model_four_in_stack(cell, reference, x, armed),
                            relative, f"armed={armed}, stack of 9 vs {reference}")


@pytest.mark.parametrize("cell", _deepest_default_cells(), ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_default_profile_shapes_stack_bit_identically(cell):
    """Every default-profile network at its deepest depth, stacked or alone (tests/test_gpu.py: on a GPU)."""
    assert_same_model_in_stacks(cell)


def with_model(cell, **settings):
    return dataclasses.replace(cell, model={**cell.model, **settings})


def with_grouped_kernels(cell):
    return with_model(cell, grouped_kernels=True)


RESNETS = [cell for cell in _deepest_default_cells() if cell.family == "resnet"]


def assert_opt_in_computes_what_per_model_calls_do(cell, opt_in, device: str, relative: float) -> None:
    """Model 4 of 9 with a model setting that changes how the group's kernels are called (``opt_in``:
    cell -> cell) against one call per model: outputs, gradients and running statistics within
    ``relative`` (``assert_same_tensors``), with and without the probes' taps."""
    from vgbench.plan import data_shape

    torch.manual_seed(0)
    x = torch.randn(9, 16, *data_shape(cell).input_shape).to(device)
    for armed in (False, True):
        assert_same_tensors(model_four_in_stack(opt_in(cell), 9, x, armed), model_four_in_stack(cell, 9, x, armed),
                            relative, f"armed={armed}, {opt_in.__name__} vs one call per model")


@pytest.mark.parametrize("cell", RESNETS, ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_grouped_kernels_compute_what_one_call_per_model_computes_up_to_rounding(cell):
    """The resnet family's ``grouped_kernels`` (one grouped convolution and one batch norm over K*C
    channels for a group, HFTA's layout) is the same network: model 4's output, gradients and running
    statistics agree with the per-model calls' to float rounding (measured here: <= 2.4e-6 of a tensor's
    largest value), with and without the probes' taps."""
    from vgbench.models.stacked import StackedConv, StackedNorm
    from vgbench.plan import build_model, data_shape

    layers = [m for m in build_model(with_grouped_kernels(cell), data_shape(cell), seeds=[0, 1]).modules()
              if isinstance(m, (StackedConv, StackedNorm))]
    assert layers and all(layer.grouped for layer in layers)  # the setting reaches every layer
    assert_opt_in_computes_what_per_model_calls_do(cell, with_grouped_kernels, "cpu", 1e-4)


def test_a_grouped_kernel_group_trains_the_same_twice_and_records_its_layout(tiny_params, tiny_data_root, tmp_path):
    """What grouped kernels guarantee: the same group gives the same numbers; the choice is part of each
    cell's config (and so of its id), so it never shares a result with the per-model cell."""
    base = with_grouped_kernels(_first_cell_of(tiny_params, "resnet"))
    results = assert_a_group_trains_the_same_twice(base, "cpu", tiny_data_root, tmp_path)
    assert all(result.cell["model"]["grouped_kernels"] is True for result in results)
    assert base.cell_id != _first_cell_of(tiny_params, "resnet").cell_id


def assert_a_group_trains_the_same_twice(base, accelerator: str, data_root, tmp_path) -> list:
    """The group of ``base``'s row (3 seeds x 3 rates) trained twice on ``accelerator``: the same metrics and
    probe records, bit for bit, and nine different models. Returns the first run's results."""
    base = dataclasses.replace(base, trainer={**base.trainer, "accelerator": accelerator, "devices": 1})
    cells = [dataclasses.replace(base, seed=seed, learning_rate=rate) for seed in SEEDS for rate in RATES]
    data = data_for(base, data_root, {})
    first = run_group(cells, data, tmp_path / "first", NO_WANDB)
    second = run_group(cells, data, tmp_path / "second", NO_WANDB)
    for one, two in zip(first, second):
        assert _same(_comparable(one), _comparable(two))
        assert _same(_profile(tmp_path / "first", one.cell_id), _profile(tmp_path / "second", two.cell_id))
    assert len({r.final_train_loss for r in first}) == 9
    return first


# -- the rnn family's models_per_kernel_call: P models in one fused call, as one block-diagonal net ---------

def with_shared_kernel_calls(cell):
    """Calls of 3 models: model 4 of 9 is the second of its call, so it reads a block off the corner."""
    return with_model(cell, models_per_kernel_call=3)


def fused_rnn_cells(device: str) -> list:
    """The default profile's RNNs (deepest depth) that take a fused kernel on ``device``: LSTM and GRU
    everywhere, vanilla tanh/ReLU RNNs on GPUs only (vgbench/models/rnn.py)."""
    from vgbench.plan import build_model, data_shape

    # uses_fused reads only the device's type: "meta" stands for a GPU where none is (test collection).
    like = torch.empty(0, device="cpu" if device == "cpu" else "meta")
    return [cell for cell in _deepest_default_cells()
            if cell.family == "rnn" and build_model(cell, data_shape(cell), seeds=[0]).uses_fused(like)]


@pytest.mark.parametrize("cell", fused_rnn_cells("cpu"), ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_shared_kernel_calls_compute_what_one_call_per_model_computes_up_to_rounding(cell):
    """The rnn family's ``models_per_kernel_call`` (P models' fused steps as one net of P*H units with
    block-diagonal weights) is the same network: model 4's output and gradients agree with the per-model
    calls' to float rounding, with and without the probes' taps."""
    from vgbench.plan import build_model, data_shape

    model = build_model(with_shared_kernel_calls(cell), data_shape(cell), seeds=list(range(9)))
    assert model.models_per_kernel_call == 3 and model.uses_fused(torch.zeros(9, 1, 1, 1))
    assert_opt_in_computes_what_per_model_calls_do(cell, with_shared_kernel_calls, "cpu", 1e-5)


def test_block_diagonal_weights_keep_each_model_to_its_own_units():
    from vgbench.models.shared_calls import block_diagonal, gate_major

    weights = torch.arange(3 * 8 * 2, dtype=torch.float32).view(3, 8, 2) + 1  # 3 models, 4 gates of 2 units
    dense = block_diagonal(weights, gates=4)
    assert dense.shape == (4 * 3 * 2, 3 * 2)
    for gate in range(4):
        for p in range(3):
            rows = slice((gate * 3 + p) * 2, (gate * 3 + p + 1) * 2)
            assert torch.equal(dense[rows, 2 * p:2 * p + 2], weights[p, 2 * gate:2 * gate + 2])
            assert dense[rows].count_nonzero() == 4  # nothing outside its own columns
    assert torch.equal(gate_major(weights[:, :, 0], gates=4),
                       torch.cat([weights[p, 2 * g:2 * g + 2, 0] for g in range(4) for p in range(3)]))


def _small_rnns(recipe: Recipe, models: int, models_per_kernel_call: int):
    """``models`` recurrent nets of 6 units over 9 steps of 3 features (seeds 0..models-1), one output each."""
    entry = FAMILIES.get("rnn")
    torch.manual_seed(0)
    return entry.build(ModelIO((9, 3), 1, False), 9, recipe,
                       entry.hparams(hidden_size=6, models_per_kernel_call=models_per_kernel_call), list(range(models)))


def _lstm_whose_model_two_blows_up(models_per_kernel_call: int):
    model = _small_rnns(Recipe(cell="lstm"), 5, models_per_kernel_call)
    with torch.no_grad():  # overflowed weights: inf * 0 = nan from the first step
        model.rnn.weight_hh[2, :, 0] = float("inf")
    return model


def test_a_model_that_blows_up_in_a_shared_kernel_call_leaves_the_others_as_they_were_alone():
    """Its nan states would reach every model of its call through the zeros of the block-diagonal
    weights (0 * nan = nan); the call is made again one model at a time, so the others keep their own
    numbers and the culprit its nan, as when each model has its call."""
    from vgbench.models.shared_calls import block_diagonal, gate_major

    shared, alone = _lstm_whose_model_two_blows_up(5), _lstm_whose_model_two_blows_up(1)
    x = torch.randn(5, 4, 9, 3)
    # The hazard: in one call for all five, as the shared path makes it, every model's state is nan
    # after a step or two.
    rnn = shared.rnn
    raw = shared.fused(x.permute(1, 2, 0, 3).flatten(2), (torch.zeros(1, 4, 30), torch.zeros(1, 4, 30)),
                       [block_diagonal(rnn.weight_ih, 4), block_diagonal(rnn.weight_hh, 4),
                        gate_major(rnn.bias_ih, 4), gate_major(rnn.bias_hh, 4)], True, 1, 0.0, True, False, True)[0]
    assert raw[:, -1].isnan().all()  # [N, T, 5*H]
    states = {name: model.fused_calls(x) for name, model in (("shared", shared), ("alone", alone))}
    assert states["shared"][2].isnan().all() and states["alone"][2].isnan().all()
    others = [0, 1, 3, 4]
    assert states["shared"][others].isfinite().all()
    assert torch.allclose(states["shared"][others], states["alone"][others], rtol=1e-5, atol=1e-6)
    for model in (shared, alone):
        model.fused_calls(x)[others].pow(2).sum().backward()
    for name, param in shared.rnn.named_parameters():
        assert torch.allclose(param.grad[others], getattr(alone.rnn, name).grad[others], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_under_cpu_autocast_both_gated_cells_run_their_fused_calls_in_the_autocast_precision(cell):
    """bf16-mixed on a CPU: torch's autocast casts the fused LSTM whole, but lists no GRU op, so without
    vgbench's own cast a GRU row ran its fused steps in float32 beside LSTM rows in bfloat16. Both now run
    in bfloat16: the same numbers as the kernel given bfloat16 inputs and weights by hand."""
    model = _small_rnns(Recipe(cell=cell), 3, 1)
    x = torch.randn(3, 4, 9, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model.fused_calls(x)
    assert fused.dtype == torch.bfloat16
    weights = [w[0].to(torch.bfloat16) for w in (model.rnn.weight_ih, model.rnn.weight_hh, model.rnn.bias_ih,
                                                   model.rnn.bias_hh)]
    h0 = torch.zeros(1, 4, 6, dtype=torch.bfloat16)
    by_hand = model.fused(x[0].to(torch.bfloat16), (h0, h0) if cell == "lstm" else h0, weights, True, 1, 0.0,
                          False, False, True)[0]
    assert torch.equal(fused[0], by_hand)
    plain = model.fused_calls(x)  # no autocast: float32, which the bfloat16 run rounds
    assert plain.dtype == torch.float32 and not torch.equal(plain, fused.float())
    assert torch.allclose(plain, fused.float(), rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("recipe, autocast", [(Recipe(cell="lstm"), False), (Recipe(cell="gru"), False),
                                             (Recipe(activation="relu"), False), (Recipe(cell="lstm"), True),
                                             (Recipe(cell="gru"), True)],
                         ids=["lstm", "gru", "relu", "lstm-bf16-autocast", "gru-bf16-autocast"])
def test_a_gradient_that_blows_up_in_a_shared_kernel_call_leaves_the_others_as_they_were_alone(recipe, autocast):
    """Finite states, a non-finite gradient reaching model 1's (a diverged model's masked loss is 0 * inf,
    a gradient can explode through time): in one call it would reach every model of the call backwards
    (through the zeros of W_hh's transpose); the call's gradients are made again one model at a time.
    Nine models in calls of 4, 4 and 1: every model agrees with a call of its own, and those of model 1's
    call are its very numbers, under mixed precision too (the backward's calls run as the forward's did)."""
    models = {size: _small_rnns(recipe, 9, size) for size in (1, 4)}
    x = torch.randn(9, 4, 9, 3)
    upstream = torch.randn(9, 4, 9, 6)
    upstream[1, 0, -1, 0] = float("inf")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # forward only, as Lightning does
        states = {size: model.fused_calls(x) for size, model in models.items()}
    tolerance = {"rtol": 2e-2, "atol": 1e-3} if autocast else {"rtol": 1e-4, "atol": 1e-6}
    assert states[4].isfinite().all() and torch.allclose(states[4].float(), states[1].float(), **tolerance)
    for size, model in models.items():
        states[size].backward(upstream.to(states[size].dtype))
    others = [0, *range(2, 9)]
    for name, param in models[4].rnn.named_parameters():
        alone = getattr(models[1].rnn, name).grad
        assert not param.grad[1].isfinite().all() and not alone[1].isfinite().all(), name  # the culprit's own
        assert param.grad[others].isfinite().all(), name
        assert torch.equal(param.grad[[0, 2, 3]], alone[[0, 2, 3]]), name  # model 1's call: calls of their own
        assert torch.allclose(param.grad[4:], alone[4:], **tolerance), name
    # Without the check, the shared call's backward would have spread it (the hazard is real):
    with torch.no_grad():
        plain = [p.detach().clone().requires_grad_() for p in models[4].rnn.parameters()]
    from vgbench.models.shared_calls import calls_of, shared
    for start, stop in calls_of(9, 4):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            states = shared(models[4]._fused_call, models[4].rnn.blocks, x, plain, start, stop)
        states.backward(upstream[start:stop].to(states.dtype))
    assert not plain[1].grad[0].isfinite().all()  # model 0's W_hh, in model 1's call of 4


def test_a_diverging_model_in_a_shared_kernel_call_stops_alone_and_the_others_go_on(tiny_params, tiny_data_root,
                                                                                     tmp_path):
    """A group of three LSTMs in one kernel call, the middle one at a rate that blows up its recurrence:
    it diverges at the step it does with a call of its own, and its neighbours train as with calls of
    their own (to float rounding: the setting changes only how the calls are cut)."""
    base = next(cell for cell in expand(tiny_params.active) if cell.remedy == "lstm")
    data = data_for(base, tiny_data_root, {})
    runs = {}
    for name, cell in (("own calls", base), ("one call", with_model(base, models_per_kernel_call=3))):
        cells = [dataclasses.replace(cell, learning_rate=rate) for rate in (0.01, 1e38, 0.03)]
        runs[name] = run_group(cells, data, tmp_path / name.replace(" ", "_"), NO_WANDB)
        assert [r.status for r in runs[name]] == ["completed", "diverged", "completed"], name
    own, shared = runs["own calls"], runs["one call"]
    assert shared[1].diverged_at_step == own[1].diverged_at_step
    assert all(result.cell["model"]["models_per_kernel_call"] == 3 for result in shared)
    for k in (0, 2):
        assert math.isfinite(shared[k].test_metric)
        assert shared[k].test_metric == pytest.approx(own[k].test_metric, rel=1e-4)
        assert [row["train_loss"] for row in shared[k].history] == pytest.approx(
            [row["train_loss"] for row in own[k].history], rel=1e-4)


def test_a_shared_kernel_call_group_trains_the_same_twice(tiny_params, tiny_data_root, tmp_path):
    """What shared calls guarantee, as grouped kernels do: the same group gives the same numbers, and the
    setting is part of each cell's config and id."""
    lstm = next(cell for cell in expand(tiny_params.active) if cell.remedy == "lstm")
    base = with_model(lstm, models_per_kernel_call=3)
    results = assert_a_group_trains_the_same_twice(base, "cpu", tiny_data_root, tmp_path)
    assert all(result.cell["model"]["models_per_kernel_call"] == 3 for result in results)
    assert base.cell_id != lstm.cell_id
