"""The one LightningModule: a cell group's K stacked models, with the task injected.

A group is the cells of one leaderboard row that differ only in seed and
learning rate; they train as one network (vgbench/models/stacked.py) with one
optimizer whose rates differ per model (vgbench/training/stacked_optim.py), so
Lightning's per-step cost is paid once for K models. Beyond the textbook it:

- sums the K models' mean losses for the backward pass: no parameter is
  shared, so model k's gradient is that of its own loss alone;
- keeps evaluation results as per-model sums that DDP ranks add up;
- notices a non-finite loss per model: that model is "diverged" from that step
  on, drops out of the loss and is frozen by the optimizer, and the others go
  on; training stops when every model has diverged;
- clips gradients per model (norm over model k's parameters only, the formula
  of ``torch.nn.utils.clip_grad_norm_``), then tells listeners, so probes can
  record norms before and after clipping;
- keeps each model's epoch history as if it had trained alone: nothing after
  the epoch in which it diverged.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import lightning as L
import numpy as np
import torch

from vgbench.models.stacked import broadcast_per_model, per_model_grad_norms
from vgbench.probes.taps import ProbedModel
from vgbench.tasks import TASKS, Task
from vgbench.training.augment import AUGMENTATIONS
from vgbench.training.stacked_optim import OPTIMIZERS
from vgbench import wandb_names as names

CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_


class TaskModule(L.LightningModule):
    def __init__(self, model: ProbedModel, task: Task | str, learning_rates: list[float], optimizer: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 0.0, lr_milestones: tuple[int, ...] = (),
                 augment: str = "none", grad_clip: str = "none", grad_clip_value: float = 1.0,
                 augment_seeds: list[int] | None = None):
        super().__init__()
        if len(learning_rates) != model.models:
            raise ValueError(f"{len(learning_rates)} learning rates for a stack of {model.models} models")
        self.model = model
        self.models = model.models
        self.task = TASKS.get(task) if isinstance(task, str) else task
        self.learning_rates, self.optimizer_name = list(learning_rates), optimizer
        self.momentum, self.weight_decay = momentum, weight_decay
        self.lr_milestones = list(lr_milestones)  # epochs at which the rate is divided by 10
        self.grad_clip, self.grad_clip_value = grad_clip, grad_clip_value
        self.augment = AUGMENTATIONS[augment]
        # One generator per model, so a model's augmentation does not depend on its group.
        self.augment_seeds = list(augment_seeds or range(self.models))
        self._augment_generators: list[torch.Generator] | None = None
        self._augment_states: list[torch.Tensor] | None = None  # from a checkpoint, until the first batch
        self.after_clipping: list[Callable[[], None]] = []
        self.runs_per_model: list = [None] * self.models  # a W&B run per cell, or None
        self.diverged_at_step: list[int | None] = [None] * self.models
        self._active_key: tuple[bool, ...] = ()  # what ``active`` was last made from
        self._active: torch.Tensor | None = None
        self.active_at_step_start = self.active
        self._all_active_at_step_start = True
        self._epochs: list[dict[int, dict]] = [{} for _ in range(self.models)]  # per model: epoch -> row
        self.test_metrics: list[dict] = [{} for _ in range(self.models)]
        self._loss_sum = torch.zeros(self.models, dtype=torch.float64)
        self._loss_steps = 0
        self._eval_sums: torch.Tensor | None = None
        self._validated: list[dict[str, float]] = [{} for _ in range(self.models)]  # W&B keys, until the epoch ends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def active(self) -> torch.Tensor:
        """Models still training (not diverged), [K] bool on the CPU; made anew only when a model
        diverges (a step reads it twice), so treat it as read-only."""
        key = tuple(step is None for step in self.diverged_at_step)
        if key != self._active_key:
            self._active_key, self._active = key, torch.tensor(key)
        return self._active

    def log_model(self, k: int, metrics: dict[str, float], step: int | None = None) -> None:
        """Straight to model k's run (rank 0 only): the values are already reduced over ranks,
        and self.log's per-batch bookkeeping measurably slows small models (bench/)."""
        run = self.runs_per_model[k]
        if run is not None and self.trainer.is_global_zero:
            # One row per call, keyed by the trainer's step as Lightning's WandbLogger does (the init
            # probe and the first training probe both belong to step 0).
            run.log({**metrics, "epoch": self.current_epoch,
                     names.STEP: self.global_step if step is None else step})

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Our batches are always (x, y) tensors: skip Lightning's generic collection walk. On a GPU they
        # are there already (InMemoryData keeps the group's data set on the device): .to is then a no-op.
        if device.type == "cpu":
            return batch
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def configure_optimizers(self):
        params = list(self.model.parameters())
        if self.optimizer_name == "adam":
            optimizer = OPTIMIZERS["adam"](params, self.learning_rates, weight_decay=self.weight_decay)
        else:
            optimizer = OPTIMIZERS["sgd"](params, self.learning_rates, momentum=self.momentum,
                                          weight_decay=self.weight_decay)
        if not self.lr_milestones:
            return optimizer
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=self.lr_milestones, gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    # -- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros(self.models, dtype=torch.float64, device=self.device)
        self._loss_steps = 0

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        # Made on the batch's device at the first batch: a resumed module is restored before Lightning moves
        # it to the GPU, and a CUDA generator's saved state fits only a CUDA generator.
        if self._augment_generators is None:
            self._augment_generators = [torch.Generator(device=x.device).manual_seed(seed)
                                        for seed in self.augment_seeds]
            for generator, state in zip(self._augment_generators, self._augment_states or []):
                generator.set_state(state)
        return torch.stack([self.augment(x_k, generator)
                            for x_k, generator in zip(x.unbind(0), self._augment_generators)])

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.active_at_step_start = self.active
        self._all_active_at_step_start = all(self._active_key)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment is not None:
            x = self._augmented(x)
        losses = self.task.loss(self.model(x), y)  # [K]
        finite = torch.isfinite(losses.detach())
        if self.trainer.world_size > 1:  # a model diverges on every rank or on none, so the ranks stay in step
            finite = self.trainer.strategy.reduce((~finite).double(), reduce_op="sum") == 0
        if self._all_active_at_step_start and finite.all().item():
            # The common case, in as few operations as possible (a small model's step is mostly
            # per-operation overhead): nothing to record and nothing to mask.
            self._loss_sum.add_(losses.detach())
            self._loss_steps += 1
            return losses.sum()
        active = self.active_at_step_start.to(losses.device)
        for k in (active & ~finite).nonzero().flatten().tolist():
            self.diverged_at_step[k] = self.global_step
        still_active = self.active
        self.optimizers().optimizer.active.copy_(still_active)
        if not still_active.any():
            # Stop at once (the ranks agree on which models diverged).
            self.trainer.should_stop = True
        self._loss_sum += torch.where(active, losses.detach().double(), 0.0)
        self._loss_steps += 1
        # Diverged models drop out of the loss: their gradients are zero, the others' are their own.
        return torch.where(active & finite, losses, 0.0).sum()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.grad_clip == "none":
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        with torch.no_grad():
            if self.grad_clip == "value":
                for p in params:
                    p.grad.clamp_(-self.grad_clip_value, self.grad_clip_value)
            else:
                norms = per_model_grad_norms(params)
                factor = (self.grad_clip_value / (norms + CLIP_EPS)).clamp(max=1.0)
                for p in params:
                    p.grad.mul_(broadcast_per_model(factor.to(p.grad.dtype), p.grad))
        for listener in self.after_clipping:
            listener()

    def on_train_epoch_end(self) -> None:
        """Each model's epoch in one W&B row: its training loss and the validation metrics of this epoch's
        validation pass, which Lightning runs just before this hook (a row per call costs, with nine runs
        per group, as much as a small model's whole epoch)."""
        losses = self.trainer.strategy.reduce(self._loss_sum / max(self._loss_steps, 1), reduce_op="mean").tolist()
        validated, self._validated = self._validated, [{} for _ in range(self.models)]
        for k, loss in enumerate(losses):
            if not self._trained_in_epoch(k, self.current_epoch):
                continue
            loss = loss if math.isfinite(loss) and self.diverged_at_step[k] is None else float("nan")
            self._epochs[k].setdefault(self.current_epoch, {})["train_loss"] = loss
            self.log_model(k, {**validated[k], names.TRAIN_LOSS: loss})

    def _trained_in_epoch(self, k: int, epoch: int) -> bool:
        """Model k's history holds the epochs up to the one it diverged in (as if it had trained alone)."""
        step = self.diverged_at_step[k]
        return step is None or epoch <= self._epoch_of_step(step)

    def _epoch_of_step(self, step: int) -> int:
        return step // max(self.trainer.num_training_batches, 1)

    def history(self, k: int) -> list[dict]:
        """Model k's rows, one per epoch: epoch, train_loss, val_loss, val_<metric> for each task metric."""
        return [{"epoch": epoch, **row} for epoch, row in sorted(self._epochs[k].items())]

    # -- resuming (vgbench/training/checkpoints.py) -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vgbench"] = {
            "epochs": self._epochs, "diverged_at_step": self.diverged_at_step, "tap_seconds": self.model.taps.seconds,
            "augment_generators": ([g.get_state() for g in self._augment_generators]
                                   if self._augment_generators is not None else self._augment_states),
            # Kept although nothing in training draws from the global generators any more.
            # As plain tensors, tuples and lists, so the checkpoint loads with torch.load(weights_only=True).
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [value.tolist() if isinstance(value, np.ndarray) else value
                              for value in np.random.get_state()]},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["vgbench"]
        self._epochs = [{int(epoch): row for epoch, row in model.items()} for model in state["epochs"]]
        self.diverged_at_step = list(state["diverged_at_step"])
        self.model.taps.seconds = state["tap_seconds"]
        self._augment_generators, self._augment_states = None, state["augment_generators"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        name, keys, *rest = state["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))

    # -- evaluation -------------------------------------------------------------------------
    def _eval_start(self) -> None:
        self._eval_sums = None

    def _eval_step(self, batch) -> None:
        x, y = batch
        sums = torch.stack([s.double() for s in self.task.sums(self.model(x), y)])  # [sums, K]
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums

    def _eval_end(self) -> list[dict[str, float]]:
        """Per model: the task's metrics (nan where not finite)."""
        sums = self.trainer.strategy.reduce(self._eval_sums, reduce_op="sum")
        return [{key: value if math.isfinite(value) else float("nan")
                 for key, value in self.task.finish(column.tolist()).items()} for column in sums.T]

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        per_model = self._eval_end()
        if self.trainer.sanity_checking:
            return
        for k, metrics in enumerate(per_model):
            # A model that diverged in this epoch or before has no validation of its own.
            if self.diverged_at_step[k] is not None:
                continue
            self._epochs[k].setdefault(self.current_epoch, {}).update({f"val_{m}": v for m, v in metrics.items()})
            self._validated[k] = {names.val_metric(m): v for m, v in metrics.items()}  # logged with the epoch

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._eval_end()
        for k, metrics in enumerate(self.test_metrics):
            if self.diverged_at_step[k] is None:
                self.log_model(k, {names.test_metric(m): v for m, v in metrics.items()})
