"""Training: in-memory batching, determinism, divergence as a result, DDP on 2 CPU processes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from vgbench.config import WandbSettings
from vgbench.matrix import expand
from vgbench.remedies import REMEDIES
from vgbench.training.batches import IndexBatchSampler, loader
from vgbench.training.run_group import run_cell

NO_WANDB = WandbSettings(mode="disabled")


def test_batches_are_tensor_slices_covering_each_epoch_once():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = list(loader(x, y, batch_size=4, shuffle=True, seeds=[3, 4]))  # two models: [K, B, ...]
    assert [tuple(b[1].shape) for b in batches] == [(2, 4), (2, 4), (2, 2)]
    seen = torch.cat([b[1] for b in batches], dim=1)
    for k in range(2):  # every model sees every sample once per epoch
        assert sorted(seen[k].tolist()) == list(range(10))
    assert all(torch.equal(bx.squeeze(-1), by.float()) for bx, by in batches)
    # Each model reads its own seed's order: the one a model of that seed alone would read.
    alone = torch.cat([b[1] for b in loader(x, y, batch_size=4, shuffle=True, seeds=[4])], dim=1)
    assert torch.equal(seen[1:], alone) and not torch.equal(seen[0], seen[1])


def test_shuffle_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = IndexBatchSampler(20, 5, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return torch.cat(list(sampler)).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert IndexBatchSampler(20, 5, shuffle=False, seed=0).__iter__().__next__().tolist() == [0, 1, 2, 3, 4]


def test_ranks_partition_every_global_batch():
    world = 3
    per_rank = []
    for rank in range(world):
        sampler = IndexBatchSampler(23, 4, shuffle=True, seed=1, rank=rank, world_size=world)
        sampler.set_epoch(2)
        per_rank.append([b.tolist() for b in sampler])
        assert len(per_rank[-1]) == len(sampler)
    assert len({len(batches) for batches in per_rank}) == 1  # same number of steps on every rank
    everything = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert everything == list(range(23))


def test_a_training_epoch_leaves_out_a_last_batch_too_small_for_batch_norm():
    """A last training chunk of fewer than 2 samples per rank is left out (batch norm cannot train on
    one sample); evaluation keeps every sample, and a rank's share of 1 there is fine."""
    def sizes(size, batch, rank=0, world=1, least=1):
        return [len(b) for b in IndexBatchSampler(size, batch, True, 0, rank, world, least)]

    assert sizes(9, 4, least=2) == [4, 4] and sizes(10, 4, least=2) == [4, 4, 2] and sizes(9, 4) == [4, 4, 1]
    assert [sizes(11, 4, rank, 2, least=2) for rank in (0, 1)] == [[4], [4]]  # 3 left: 2 + 1
    assert [sizes(11, 4, rank, 2) for rank in (0, 1)] == [[4, 2], [4, 1]]
    assert [sizes(12, 4, rank, 2, least=2) for rank in (0, 1)] == [[4, 2], [4, 2]]
    assert all(len(IndexBatchSampler(n, 4, True, 0, 0, 2, 2)) == len(sizes(n, 4, 0, 2, 2)) for n in range(30))


def test_a_batch_norm_cell_trains_where_the_last_batch_would_hold_one_sample(tiny_params, tiny_data, tmp_path):
    n_train = len(tiny_data.splits["train"]["y"])
    batch = next(b for b in range(n_train // 9, n_train) if n_train % b == 1)
    he_relu = _cell(tiny_params, "he_relu", 2)
    cell = dataclasses.replace(he_relu, remedy="batchnorm", recipe=REMEDIES.get("batchnorm").recipe("mlp").as_dict(),
                               training={**he_relu.training, "batch_size": batch, "max_epochs": 1})
    metrics = run_cell(cell, tiny_data, tmp_path, NO_WANDB)
    assert metrics.status == "completed" and metrics.steps == n_train // batch
    assert math.isfinite(metrics.test_metric) and metrics.test_metric > 0.1


def _cell(tiny_params, remedy, depth, **changes):
    cell = next(c for c in expand(tiny_params.active)
                if c.family == "mlp" and c.remedy == remedy and c.depth == depth)
    return dataclasses.replace(cell, **changes)


def test_rerunning_a_cell_gives_identical_metrics(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "he_relu", 6)
    first = run_cell(cell, tiny_data, tmp_path / "a", NO_WANDB)
    second = run_cell(cell, tiny_data, tmp_path / "b", NO_WANDB)
    for key in ("test_metric", "test", "history", "init_log10_dL_dh_first_last", "steps"):
        assert getattr(first, key) == getattr(second, key), key
    profile = [json.loads((tmp_path / run / "cells" / cell.cell_id / "grad_profile.json").read_text())
               for run in ("a", "b")]
    assert profile[0] == profile[1]
    other_seed = run_cell(dataclasses.replace(cell, seed=1), tiny_data, tmp_path / "c", NO_WANDB)
    assert other_seed.history != first.history


def test_a_cell_learns_and_records_everything(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "he_relu", 2)
    metrics = run_cell(cell, tiny_data, tmp_path, NO_WANDB)
    on_disk = json.loads((tmp_path / "cells" / cell.cell_id / "metrics.json").read_text())
    assert on_disk["test_metric"] == metrics.test_metric > 0.25  # chance is 0.1
    assert on_disk["trainable"] and on_disk["failure"] is None and on_disk["status"] == "completed"
    assert [row["epoch"] for row in on_disk["history"]] == list(range(cell.training["max_epochs"]))
    assert on_disk["history"][-1]["train_loss"] < on_disk["history"][0]["train_loss"]
    assert on_disk["world_size"] == 1 and on_disk["cell"] == cell.as_dict()
    assert on_disk["environment"]["torch"] == torch.__version__
    assert on_disk["steps"] == cell.training["max_epochs"] * -(-len(tiny_data.splits["train"]["y"]) //
                                                                cell.training["batch_size"])


def test_a_diverging_cell_is_a_result_not_a_crash(tiny_params, tiny_data, tmp_path):
    cell = _cell(tiny_params, "he_relu", 6, learning_rate=1e6)
    metrics = run_cell(cell, tiny_data, tmp_path, NO_WANDB)
    assert metrics.status == "diverged" and metrics.failure == "diverged"
    assert metrics.diverged_at_step is not None and metrics.steps == metrics.diverged_at_step + 1
    assert metrics.trainable is False and math.isnan(metrics.test_metric)
    text = (tmp_path / "cells" / cell.cell_id / "metrics.json").read_text()
    assert json.loads(text)["failure"] == "diverged"


def test_cli_train_skips_done_cells(tiny_params, tiny_data_root, tmp_path):
    args = [sys.executable, "-m", "vgbench", "train", "--profile", "tiny", "--only", "small_init-mnist1d-d2",
            "--params", str(REPO / "params.yaml"), "--data-root", str(tiny_data_root),
            "--results-root", str(tmp_path)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 to train" in first.stdout
    [metrics] = (tmp_path / "cells").glob("*/metrics.json")
    before = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    second = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1 cells, 1 done" in second.stdout and "0 to train" in second.stdout
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before  # not trained, not rewritten


def test_ddp_on_two_cpu_processes(tiny_params, tiny_data_root, tmp_path):
    """Lightning's own DDP launcher (strategy=ddp, gloo): one result, written once, world size 2."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "tiny"
    raw["wandb"]["mode"] = "disabled"
    raw["profiles"]["tiny"]["trainer"] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "vgbench", "train", "--only", "he_relu-mnist1d-d2", "--params", str(params),
         "--data-root", str(tiny_data_root), "--results-root", str(results)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    cells = list((results / "cells").iterdir())
    assert len(cells) == 1
    metrics = json.loads((cells[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert completed.stdout.count("[1/1]") == 1  # only rank 0 reports and writes
    # Each rank takes its share of a global batch of 2 x batch_size samples.
    n_train = json.loads((tiny_data_root / "mnist1d" / "manifest.json").read_text())["sizes"]["train"]
    training = raw["profiles"]["tiny"]["training"]
    assert metrics["steps"] == training["max_epochs"] * -(-n_train // (2 * training["batch_size"]))
    profile = json.loads((cells[0] / "grad_profile.json").read_text())["records"]
    assert profile[0]["phase"] == "init" and len(profile[0]["dL_dh_norm"]) == 2
    assert all(n > 0 and n == n for r in profile for n in r["dL_dh_norm"])  # reduced, finite, non-zero
    assert 0.1 < metrics["test_metric"] <= 1.0
    assert list(cells[0].glob(".*")) == []  # no temporary files left behind


def assert_windows_of_the_padded_images(x: torch.Tensor, out: torch.Tensor) -> None:
    """Each image of ``out`` is a window of its image of ``x`` padded by PAD, maybe flipped left-right, and
    the batch holds at least one flip and one shifted window (a batch of 16 has both but by chance 2^-16)."""
    from vgbench.training.augment import PAD

    assert out.shape == x.shape
    x, out = x.cpu(), out.cpu()
    height, width = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    seen_flip = seen_shift = False
    for i in range(len(x)):
        windows = [(dy, dx, flip) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1) for flip in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if flip else w)(
                       padded[i, :, dy:dy + height, dx:dx + width]))]
        assert windows, i
        seen_flip |= any(flip for *_, flip in windows)
        seen_shift |= any((dy, dx) != (PAD, PAD) for dy, dx, _ in windows)
    assert seen_flip and seen_shift


def test_pad_crop_flip_takes_a_shifted_maybe_flipped_window_of_the_padded_image():
    from vgbench.training.augment import pad_crop_flip

    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 6)
    assert_windows_of_the_padded_images(x, pad_crop_flip(x))
    # With a generator of its own (one per model in training) the draw is that generator's alone.
    first = pad_crop_flip(x, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(first, pad_crop_flip(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, pad_crop_flip(x, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="needs image batches"):
        pad_crop_flip(torch.randn(4, 40))


def assert_augmentation_resumes_where_it_stopped(device: str) -> None:
    """A module restored from a checkpoint (as Lightning restores it: on the CPU, before moving it to the
    device) draws the same augmentation on its next batch as the module that saved it. Its generators are made
    on the batch's device at that batch: on a GPU the saved states are CUDA generators' and fit no CPU one."""
    from vgbench.models import FAMILIES, ModelIO
    from vgbench.models.recipe import Recipe
    from vgbench.training.module import TaskModule

    family = FAMILIES.get("resnet")

    def module() -> TaskModule:
        model = family.build(ModelIO((3, 8, 8), 10), 8, Recipe(activation="relu", init="he"),
                             family.hparams(width=4), [0, 1])
        return TaskModule(model, "classification", [0.1, 0.1], augment="pad_crop_flip", augment_seeds=[3, 4])

    x = torch.randn(2, 16, 3, 8, 8, device=device)
    saving = module().to(device)
    for _ in range(3):  # some batches drawn before the checkpoint
        saving._augmented(x)
    checkpoint: dict = {}
    saving.on_save_checkpoint(checkpoint)
    restored = module()
    restored.on_load_checkpoint(checkpoint)  # on the CPU, as Lightning calls it
    restored.to(device)
    resumed = restored._augmented(x)
    assert torch.equal(resumed, saving._augmented(x))
    assert all(g.device == x.device for g in restored._augment_generators)
    assert not torch.equal(module().to(device)._augmented(x), resumed)  # a fresh module draws otherwise
    again: dict = {}
    restored.on_save_checkpoint(again)  # and it saves where it now stands
    assert all(torch.equal(a, b) for a, b in zip(again["vgbench"]["augment_generators"],
                                                 [g.get_state() for g in saving._augment_generators]))


def test_augmentation_resumes_where_it_stopped():
    assert_augmentation_resumes_where_it_stopped("cpu")


def test_lr_milestones_divide_the_rate_by_ten():
    from vgbench.models import FAMILIES, ModelIO
    from vgbench.models.recipe import Recipe
    from vgbench.training.module import TaskModule

    from vgbench.training.stacked_optim import StackedSGD

    entry = FAMILIES.get("mlp")
    model = entry.build(ModelIO((40,), 10), 2, Recipe(), entry.hparams(width=8), seeds=(0, 1))
    config = TaskModule(model, "classification", [0.1, 0.3], lr_milestones=(2, 3)).configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(4):
        # The param group's lr is the factor the schedule multiplies; each model's rate is its own times it.
        rates.append((optimizer.rates * optimizer.param_groups[0]["lr"]).tolist())
        optimizer.step()
        schedule.step()
    assert rates == [pytest.approx([0.1, 0.3]), pytest.approx([0.1, 0.3]), pytest.approx([0.01, 0.03]),
                     pytest.approx([0.001, 0.003])]
    assert isinstance(TaskModule(model, "classification", [0.1, 0.3]).configure_optimizers(), StackedSGD)
    with pytest.raises(ValueError, match="1 learning rates for a stack of 2 models"):
        TaskModule(model, "classification", [0.1])


def test_trainer_threads_pins_torch_threads_and_is_recorded(tiny_params, tiny_data, tmp_path):
    before = torch.get_num_threads()
    cell = _cell(tiny_params, "he_relu", 2)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "threads": 1})
    try:
        torch.set_num_threads(2)  # so that the pin is seen, whatever this process started with
        assert torch.get_num_threads() == 2
        metrics = run_cell(cell, tiny_data, tmp_path, NO_WANDB)
        assert torch.get_num_threads() == 1
        assert metrics.environment["torch_threads"] == 1 and metrics.cell["trainer"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_result_records_the_cpu_and_the_instruction_set_torch_ran_on(tiny_params, tiny_data, tmp_path):
    """Two virtual machines may both call their CPU "AMD EPYC" and still round differently (2026-12-01: another
    generation, AVX2 only, moved 40 of the README's table lines): the result names the CPU's family and model
    and the instruction set torch's kernels dispatched to, which ATEN_CPU_CAPABILITY can lower."""
    from pathlib import Path

    metrics = run_cell(_cell(tiny_params, "he_relu", 2), tiny_data, tmp_path, NO_WANDB)
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first.splitlines()
                                                            if ":" in line)}
    assert metrics.environment["cpu_id"] == (f"{fields['vendor_id']} family {fields['cpu family']} model "
                                             f"{fields['model']} stepping {fields['stepping']}")
    assert metrics.environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    lowered = subprocess.run([sys.executable, "-c", "from vgbench import results; "
                              "print(results.environment()['cpu_capability'])"], capture_output=True, text=True,
                             env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, check=True)
    assert lowered.stdout.strip() == "DEFAULT"


def assert_a_frozen_model_stays_and_the_others_step_as_if_alone(name: str, device: str) -> None:
    """StackedOptimizer: model 1 frozen (its gradient non-finite) is left exactly as it was, weights, moments
    and Adam's step count, while models 0 and 2 take the very step they take with nobody frozen."""
    from vgbench.training.stacked_optim import OPTIMIZERS

    torch.manual_seed(0)
    start, grads = torch.randn(3, 4, 5, device=device), [torch.randn(3, 4, 5, device=device) for _ in range(3)]

    def train(freeze_at: int | None):
        param = torch.nn.Parameter(start.clone())
        optimizer = OPTIMIZERS[name]([param], [0.1, 0.01, 0.001], weight_decay=0.01)
        snapshot = None
        for step, grad in enumerate(grads):
            param.grad = grad.clone()
            if freeze_at is not None and step >= freeze_at:
                param.grad[1] = float("nan")
                optimizer.active[1] = False
            if step == freeze_at:
                snapshot = [t.clone() for t in (param.detach(), *optimizer.state[param].values())]
            optimizer.step()
        return param.detach(), optimizer.state[param], snapshot

    alone, alone_state, _ = train(None)
    frozen, frozen_state, snapshot = train(freeze_at=1)
    assert torch.equal(frozen[[0, 2]], alone[[0, 2]])
    for key in alone_state:
        assert torch.equal(frozen_state[key][[0, 2]], alone_state[key][[0, 2]]), key
    for before, after in zip(snapshot, (frozen, *frozen_state.values())):
        assert torch.equal(after[1], before[1])
    assert not torch.equal(frozen[1], alone[1])  # it did stop


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_frozen_model_keeps_its_weights_and_moments_and_the_others_step_as_if_alone(name):
    assert_a_frozen_model_stays_and_the_others_step_as_if_alone(name, "cpu")  # on a GPU: tests/test_gpu.py
