"""``vgbench plan``: data shapes without data, step counts, timing, packing into SLURM array tasks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from vgbench.config import load_params, parse_params
from vgbench.groups import group
from vgbench.data import DATASETS, offline_names
from vgbench.data.store import prepare
from vgbench.matrix import expand
from vgbench.twins import stored_as, unique_stored
from vgbench.plan import (CellEstimate, StepCost, cell_seconds, device_description, estimate, format_plan, measure,
                          pack, pack_groups, plan_main, shape_key, training_steps)

# Small settings (and a length, for per-length data sets) of every offline data set; awkward sizes on
# purpose: 205 samples is not a multiple of MNIST-1D's 10 classes, and 30% of the train splits is not whole.
SMALL_OFFLINE = {
    "mnist1d": ({"num_samples": 205, "validation_fraction": 0.3}, None),
    "seq_mnist1d": ({"num_samples": 205, "validation_fraction": 0.3}, 7),
    "perm_seq_mnist1d": ({"num_samples": 205, "validation_fraction": 0.3, "permutation_seed": 3}, 7),
    "adding": ({"train_size": 13, "test_size": 11, "validation_fraction": 0.3}, 5),
    "copy_memory": ({"train_size": 13, "test_size": 11, "validation_fraction": 0.3}, 4),
}


@pytest.fixture(scope="module")
def tiny_cells(tiny_params):
    return expand(tiny_params.active)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Time with one thread: two threads on two busy cores wait on each other and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- data shapes

def test_every_offline_data_set_is_checked_here():
    assert sorted(SMALL_OFFLINE) == sorted(offline_names())


def test_every_data_set_has_a_shape_hook():
    assert [name for name, spec in DATASETS.items() if spec.shape is None] == []


@pytest.mark.parametrize("name", sorted(SMALL_OFFLINE))
def test_shape_hook_agrees_with_what_prepare_stores(name, tmp_path):
    raw_settings, length = SMALL_OFFLINE[name]
    spec = DATASETS.get(name)
    settings = spec.settings.model_validate(raw_settings)
    manifest = prepare(name, settings, tmp_path, length)
    shape = spec.shape(settings, length)
    assert list(shape.input_shape) == manifest["input_shape"]
    assert shape.split_sizes(settings.validation_fraction) == manifest["sizes"]
    assert shape.num_classes == manifest["num_classes"]


def test_mnist1d_shape_follows_the_packages_split():
    spec = DATASETS.get("mnist1d")
    shape = spec.shape(spec.settings.model_validate({"num_samples": 205}), None)
    # 20 signals per class (200 in all), int(200 * 0.8) for train.
    assert (shape.input_shape, shape.train_size, shape.test_size, shape.num_classes) == ((40,), 160, 40, 10)


@pytest.mark.parametrize("name, expected", [
    ("mnist", ((1, 28, 28), 60000, 10000)),
    ("fashion_mnist", ((1, 28, 28), 60000, 10000)),
    ("cifar10", ((3, 32, 32), 50000, 10000)),
    ("seq_mnist", ((784, 1), 60000, 10000)),
    ("perm_seq_mnist", ((784, 1), 60000, 10000)),
])
def test_torchvision_shapes_need_no_download(name, expected):
    spec = DATASETS.get(name)
    shape = spec.shape(spec.settings(), None)
    assert (shape.input_shape, shape.train_size, shape.test_size, shape.num_classes) == (*expected, 10)


# ----------------------------------------------------------------------------------------- pack

def _check_packing(ids, seconds, limit, tasks):
    assert [cell_id for task in tasks for cell_id in task] == ids  # every id once, order kept
    for task in tasks:
        assert len(task) == 1 or sum(seconds[cell_id] for cell_id in task) <= limit


def test_pack_closes_a_task_before_it_would_exceed_the_limit():
    seconds = dict(zip("abcdefg", [3, 4, 5, 20, 2, 2, 9]))
    ids = list(seconds)
    tasks = pack(ids, seconds, 10)
    assert tasks == [["a", "b"], ["c"], ["d"], ["e", "f"], ["g"]]
    _check_packing(ids, seconds, 10, tasks)


def test_pack_fills_a_task_exactly_to_the_limit():
    assert pack(["a", "b", "c"], {"a": 5, "b": 5, "c": 1}, 10) == [["a", "b"], ["c"]]


def test_pack_gives_a_cell_above_the_limit_its_own_task():
    seconds = {"a": 1, "b": 50, "c": 1, "d": 60}
    tasks = pack(list(seconds), seconds, 10)
    assert tasks == [["a"], ["b"], ["c"], ["d"]]
    _check_packing(list(seconds), seconds, 10, tasks)


def test_pack_many_cells():
    ids = [f"c{i}" for i in range(200)]
    seconds = {cell_id: float((i * 37) % 23) for i, cell_id in enumerate(ids)}
    tasks = pack(ids, seconds, 40)
    _check_packing(ids, seconds, 40, tasks)
    # Greedy: no task could have taken the first cell of the next one.
    for task, following in zip(tasks, tasks[1:]):
        assert sum(seconds[c] for c in task) + seconds[following[0]] > 40


def test_pack_edge_cases():
    assert pack([], {}, 10) == []
    with pytest.raises(ValueError, match="limit_seconds"):
        pack(["a"], {"a": 1}, 0)


# ----------------------------------------------------------------------------------------- shape keys

def test_shape_key_groups_seeds_and_rates_but_nothing_else():
    cells = expand(load_params(REPO / "params.yaml", profile="default").active)

    def model_shape(cell):
        return cell.family, json.dumps(cell.recipe, sort_keys=True), cell.dataset, cell.depth

    groups: dict[str, set] = {}
    for cell in cells:
        groups.setdefault(shape_key(cell), set()).add(model_shape(cell))
    assert all(len(members) == 1 for members in groups.values())
    assert len(groups) == len({model_shape(cell) for cell in cells}) == 68  # 3 seeds x 3 rates per shape
    cell = cells[0]
    assert shape_key(dataclasses.replace(cell, seed=7, learning_rate=0.5)) == shape_key(cell)
    assert shape_key(dataclasses.replace(cell, depth=cell.depth + 1)) != shape_key(cell)
    assert shape_key(dataclasses.replace(cell, training={**cell.training, "batch_size": 7})) != shape_key(cell)


# ----------------------------------------------------------------------------------------- measuring

def test_measure_times_one_cell_of_every_family(tiny_cells, monkeypatch):
    torch.set_num_threads(2)  # the cells pin 1 below; the fixture restores torch's own count
    rng_before = torch.get_rng_state()
    asked = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (asked.append(n), set_threads(n)))
    first_of_family = {}
    for cell in tiny_cells:
        first_of_family.setdefault(cell.family, cell)
    assert sorted(first_of_family) == sorted(["mlp", "rnn", "dbn", "resnet", "highway"])
    costs = {}
    for family, cell in first_of_family.items():
        pinned = dataclasses.replace(cell, trainer={**cell.trainer, "threads": 1})
        cost = costs[family] = measure(pinned, steps=1)
        for seconds in (cost.train_step_seconds, cost.eval_batch_seconds):
            assert math.isfinite(seconds) and seconds > 0, (family, cost)
        assert math.isfinite(cost.probe_extra_seconds) and cost.probe_extra_seconds >= 0
    # What is timed is the cell's work: the 8-layer ResNet's convolutions cost several times the 2-layer,
    # width-16 MLP's step (4.6 vs 0.7 ms here), far beyond timer noise.
    assert costs["resnet"].train_step_seconds > 2 * costs["mlp"].train_step_seconds, costs
    assert asked[:2] == [1, 2]  # the cell's threads while measuring, then torch's own again
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_copy_memory_probe_step_is_timed_with_its_recall_pass(tiny_cells, monkeypatch):
    """Copy memory's probes follow the recall's loss in a forward and backward of their own (GradientFlowProbe):
    the planner times that pass, with the taps armed, not a training step with armed taps."""
    from vgbench.tasks import Task

    cell = next(c for c in tiny_cells if c.dataset == "copy_memory")
    passes = []
    real = Task.probe_loss
    monkeypatch.setattr(Task, "probe_loss", lambda task, out, y: passes.append(out.requires_grad) or real(task, out, y))
    cost = measure(dataclasses.replace(cell, trainer={**cell.trainer, "threads": 1}), steps=1)
    assert passes == [True, True]  # the two timed probed steps, each with a graph to back-propagate
    assert math.isfinite(cost.probe_extra_seconds) and cost.probe_extra_seconds >= 0


def test_estimate_counts_steps_from_the_data_shape(tiny_cells):
    estimates = estimate(tiny_cells, steps=1)
    assert sorted(estimates) == sorted(cell.cell_id for cell in tiny_cells)
    for cell in tiny_cells:
        spec = DATASETS.get(cell.dataset)
        settings = spec.settings.model_validate(cell.dataset_settings)
        shape = spec.shape(settings, spec.length_for(cell.depth))
        train = shape.train_size - round(shape.train_size * settings.validation_fraction)
        expected = cell.training["max_epochs"] * math.ceil(train / cell.training["batch_size"])
        assert estimates[cell.cell_id].steps == expected, cell.cell_id
        assert estimates[cell.cell_id].seconds > 0
        assert estimates[cell.cell_id].shape == shape_key(cell)
    # MNIST-1D as the tiny profile stores it: 5000 -> 4000 train, 800 of them validation; 32 batches of 100.
    mlp = next(cell for cell in tiny_cells if cell.family == "mlp")
    assert estimates[mlp.cell_id].steps == 2 * 32
    pretraining = {cell.remedy: estimates[cell.cell_id].pretraining_seconds for cell in tiny_cells
                   if cell.family == "dbn"}
    assert pretraining["pretrain"] > 0 and pretraining["small_init"] == 0


def test_cell_seconds_adds_up_epochs_evaluation_and_probes(tiny_cells):
    mlp = next(cell for cell in tiny_cells if cell.family == "mlp")
    # 2 epochs x (32 train batches x 1 s + 8 validation batches x 0.5 s) + 10 test batches x 0.5 s
    # + 16 probed steps (one every 4 of 64) x 0.25 s + the init probe (1 + 0.25 s).
    assert cell_seconds(mlp, StepCost(1.0, 0.5, 0.25)) == pytest.approx(2 * (32 + 4) + 5 + 4 + 1.25)


def test_paper_cells_are_estimated_without_their_data(tmp_path, monkeypatch):
    cells = expand(load_params(REPO / "params.yaml", profile="paper").active)
    monkeypatch.chdir(tmp_path)  # no data/ here
    mnist_mlp = next(c for c in cells if (c.family, c.dataset, c.depth) == ("mlp", "mnist", 2))
    cifar_resnet = next(c for c in cells if (c.family, c.dataset, c.depth) == ("resnet", "cifar10", 20))
    estimates = estimate([mnist_mlp, cifar_resnet], steps=1)
    # MNIST: 60000 - 12000 validation = 48000 / 128 -> 375 batches x 30 epochs.
    assert estimates[mnist_mlp.cell_id].steps == 375 * 30
    # CIFAR-10: 50000 - 5000 validation = 45000 / 128 -> 352 batches x 164 epochs (He et al.: ~64k iterations).
    assert estimates[cifar_resnet.cell_id].steps == 352 * 164
    assert all(e.seconds > 0 and math.isfinite(e.seconds) for e in estimates.values())
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- the report

def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def _estimates(cells, seconds: float) -> dict[str, CellEstimate]:
    """Every cell's estimate under the id it is stored as (a DBN twin of an MLP cell: that cell's), as
    ``plan.estimate`` keys them."""
    return {stored.cell_id: CellEstimate(shape_key(stored), training_steps(stored), seconds)
            for stored in unique_stored(cells)}


def test_format_plan_totals_add_up(tiny_cells):
    estimates = {stored_as(cell).cell_id: CellEstimate(shape_key(cell), training_steps(cell), 500.0 + 20.0 * index)
                 for index, cell in enumerate(tiny_cells)}
    text = format_plan("tiny", tiny_cells, estimates, "cpu: Test CPU, 2 torch threads", task_minutes=25)
    *groups, total = _table_rows(text)
    assert [row[:2] for row in groups] == [["mlp", "mnist1d"], ["rnn", "adding"], ["rnn", "copy_memory"],
                                           ["dbn", "mnist1d"], ["resnet", "mnist1d"], ["highway", "mnist1d"]]
    assert total[0] == "**total**"
    assert int(total[2]) == sum(int(row[2]) for row in groups) == len(tiny_cells)
    # One seed and one rate per row in the tiny profile: every cell group is a group of one.
    assert total[3] == f"{len(tiny_cells)} (1)" and all(row[3] == f"{row[2]} (1)" for row in groups)
    assert int(total[4]) == sum(int(row[4]) for row in groups) == len(tiny_cells)  # one shape per cell here
    steps = sum(e.steps for e in estimates.values())
    assert int(total[5].replace(",", "")) == sum(int(row[5].replace(",", "")) for row in groups) == steps
    hours = sum(e.seconds for e in estimates.values()) / 3600
    assert float(total[6]) == pytest.approx(hours, abs=5e-4)
    assert sum(float(row[6]) for row in groups) == pytest.approx(hours, abs=5e-4 * len(groups))
    assert "cpu: Test CPU, 2 torch threads" in text
    for family in ("mlp", "rnn", "dbn", "resnet", "highway"):  # how each family stacks a group
        assert f"- {family}: " in text
    tasks = pack(list(estimates), {k: e.seconds for k, e in estimates.items()}, 25 * 60)
    assert len(tasks) == 7  # 8.3-12.3 min cells: two to a 25-minute task
    assert f"SLURM: {len(tasks)} array tasks of at most 25 min" in text
    assert "SLURM" not in format_plan("tiny", tiny_cells, estimates, "cpu", task_minutes=None)


def test_format_plan_counts_cell_groups_of_seeds_and_rates():
    """The default profile's rows have 3 seeds x 3 rates (MLP): groups of 9, or of at most group_size."""
    cells = expand(load_params(REPO / "params.yaml", profile="default").active)
    estimates = _estimates(cells, 60.0)
    mlp = [cell for cell in cells if cell.family == "mlp"]
    rows = {(row[0], row[1]): row for row in _table_rows(format_plan("default", cells, estimates, "cpu", None))}
    assert len({(c.seed, c.learning_rate) for c in mlp}) == 9
    assert rows[("mlp", "mnist1d")][3] == f"{len(mlp) // 9} (9)"
    capped = {(row[0], row[1]): row for row in _table_rows(format_plan("default", cells, estimates, "cpu", None,
                                                                       group_size=4))}
    assert capped[("mlp", "mnist1d")][3] == f"{3 * len(mlp) // 9} (4)"  # each row of 9 splits into 4 + 4 + 1
    ones = _table_rows(format_plan("default", cells, estimates, "cpu", None, group_size=1))
    assert all(row[3] == f"{row[2]} (1)" for row in ones if row[0] not in ("dbn", "**total**"))
    assert ones[-1][3] == f"{len(unique_stored(cells))} (1)"



def test_the_plan_packs_whole_cell_groups_as_the_slurm_launcher_does():
    """The plan packed single cells into array tasks (737 for the paper profile), the launcher whole groups (at
    most one task per group, 293 there): the plan now counts the launcher's tasks. A default-profile row of nine
    1-minute cells is a 9-minute group: 5 minutes per task leave every group alone."""
    cells = expand(load_params(REPO / "params.yaml", profile="default").active)
    estimates = _estimates(cells, 60.0)
    groups = group(unique_stored(cells))
    tasks = pack_groups(groups, {cell_id: e.seconds for cell_id, e in estimates.items()}, 5 * 60)
    assert tasks == [[members] for members in groups]
    assert len(pack(list(estimates), {k: e.seconds for k, e in estimates.items()}, 5 * 60)) > len(tasks)
    text = format_plan("default", cells, estimates, "cpu", task_minutes=5)
    assert (f"SLURM: {len(groups)} array tasks of at most 5 min, as the slurm launcher packs whole cell groups "
            f"({len(groups)} groups estimated above that run alone; the longest group: 9.0 min)") in text
    twenty = pack_groups(groups, {cell_id: e.seconds for cell_id, e in estimates.items()}, 20 * 60)
    assert [len(task) for task in twenty[:3]] == [2, 2, 2] and sum(map(len, twenty)) == len(groups)


def test_float16_mixed_precision_cells_train_one_per_group_and_the_plan_says_why():
    """16-mixed's loss scaler skips the optimizer step when any gradient overflowed: over a stack it would skip
    every model's step for one model's overflow or divergence. Such cells are never stacked; bf16 cells are."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["tiny"].update(trainer={"precision": "16-mixed"}, seeds=[0, 1, 2])
    cells = expand(parse_params(raw, profile="tiny").active)
    mlp_row = [cell for cell in cells if cell.family == "mlp" and cell.remedy == "he_relu" and cell.depth == 2]
    assert len(mlp_row) > 1 and [len(g) for g in group(mlp_row)] == [1] * len(mlp_row)
    estimates = _estimates(cells, 60.0)
    text = format_plan("tiny", cells, estimates, "cpu", None)
    assert f"- {len(cells)} cells train one per group: trainer.precision 16-mixed" in text
    assert all(row[3] == f"{row[2]} (1)" for row in _table_rows(text))
    raw["profiles"]["tiny"]["trainer"] = {"precision": "bf16-mixed"}
    bf16 = [cell for cell in expand(parse_params(raw, profile="tiny").active) if cell.family == "mlp"
            and cell.remedy == "he_relu" and cell.depth == 2]
    assert [len(g) for g in group(bf16)] == [len(bf16)]


def test_device_description_names_the_cpu_and_threads():
    # What the kernel calls this CPU (Linux, as CI): the description must name it, not a placeholder.
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name"))
    assert device_description("cpu", threads=3) == f"cpu: {model}, 3 torch threads"
    assert device_description("cpu", threads=1) == f"cpu: {model}, 1 torch thread"


def test_plan_main_reports_the_profile(tiny_params):
    text = plan_main(tiny_params, steps=1, task_minutes=30)
    assert text.startswith("# vgbench plan: profile `tiny`, 13 cells")
    *_, total = _table_rows(text)
    assert float(total[6]) < 0.5  # device-hours: what it measured fits one 30-minute task, so it packs one
    assert "SLURM: 1 array task of at most 30 min" in text
    assert "Measured on cpu: " in text


def test_step_costs_are_kept_and_reused(tiny_params, tmp_path, monkeypatch):
    """`vgbench plan` keeps what it timed; a second plan (or the slurm launcher) times nothing again."""
    import vgbench.plan as plan_module

    first = plan_main(tiny_params, steps=1, task_minutes=30, results_root=tmp_path)
    stored = plan_module.load_costs(plan_module.costs_path(tmp_path), "cpu")
    assert len(stored) == len({shape_key(c) for c in expand(tiny_params.active)})
    assert "reused" not in first

    def refuse(*args, **kwargs):
        raise AssertionError("a kept shape was timed again")

    monkeypatch.setattr(plan_module, "measure", refuse)
    second = plan_main(tiny_params, steps=1, task_minutes=30, results_root=tmp_path)
    assert f"Step costs of {len(stored)} model shapes were reused" in second
    # Same costs, same table (pretraining is timed afresh, so compare the non-pretraining rows).
    rows = [[line for line in text.splitlines() if line.startswith("| mlp")] for text in (first, second)]
    assert rows[0] == rows[1] and rows[0]



def test_step_costs_timed_by_other_training_code_are_timed_again(tmp_path, monkeypatch):
    """A change of the model, probe or training code, of the timing code in plan.py or of torch changes what a
    step costs (copy memory's probe step took a pass of its own): the kept costs name what timed them, and other
    code's are not reused."""
    import vgbench.plan as plan_module
    from vgbench import results

    path = plan_module.costs_path(tmp_path)
    plan_module.save_costs(path, "cpu", {"shape": StepCost(1.0, 0.5, 0.25)})
    assert plan_module.load_costs(path, "cpu") == {"shape": StepCost(1.0, 0.5, 0.25)}
    original = plan_module._timing_code()
    monkeypatch.setattr(results, "code_fingerprint", lambda: "0123456789ab")
    assert plan_module.load_costs(path, "cpu") == {}
    plan_module.save_costs(path, "cuda", {"other": StepCost(2.0, 1.0, 0.5)})  # the old code's cpu costs go
    assert json.loads(path.read_text()) == {"timed_by": plan_module._timing_code(), "cuda": {"other": [2.0, 1.0, 0.5]}}
    # The timing code itself (plan.py, outside the training fingerprint) and torch count too.
    monkeypatch.undo()
    copy = tmp_path / "plan.py"
    copy.write_text(Path(plan_module.__file__).read_text() + "\n# another way of timing\n")
    monkeypatch.setattr(plan_module, "__file__", str(copy))
    edited = plan_module._timing_code()
    monkeypatch.setattr(plan_module.torch, "__version__", "0.0.1")
    assert len({original, edited, plan_module._timing_code()}) == 3


def test_vgbench_plan_command(tmp_path, capsys):
    from vgbench.cli import main

    assert main(["plan", "--params", str(REPO / "params.yaml"), "--profile", "tiny", "--steps", "1",
                 "--results-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# vgbench plan: profile `tiny`, 13 cells" in out and "Measured on cpu:" in out
    assert "SLURM: 1 array task of at most 30 min" in out
    assert (tmp_path / "launch" / "step_costs.json").exists()


@pytest.mark.parametrize("content", [b"null", b"[1, 2]", b"\xff\xfe damaged", b'{"timed_by": '])
def test_a_damaged_step_cost_file_is_timed_again_not_a_traceback(tmp_path, content):
    import vgbench.plan as plan_module

    path = plan_module.costs_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert plan_module.load_costs(path, "cpu") == {}
    plan_module.save_costs(path, "cpu", {"shape": StepCost(1.0, 0.5, 0.25)})  # and replaced whole
    assert plan_module.load_costs(path, "cpu") == {"shape": StepCost(1.0, 0.5, 0.25)}


def test_the_plan_counts_only_this_profile_s_reused_step_costs(tiny_params, tmp_path):
    """Costs kept for other profiles' shapes are not "reused" by this one: the count is of its own shapes found."""
    import vgbench.plan as plan_module

    shapes = sorted({shape_key(cell) for cell in unique_stored(expand(tiny_params.active))})
    kept = {key: StepCost(0.01, 0.01, 0.01) for key in shapes[1:]}
    kept.update({f"another profile's shape {index}": StepCost(1.0, 1.0, 1.0) for index in range(5)})
    plan_module.save_costs(plan_module.costs_path(tmp_path), "cpu", kept)
    text = plan_main(tiny_params, steps=1, task_minutes=30, results_root=tmp_path)
    assert f"Step costs of {len(shapes) - 1} model shapes were reused" in text
    assert set(plan_module.load_costs(plan_module.costs_path(tmp_path), "cpu")) == set(kept) | {shapes[0]}


def test_the_plan_lists_twin_cells_in_their_block_and_counts_their_cost_once():
    """The default profile's DBN rows without pretraining are MLP networks (twins.py): at depth 20 the MLP
    block's, whose row lists them first and counts their groups, steps and hours; at depth 3 ones the MLP block
    does not list, which the DBN row counts."""
    cells = expand(load_params(REPO / "params.yaml", profile="default").active)
    trained = unique_stored(cells)
    twins = [cell for cell in cells if stored_as(cell).cell_id != cell.cell_id]
    assert len(twins) == 54 and len(trained) == len(cells) - 27
    estimates = _estimates(cells, 60.0)
    text = format_plan("default", cells, estimates, "cpu", None)
    assert text.startswith(f"# vgbench plan: profile `default`, {len(cells)} cells, {len(trained)} trained")
    rows = {(row[0], row[1]): row for row in _table_rows(text)}
    dbn = [cell for cell in cells if cell.family == "dbn"]
    assert rows[("dbn", "mnist1d")][2] == str(len(dbn))
    assert float(rows[("dbn", "mnist1d")][6]) == pytest.approx((len(dbn) - 27) * 60 / 3600, abs=5e-4)
    assert rows[("mlp", "mnist1d")][2] == str(sum(cell.family == "mlp" for cell in cells))
    assert rows[("**total**", "")][2] == str(len(cells))
    assert float(rows[("**total**", "")][6]) == pytest.approx(len(trained) * 60 / 3600, abs=5e-3)
    assert "dbn / mnist1d: 27 of its cells train another block's very network, once" in text


def test_a_ddp_profile_s_plan_counts_one_slurm_task_per_cell_group_as_the_launcher_does():
    """A DDP cell group runs as one array task (its ranks under srun); the plan packed them as if they were not."""
    import vgbench.plan as plan_module

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["tiny"].update(trainer={"devices": 2, "strategy": "ddp"})
    cells = expand(parse_params(raw, profile="tiny").active)
    groups = group(unique_stored(cells))

    def no_timings():
        raise AssertionError("a DDP plan needs no timings to pack")

    assert plan_module.slurm_tasks(groups, no_timings, 3600) == [[members] for members in groups]
    text = format_plan("tiny", cells, _estimates(cells, 1.0), "cpu", task_minutes=120)
    assert f"SLURM: {len(groups)} array tasks, one per cell group, as the slurm launcher runs a DDP group" in text
    assert "(nodes x processes per node: 1 x 2)" in text


@pytest.mark.parametrize("device, message", [
    ("foo", "'foo' is not a device; allowed: cpu, cuda, cuda:N"), ("mps", "'mps': vgbench plans for cpu or cuda"),
    ("cuda:7", "'cuda:7': torch sees"), ("cuda", "'cuda': torch sees")])
def test_plan_refuses_a_device_it_cannot_time_on(device, message):
    import argparse

    from vgbench.cli import _timing_device

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        _timing_device(device)


def test_a_bad_plan_device_exits_2_with_the_message_not_a_traceback():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "vgbench", "plan", "--device", "foo"], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 2 and "argument --device: 'foo' is not a device" in run.stderr
    assert "Traceback" not in run.stderr
