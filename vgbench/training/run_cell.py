"""Train one cell through Lightning and write its result files.

Rank 0 writes ``metrics.json`` and ``grad_profile.json`` (and, for cells that
pretrain, ``pretraining.json``) atomically and owns the W&B run; every rank
trains. A diverging cell is a result, not an
exception: it is written with ``failure: "diverged"`` and the matrix goes on.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from vgbench import atomic, results
from vgbench.config import WandbSettings
from vgbench.data import DATASETS
from vgbench.data.store import StoredDataset, load, settings_hash
from vgbench.matrix import CellSpec
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining.for_cell import PretrainingSettings, pretrain_into
from vgbench.probes.failure import failure_label, log10_ratio
from vgbench.probes.gradient_flow import GradientFlowProbe
from vgbench.training.batches import loader
from vgbench.tasks import TASKS, Task
from vgbench.training.module import TaskModule
from vgbench.training.wandb_run import finish_run, make_logger

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")  # ours is intended  # lightning 2.6 vs torch 2.14 deprecation


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
    return L.Trainer(
        max_epochs=cell.training["max_epochs"],
        **lightning_settings,
        gradient_clip_val=recipe.grad_clip_value if clip else None,
        gradient_clip_algorithm=recipe.grad_clip if clip else None,
        callbacks=callbacks, logger=logger,
        use_distributed_sampler=False,  # batches.IndexBatchSampler shards by itself
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )


def run_cell(cell: CellSpec, data: StoredDataset, results_root: Path, wandb: WandbSettings) -> dict | None:
    """Train ``cell``; return its metrics dict on rank 0 (None on other ranks)."""
    started = time.perf_counter()
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
    logger = make_logger(cell, wandb)
    trainer = build_trainer(cell, recipe, [probe], logger or False)
    datamodule = InMemoryData(data, cell.training["batch_size"], cell.seed)

    if logger is not None:
        logger.experiment  # start the W&B run now, so wandb.init is not counted as fit time
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - fit_started
    diverged = module.diverged_at_step is not None
    if not diverged:
        trainer.test(module, datamodule=datamodule, verbose=False)
    test = module.test_metrics if not diverged else {"loss": float("nan"), task.metric: float("nan")}

    if trainer.global_rank != 0:
        return None
    baseline = data.baseline_metric
    loss_fraction = cell.probes["trainable_loss_fraction"]
    trainable = not diverged and task.trainable(test[task.metric], baseline, cell.probes["trainable_margin"],
                                                loss_fraction)
    target = task.target(baseline, cell.training["target_accuracy"], loss_fraction)
    init_record, last_record = probe.records[0], probe.records[-1]
    probe_seconds = probe.total_seconds(module)
    history = module.history
    last = history[-1] if history else {}
    metrics = {
        "cell_id": cell.cell_id,
        "cell": cell.as_dict(),
        "status": "diverged" if diverged else "completed",
        "failure": failure_label(
            diverged=diverged, trainable=trainable, init_record=init_record, last_record=last_record,
            vanished_log10_ratio=cell.probes["vanished_log10_ratio"],
            exploded_log10_ratio=cell.probes["exploded_log10_ratio"],
            dead_fraction=cell.probes["dead_fraction"]),
        "diverged_at_step": module.diverged_at_step,
        "trainable": trainable,
        "task": task.name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "baseline_metric": baseline,
        "test_metric": test[task.metric],
        "test": test,
        "val_metric": last.get(f"val_{task.metric}", float("nan")),
        "best_val_metric": _best([row.get(f"val_{task.metric}", float("nan")) for row in history], task),
        "final_train_loss": last.get("train_loss", float("nan")),
        "epochs_to_target": _epochs_to_target(history, task, target),
        "target_metric": target,
        "pretraining": {k: v for k, v in pretraining.items() if k != "stats"} if pretraining else None,
        "init_log10_dL_dh_first_last": log10_ratio(init_record["dL_dh_first_last_ratio"]),
        "init_log10_weight_grad_first_last": log10_ratio(init_record["weight_grad_first_last_ratio"]),
        "final_log10_dL_dh_first_last": log10_ratio(last_record["dL_dh_first_last_ratio"]),
        "history": history,
        "world_size": trainer.world_size,
        "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": trainer.global_step,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - started,
        "probe_seconds": probe_seconds,
        "probe_overhead_fraction": probe_seconds / fit_seconds if fit_seconds else float("nan"),
        "environment": results.environment(),
        "wandb": {"run_id": logger.experiment.id, "run_dir": logger.experiment.dir} if logger else None,
    }
    folder = results.cell_dir(results_root, cell.cell_id)
    atomic.write_json(folder / "grad_profile.json", {"cell_id": cell.cell_id, "records": probe.records})
    if pretraining is not None:
        atomic.write_json(folder / "pretraining.json", {"cell_id": cell.cell_id, **pretraining})
    atomic.write_json(folder / "metrics.json", metrics)  # last: its presence marks the cell done
    if logger is not None:
        finish_run(logger, metrics, init_record, pretraining)
    return metrics


def data_for(cell: CellSpec, data_root: Path, cache: dict) -> StoredDataset:
    """Load each stored data set once per process (cells share it)."""
    spec = DATASETS.get(cell.dataset)
    settings = spec.settings.model_validate(cell.dataset_settings)
    length = spec.length_for(cell.depth)
    key = (cell.dataset, length, settings_hash(settings))
    if key not in cache:
        cache[key] = load(cell.dataset, settings, data_root, length)
    return cache[key]
