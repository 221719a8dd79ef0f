"""The one LightningModule, with the network and the task injected.

It does three things beyond the textbook: it keeps evaluation results as sums
that DDP ranks add up (the task says which sums), it notices a non-finite loss
(the cell is then "diverged" and training stops, the matrix goes on), and it
tells listeners after Lightning has clipped gradients, so probes can record
norms both before and after clipping.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import lightning as L
import numpy as np
import torch

from vgbench.probes.taps import ProbedModel
from vgbench.tasks import TASKS, Task
from vgbench.training.augment import AUGMENTATIONS


class TaskModule(L.LightningModule):
    def __init__(self, model: ProbedModel, task: Task | str, learning_rate: float, optimizer: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 0.0, lr_milestones: tuple[int, ...] = (),
                 augment: str = "none"):
        super().__init__()
        self.model = model
        self.task = TASKS.get(task) if isinstance(task, str) else task
        self.learning_rate, self.optimizer_name = learning_rate, optimizer
        self.momentum, self.weight_decay = momentum, weight_decay
        self.lr_milestones = list(lr_milestones)  # epochs at which the rate is divided by 10
        self.augment = AUGMENTATIONS[augment]
        self.after_clipping: list[Callable[[], None]] = []
        self.diverged_at_step: int | None = None
        self._epochs: dict[int, dict] = {}  # epoch -> train loss, validation loss and metrics
        self.test_metrics: dict = {}
        self._loss_sum = torch.zeros(())
        self._loss_steps = 0
        self._eval_sums: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _log(self, metrics: dict[str, float]) -> None:
        # Straight to the logger (rank 0 only): the values are already reduced over ranks,
        # and self.log's per-batch bookkeeping measurably slows small models (bench/).
        if self.logger is not None:
            self.logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=self.global_step)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Our batches are always (x, y) tensors: skip Lightning's generic collection walk.
        if device.type == "cpu":
            return batch
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def configure_optimizers(self):
        params = self.model.parameters()
        if self.optimizer_name == "adam":
            optimizer = torch.optim.Adam(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=self.learning_rate, momentum=self.momentum,
                                        weight_decay=self.weight_decay)
        if not self.lr_milestones:
            return optimizer
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=self.lr_milestones, gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    # -- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_steps = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        loss = self.task.loss(self.model(x), y)
        if not torch.isfinite(loss):
            # Stop at once (every rank sees NaN parameters after the all-reduce anyway).
            if self.diverged_at_step is None:
                self.diverged_at_step = self.global_step
            self.trainer.should_stop = True
        self._loss_sum += loss.detach()
        self._loss_steps += 1
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val:
            for listener in self.after_clipping:
                listener()

    def on_train_epoch_end(self) -> None:
        loss = float(self.trainer.strategy.reduce(self._loss_sum / max(self._loss_steps, 1), reduce_op="mean"))
        self._epochs.setdefault(self.current_epoch, {})["train_loss"] = loss
        self._log({"train/loss": loss})

    @property
    def history(self) -> list[dict]:
        """One row per epoch: epoch, train_loss, val_loss, val_<metric> for each task metric."""
        return [{"epoch": epoch, **row} for epoch, row in sorted(self._epochs.items())]

    # -- resuming (vgbench/training/checkpoints.py) -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vgbench"] = {
            "epochs": self._epochs, "diverged_at_step": self.diverged_at_step, "tap_seconds": self.model.taps.seconds,
            # Only augmentation draws from the global generators during training; keep them anyway.
            # As plain tensors, tuples and lists, so the checkpoint loads with torch.load(weights_only=True).
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [value.tolist() if isinstance(value, np.ndarray) else value
                              for value in np.random.get_state()]},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["vgbench"]
        self._epochs = {int(epoch): row for epoch, row in state["epochs"].items()}
        self.diverged_at_step = state["diverged_at_step"]
        self.model.taps.seconds = state["tap_seconds"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        name, keys, *rest = state["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))

    # -- evaluation -------------------------------------------------------------------------
    def _eval_start(self) -> None:
        self._eval_sums = None

    def _eval_step(self, batch) -> None:
        x, y = batch
        sums = torch.stack([s.double() for s in self.task.sums(self.model(x), y)])
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums

    def _eval_end(self) -> dict[str, float]:
        sums = self.trainer.strategy.reduce(self._eval_sums, reduce_op="sum").tolist()
        return {key: value if math.isfinite(value) else float("nan")
                for key, value in self.task.finish(sums).items()}

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_end()
        if self.trainer.sanity_checking:
            return
        self._epochs.setdefault(self.current_epoch, {}).update({f"val_{k}": v for k, v in metrics.items()})
        self._log({f"val/{k}": v for k, v in metrics.items()})

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch, batch_idx) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._eval_end()
        self._log({f"test/{k}": v for k, v in self.test_metrics.items()})
