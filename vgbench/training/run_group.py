"""Train one cell group through Lightning and write each cell's result files: build, fit, summarize, write.

A group is the cells of one leaderboard row that differ only in seed and
learning rate (vgbench/groups.py); its K models train as one stacked network
(vgbench/models/stacked.py) in one Trainer, and every cell still gets its own
``grad_profile.json``, ``metrics.json`` and W&B run. A group of one runs the
same code, and a cell's result does not depend on its group
(tests/test_stacking.py). Rank 0 writes the files (``metrics.json`` last,
atomically) and owns the W&B runs; every rank trains. A diverging model is a
result, not an exception: its cell is written with ``failure: "diverged"``
and the others go on. With ``checkpoint_every`` a group saves its state as it
goes and a restarted one resumes (``vgbench/training/checkpoints.py``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment

from vgbench import atomic, cpu_kernels, results
from vgbench.cell_result import CellResult, GroupInfo, LaunchInfo
from vgbench.config import VGBENCH_TRAINER_SETTINGS, WandbSettings, milestone_epochs
from vgbench.data import DATASETS
from vgbench.data.store import StoredDataset, load, settings_hash
from vgbench.groups import group_id
from vgbench.matrix import CellSpec
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining.for_cell import PretrainingSettings, pretrain_into
from vgbench.probes.failure import failure_label, log10_ratio
from vgbench.probes.gradient_flow import GradientFlowProbe
from vgbench.probes.taps import ProbedModel
from vgbench.training import checkpoints
from vgbench.training.batches import loader
from vgbench.training.convergence import converged, late_improvement
from vgbench.tasks import TASKS, Task
from vgbench.training.module import TaskModule
from vgbench.training.wandb_run import finish_run, start_run

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")  # ours is intended
# On a GPU the fused RNN reads model k's slices of the stacked weights, which cuDNN copies into its own
# layout at every call: a known cost (bench/README.md), not something a user can act on.
warnings.filterwarnings("ignore", message=".*RNN module weights are not part of single contiguous chunk.*")
# Printed once per cell wherever SLURM is installed; a cell meant to run under srun is launched
# under srun (vgbench/launch/slurm.py), and one that is not does not want the hint.
warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


class InMemoryData(L.LightningDataModule):
    """Slices in-memory tensors into ``[K, B, ...]`` batches, each model in its own seed's order; shards
    them over DDP ranks."""

    def __init__(self, data: StoredDataset, batch_size: int, seeds: list[int]):
        super().__init__()
        self.data, self.batch_size, self.seeds = data, batch_size, seeds
        self._on_device: dict[str, dict[str, torch.Tensor]] = {}

    def _tensors(self, split: str) -> dict[str, torch.Tensor]:
        """The split, on the training device: on a GPU copied there once, so that each step slices its
        batch on the device (the data sets are small next to a GPU's memory; CIFAR-10 is 0.6 GB)."""
        device = self.trainer.strategy.root_device
        if device.type == "cpu":
            return self.data.splits[split]
        if split not in self._on_device:
            self._on_device[split] = {key: t.to(device) for key, t in self.data.splits[split].items()}
        return self._on_device[split]

    def _loader(self, split: str, shuffle: bool, least_per_rank: int = 1):
        tensors = self._tensors(split)
        return loader(tensors["x"], tensors["y"], self.batch_size, shuffle, self.seeds,
                      self.trainer.global_rank, self.trainer.world_size, least_per_rank)

    def train_dataloader(self):
        return self._loader("train", shuffle=True, least_per_rank=2)  # no batch-norm step on one sample

    def val_dataloader(self):
        return self._loader("validation", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)


def _epochs_to_target(history: list[dict], task: Task, target: float) -> int | None:
    """1-based count of epochs until the validation metric first reached ``target``."""
    for row in history:
        value = row.get(f"val_{task.metric}", float("nan"))
        if value == value and task.reached(value, target):
            return row["epoch"] + 1
    return None


def _best(values: list[float], task: Task) -> float:
    finite = [v for v in values if v == v]
    if not finite:
        return float("nan")
    return max(finite) if task.higher_is_better else min(finite)


def build_trainer(cell: CellSpec, callbacks) -> L.Trainer:
    lightning_settings = {key: value for key, value in cell.trainer.items() if key not in VGBENCH_TRAINER_SETTINGS}
    # Under SLURM, requeueing is submitit's job (vgbench/launch/slurm.py): Lightning's own
    # auto-requeue on SIGUSR1 would fight it.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Trainer(
        max_epochs=cell.training["max_epochs"],
        **lightning_settings,
        # Clipping is per model (TaskModule.configure_gradient_clipping), not Lightning's over the whole stack.
        callbacks=callbacks, logger=False, plugins=plugins,
        use_distributed_sampler=False,  # batches.IndexBatchSampler shards by itself
        enable_checkpointing=any(isinstance(c, checkpoints.EpochCheckpoint) for c in callbacks),
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )


@dataclass
class GroupRun:
    """One cell group, built and ready to fit: the seam between build, fit, summarize and write."""

    cells: list[CellSpec]
    group_id: str
    data: StoredDataset
    task: Task
    model: ProbedModel
    module: TaskModule
    probe: GradientFlowProbe
    trainer: L.Trainer
    datamodule: InMemoryData
    runs: list  # a W&B run per cell, or None each
    clock: checkpoints.Clock
    checkpoint: checkpoints.EpochCheckpoint | None
    resume_from: Path | None
    pretraining: list[dict | None]


def check_group(cells: list[CellSpec]) -> None:
    """Refuses cells that cannot share one stacked network (vgbench/groups.py says which can)."""
    from vgbench.groups import row_key

    if len({row_key(cell) for cell in cells}) != 1:
        raise ValueError(f"cells {[cell.cell_id for cell in cells]} differ in more than seed and learning rate; "
                         f"they cannot train as one group")
    if len({cell.cell_id for cell in cells}) != len(cells):
        raise ValueError("a group lists the same cell twice")


def build(cells: list[CellSpec], data: StoredDataset, results_root: Path, wandb: WandbSettings,
          checkpoint_every: int | None = None, profile: str | None = None) -> GroupRun:
    """Build the stacked model (pretraining each model if the recipe says so), the module, probes and Trainer.

    With ``checkpoint_every``, the group saves its state every that many epochs and,
    if a checkpoint of an earlier, interrupted run of the same group exists, resumes from it.
    """
    check_group(cells)
    clock = checkpoints.Clock()
    first = cells[0]
    if first.trainer.get("threads"):
        torch.set_num_threads(first.trainer["threads"])
    cpu_kernels.check(first.trainer.get("cpu_capability"))
    seeds = [cell.seed for cell in cells]
    L.seed_everything(seeds[0], workers=True, verbose=False)  # nothing draws from it; kept for third parties
    recipe = Recipe(**first.recipe)
    family = FAMILIES.get(first.family)
    task = TASKS.get(data.task)
    io = ModelIO(data.input_shape, task.num_outputs(data.num_classes), task.per_step)
    model = family.build(io, first.depth, recipe, family.hparams.model_validate(first.model), seeds)
    pretraining: list[dict | None] = [None] * len(cells)
    if recipe.pretrain == "rbm":  # before the init probe, which then measures the pretrained stack
        settings = PretrainingSettings.model_validate(first.pretrain)
        pretraining = [pretrain_into(model, settings, data, cell.seed, cell.dataset_settings,
                                     results_root / "pretrained", k) for k, cell in enumerate(cells)]
    training = first.training
    milestones = milestone_epochs(training["lr_milestones"], training["max_epochs"])
    module = TaskModule(model, task, [cell.learning_rate for cell in cells], training["optimizer"],
                        training["momentum"], training["weight_decay"], milestones, training["augment"],
                        recipe.grad_clip, recipe.grad_clip_value, augment_seeds=seeds)
    train = data.splits["train"]
    init_size = first.probes["init_batch_size"]
    probe = GradientFlowProbe((train["x"][:init_size], train["y"][:init_size]), first.probes["interval_steps"],
                              len(cells), pretrained=recipe.pretrain != "none")
    callbacks: list = [probe]
    identifier = group_id(cells)
    checkpoint, resume_from = None, None
    if checkpoint_every:
        checkpoint = checkpoints.EpochCheckpoint(checkpoints.checkpoint_dir(results_root, identifier),
                                                 checkpoint_every, clock)
        callbacks.append(checkpoint)
        resume_from = checkpoints.latest(results_root, identifier)
    trainer = build_trainer(first, callbacks)
    runs = [None] * len(cells)
    if trainer.is_global_zero:
        runs = [start_run(cell, wandb, group_info(cells, k).model_dump(), profile) for k, cell in enumerate(cells)]
    module.runs_per_model = runs
    datamodule = InMemoryData(data, training["batch_size"], seeds)
    return GroupRun(cells, identifier, data, task, model, module, probe, trainer, datamodule, runs, clock,
                    checkpoint, resume_from, pretraining)


def group_info(cells: list[CellSpec], k: int) -> GroupInfo:
    return GroupInfo(id=group_id(cells), size=len(cells), index=k, cells=[cell.cell_id for cell in cells])


def fit(run: GroupRun) -> None:
    """Train (from the checkpoint, if any), then test unless every model diverged."""
    run.clock.fit_started = time.perf_counter()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.resume_from, weights_only=True)
    run.clock.fit_ended = time.perf_counter()
    if run.module.active.any():
        run.trainer.test(run.module, datamodule=run.datamodule, verbose=False)


def summarize(run: GroupRun, launch: LaunchInfo | None = None) -> list[CellResult] | None:
    """Each cell's ``CellResult`` on rank 0 (None on other ranks).

    Time is the group's: ``fit_seconds`` and ``wall_seconds`` are the group's divided
    by its size (the cost of one cell in it), and ``group`` says how many shared it.
    """
    if run.trainer.global_rank != 0:
        return None
    if launch is not None and run.checkpoint is not None and run.checkpoint.resumed_from_epoch is not None:
        launch = launch.model_copy(update={"resumed_from_epoch": run.checkpoint.resumed_from_epoch})
    size = len(run.cells)
    fit_seconds, wall_seconds = run.clock.fit() / size, run.clock.wall() / size
    probe_seconds = run.probe.total_seconds(run.module) / size
    environment = results.environment()
    return [_summarize_cell(run, k, launch, fit_seconds, wall_seconds, probe_seconds, environment)
            for k in range(size)]


def _summarize_cell(run: GroupRun, k: int, launch: LaunchInfo | None, fit_seconds: float, wall_seconds: float,
                    probe_seconds: float, environment: dict) -> CellResult:
    cell, task, module = run.cells[k], run.task, run.module
    diverged_at_step = module.diverged_at_step[k]
    diverged = diverged_at_step is not None
    test = module.test_metrics[k] if not diverged else {"loss": float("nan"), task.metric: float("nan")}
    baseline = run.data.baseline_metric
    loss_fraction = cell.probes["trainable_loss_fraction"]
    trainable = not diverged and task.trainable(test[task.metric], baseline, cell.probes["trainable_margin"],
                                                loss_fraction)
    target = task.target(baseline, cell.training["target_accuracy"], loss_fraction)
    records = run.probe.records[k]
    init_record, last_record = records[0], records[-1]
    history = module.history(k)
    last = history[-1] if history else {}
    pretraining = run.pretraining[k]
    improvement = (math.nan if diverged else
                   late_improvement([row.get(f"val_{task.metric}", math.nan) for row in history],
                                    task.higher_is_better, baseline))
    finished = converged(improvement, cell.training["convergence_tolerance"])
    return CellResult(
        cell_id=cell.cell_id,
        cell=cell.as_dict(),
        status="diverged" if diverged else "completed",
        failure=failure_label(
            diverged=diverged, trainable=trainable, converged=finished, init_record=init_record,
            last_record=last_record,
            vanished_log10_ratio=cell.probes["vanished_log10_ratio"],
            exploded_log10_ratio=cell.probes["exploded_log10_ratio"],
            dead_fraction=cell.probes["dead_fraction"]),
        diverged_at_step=diverged_at_step,
        trainable=trainable,
        task=task.name,
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        baseline_metric=baseline,
        test_metric=test[task.metric],
        test=test,
        val_metric=last.get(f"val_{task.metric}", float("nan")),
        best_val_metric=_best([row.get(f"val_{task.metric}", float("nan")) for row in history], task),
        final_train_loss=last.get("train_loss", float("nan")),
        epochs_to_target=_epochs_to_target(history, task, target),
        late_val_improvement=improvement,
        converged=finished,
        target_metric=target,
        pretraining={key: v for key, v in pretraining.items() if key != "stats"} if pretraining else None,
        init_log10_dL_dh_first_last=log10_ratio(init_record["dL_dh_first_last_ratio"]),
        theory_log10_dL_dh_first_last=init_record["theory_log10_dL_dh_first_last"],
        theory=init_record["theory"],
        init_log10_weight_grad_first_last=log10_ratio(init_record["weight_grad_first_last_ratio"]),
        final_log10_dL_dh_first_last=log10_ratio(last_record["dL_dh_first_last_ratio"]),
        history=history,
        world_size=run.trainer.world_size,
        num_parameters=sum(p[k].numel() for p in run.model.parameters() if p.requires_grad),
        steps=diverged_at_step + 1 if diverged else run.trainer.global_step,
        fit_seconds=fit_seconds,
        wall_seconds=wall_seconds,
        probe_seconds=probe_seconds,
        probe_overhead_fraction=probe_seconds / fit_seconds if fit_seconds else float("nan"),
        environment=environment,
        launch=launch,
        group=group_info(run.cells, k),
        wandb={"run_id": run.runs[k].id, "run_dir": run.runs[k].dir} if run.runs[k] is not None else None,
    )


def write(run: GroupRun, results_: list[CellResult], results_root: Path) -> None:
    """Each cell's files (metrics.json last: its presence marks the cell done), then W&B, then no checkpoint."""
    for k, (cell, result) in enumerate(zip(run.cells, results_)):
        folder = results.cell_dir(results_root, cell.cell_id)
        profile = {"cell_id": cell.cell_id, "dL_dh_of": run.module.task.probed_loss, "records": run.probe.records[k]}
        atomic.write_json(folder / "grad_profile.json", profile)
        if run.pretraining[k] is not None:
            atomic.write_json(folder / "pretraining.json", {"cell_id": cell.cell_id, **run.pretraining[k]})
        result.write(folder)
        results.clear_error(results_root, cell.cell_id)
        if run.runs[k] is not None:
            finish_run(run.runs[k], result.model_dump(), run.probe.records[k][0], run.pretraining[k])
    checkpoints.remove(results_root, run.group_id)


def run_group(cells: list[CellSpec], data: StoredDataset, results_root: Path, wandb: WandbSettings,
              launch: LaunchInfo | None = None, checkpoint_every: int | None = None,
              profile: str | None = None) -> list[CellResult] | None:
    """Train ``cells`` (one group) and write their files; their ``CellResult``s on rank 0 (None on other ranks).
    ``profile`` names the W&B group (``<profile>/<family>``); W&B runs need it."""
    run = build(cells, data, results_root, wandb, checkpoint_every, profile)
    fit(run)
    group_results = summarize(run, launch)
    if group_results is not None:
        write(run, group_results, results_root)
    return group_results


def run_cell(cell: CellSpec, data: StoredDataset, results_root: Path, wandb: WandbSettings,
             launch: LaunchInfo | None = None, checkpoint_every: int | None = None,
             profile: str | None = None) -> CellResult | None:
    """A group of one: ``cell`` trained alone."""
    group_results = run_group([cell], data, results_root, wandb, launch, checkpoint_every, profile)
    return group_results[0] if group_results is not None else None


def data_for(cell: CellSpec, data_root: Path, cache: dict) -> StoredDataset:
    """Load each stored data set once per process (cells share it)."""
    spec = DATASETS.get(cell.dataset)
    settings = spec.settings.model_validate(cell.dataset_settings)
    length = spec.length_for(cell.depth)
    key = (cell.dataset, length, settings_hash(settings))
    if key not in cache:
        cache[key] = load(cell.dataset, settings, data_root, length)
    return cache[key]
