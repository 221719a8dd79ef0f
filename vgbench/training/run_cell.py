"""Train one cell through Lightning and write its result files: build, fit, summarize, write.

Rank 0 writes ``grad_profile.json`` (and, for cells that pretrain,
``pretraining.json``), then the ``CellResult`` as ``metrics.json``, atomically,
and owns the W&B run; every rank trains. A diverging cell is a result, not an
exception: it is written with ``failure: "diverged"`` and the matrix goes on.
With ``checkpoint_every`` a cell saves its state as it goes and a restarted one
resumes (``vgbench/training/checkpoints.py``).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from vgbench import atomic, results
from vgbench.cell_result import CellResult, LaunchInfo
from vgbench.config import WandbSettings
from vgbench.data import DATASETS
from vgbench.data.store import StoredDataset, load, settings_hash
from vgbench.matrix import CellSpec
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining.for_cell import PretrainingSettings, pretrain_into
from vgbench.probes.failure import failure_label, log10_ratio
from vgbench.probes.gradient_flow import GradientFlowProbe
from vgbench.probes.taps import ProbedModel
from vgbench.training import checkpoints
from vgbench.training.batches import loader
from vgbench.tasks import TASKS, Task
from vgbench.training.module import TaskModule
from vgbench.training.wandb_run import finish_run, make_logger

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")  # ours is intended
# Printed once per cell wherever SLURM is installed; a cell meant to run under srun is launched
# under srun (vgbench/launch/slurm.py), and one that is not does not want the hint.
warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


class InMemoryData(L.LightningDataModule):
    """Slices in-memory tensors into batches; shards them over DDP ranks."""

    def __init__(self, data: StoredDataset, batch_size: int, seed: int):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def _loader(self, split: str, shuffle: bool):
        tensors = self.data.splits[split]
        return loader(tensors["x"], tensors["y"], self.batch_size, shuffle, self.seed,
                      self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

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


def build_trainer(cell: CellSpec, recipe: Recipe, callbacks, logger) -> L.Trainer:
    clip = recipe.grad_clip != "none"
    lightning_settings = {key: value for key, value in cell.trainer.items() if key != "threads"}
    # Under SLURM, requeueing is submitit's job (vgbench/launch/slurm.py): Lightning's own
    # auto-requeue on SIGUSR1 would fight it.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Trainer(
        max_epochs=cell.training["max_epochs"],
        **lightning_settings,
        gradient_clip_val=recipe.grad_clip_value if clip else None,
        gradient_clip_algorithm=recipe.grad_clip if clip else None,
        callbacks=callbacks, logger=logger, plugins=plugins,
        use_distributed_sampler=False,  # batches.IndexBatchSampler shards by itself
        enable_checkpointing=any(isinstance(c, checkpoints.EpochCheckpoint) for c in callbacks),
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )


@dataclass
class CellRun:
    """One cell, built and ready to fit: the seam between build, fit, summarize and write."""

    cell: CellSpec
    data: StoredDataset
    task: Task
    model: ProbedModel
    module: TaskModule
    probe: GradientFlowProbe
    trainer: L.Trainer
    datamodule: InMemoryData
    logger: WandbLogger | None
    clock: checkpoints.Clock
    checkpoint: checkpoints.EpochCheckpoint | None
    resume_from: Path | None
    pretraining: dict | None


def build(cell: CellSpec, data: StoredDataset, results_root: Path, wandb: WandbSettings,
          checkpoint_every: int | None = None) -> CellRun:
    """Seed, build the model (pretraining it if the recipe says so), the module, probes and Trainer.

    With ``checkpoint_every``, the cell saves its state every that many epochs and,
    if a checkpoint of an earlier, interrupted run exists, resumes from it.
    """
    clock = checkpoints.Clock()
    if cell.trainer.get("threads"):
        torch.set_num_threads(cell.trainer["threads"])
    L.seed_everything(cell.seed, workers=True, verbose=False)
    recipe = Recipe(**cell.recipe)
    family = FAMILIES.get(cell.family)
    task = TASKS.get(data.task)
    io = ModelIO(data.input_shape, task.num_outputs(data.num_classes), task.per_step)
    model = family.build(io, cell.depth, recipe, family.hparams.model_validate(cell.model))
    pretraining = None
    if recipe.pretrain == "rbm":  # before the init probe, which then measures the pretrained stack
        pretraining = pretrain_into(model, PretrainingSettings.model_validate(cell.pretrain), data, cell.seed,
                                    cell.dataset_settings, results_root / "pretrained")
    training = cell.training
    milestones = tuple(round(f * training["max_epochs"]) for f in training["lr_milestones"])
    module = TaskModule(model, task, cell.learning_rate, training["optimizer"], training["momentum"],
                        training["weight_decay"], milestones, training["augment"])
    train = data.splits["train"]
    init_size = cell.probes["init_batch_size"]
    probe = GradientFlowProbe((train["x"][:init_size], train["y"][:init_size]), cell.probes["interval_steps"])
    callbacks: list = [probe]
    checkpoint, resume_from = None, None
    if checkpoint_every:
        checkpoint = checkpoints.EpochCheckpoint(checkpoints.checkpoint_dir(results_root, cell.cell_id),
                                                 checkpoint_every, clock)
        callbacks.append(checkpoint)
        resume_from = checkpoints.latest(results_root, cell.cell_id)
    logger = make_logger(cell, wandb)
    trainer = build_trainer(cell, recipe, callbacks, logger or False)
    datamodule = InMemoryData(data, cell.training["batch_size"], cell.seed)
    return CellRun(cell, data, task, model, module, probe, trainer, datamodule, logger, clock, checkpoint,
                   resume_from, pretraining)


def fit(run: CellRun) -> None:
    """Train (from the checkpoint, if any), then test unless the cell diverged."""
    if run.logger is not None:
        run.logger.experiment  # start the W&B run now, so wandb.init is not counted as fit time
    run.clock.fit_started = time.perf_counter()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.resume_from, weights_only=True)
    run.clock.fit_ended = time.perf_counter()
    if run.module.diverged_at_step is None:
        run.trainer.test(run.module, datamodule=run.datamodule, verbose=False)


def summarize(run: CellRun, launch: LaunchInfo | None = None) -> CellResult | None:
    """The cell's ``CellResult`` on rank 0 (None on other ranks)."""
    cell, task, module, trainer, probe = run.cell, run.task, run.module, run.trainer, run.probe
    if trainer.global_rank != 0:
        return None
    diverged = module.diverged_at_step is not None
    test = module.test_metrics if not diverged else {"loss": float("nan"), task.metric: float("nan")}
    baseline = run.data.baseline_metric
    loss_fraction = cell.probes["trainable_loss_fraction"]
    trainable = not diverged and task.trainable(test[task.metric], baseline, cell.probes["trainable_margin"],
                                                loss_fraction)
    target = task.target(baseline, cell.training["target_accuracy"], loss_fraction)
    init_record, last_record = probe.records[0], probe.records[-1]
    probe_seconds = probe.total_seconds(module)
    fit_seconds = run.clock.fit()
    history = module.history
    last = history[-1] if history else {}
    if launch is not None and run.checkpoint is not None and run.checkpoint.resumed_from_epoch is not None:
        launch = launch.model_copy(update={"resumed_from_epoch": run.checkpoint.resumed_from_epoch})
    return CellResult(
        cell_id=cell.cell_id,
        cell=cell.as_dict(),
        status="diverged" if diverged else "completed",
        failure=failure_label(
            diverged=diverged, trainable=trainable, init_record=init_record, last_record=last_record,
            vanished_log10_ratio=cell.probes["vanished_log10_ratio"],
            exploded_log10_ratio=cell.probes["exploded_log10_ratio"],
            dead_fraction=cell.probes["dead_fraction"]),
        diverged_at_step=module.diverged_at_step,
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
        target_metric=target,
        pretraining={k: v for k, v in run.pretraining.items() if k != "stats"} if run.pretraining else None,
        init_log10_dL_dh_first_last=log10_ratio(init_record["dL_dh_first_last_ratio"]),
        init_log10_weight_grad_first_last=log10_ratio(init_record["weight_grad_first_last_ratio"]),
        final_log10_dL_dh_first_last=log10_ratio(last_record["dL_dh_first_last_ratio"]),
        history=history,
        world_size=trainer.world_size,
        num_parameters=sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        steps=trainer.global_step,
        fit_seconds=fit_seconds,
        wall_seconds=run.clock.wall(),
        probe_seconds=probe_seconds,
        probe_overhead_fraction=probe_seconds / fit_seconds if fit_seconds else float("nan"),
        environment=results.environment(),
        launch=launch,
        wandb={"run_id": run.logger.experiment.id, "run_dir": run.logger.experiment.dir} if run.logger else None,
    )


def write(run: CellRun, result: CellResult, results_root: Path) -> None:
    """The cell's files (metrics.json last: its presence marks the cell done), then W&B, then no checkpoint."""
    cell_id = run.cell.cell_id
    folder = results.cell_dir(results_root, cell_id)
    atomic.write_json(folder / "grad_profile.json", {"cell_id": cell_id, "records": run.probe.records})
    if run.pretraining is not None:
        atomic.write_json(folder / "pretraining.json", {"cell_id": cell_id, **run.pretraining})
    result.write(folder)
    results.clear_error(results_root, cell_id)
    if run.logger is not None:
        finish_run(run.logger, result.model_dump(), run.probe.records[0], run.pretraining)
    checkpoints.remove(results_root, cell_id)


def run_cell(cell: CellSpec, data: StoredDataset, results_root: Path, wandb: WandbSettings,
             launch: LaunchInfo | None = None, checkpoint_every: int | None = None) -> CellResult | None:
    """Train ``cell`` and write its files; its ``CellResult`` on rank 0 (None on other ranks)."""
    run = build(cell, data, results_root, wandb, checkpoint_every)
    fit(run)
    result = summarize(run, launch)
    if result is not None:
        write(run, result, results_root)
    return result


def data_for(cell: CellSpec, data_root: Path, cache: dict) -> StoredDataset:
    """Load each stored data set once per process (cells share it)."""
    spec = DATASETS.get(cell.dataset)
    settings = spec.settings.model_validate(cell.dataset_settings)
    length = spec.length_for(cell.depth)
    key = (cell.dataset, length, settings_hash(settings))
    if key not in cache:
        cache[key] = load(cell.dataset, settings, data_root, length)
    return cache[key]
