"""Resumable cell groups: the whole training state every ``checkpoint_every`` epochs.

``results/checkpoints/<group_id>/last.ckpt`` (one per cell group, vgbench/groups.py) is written
through Lightning's own ``trainer.save_checkpoint`` (model, optimizer, schedule, loop counters,
every callback's state, the probe's records among them, and the module's ``on_save_checkpoint``
extras: the epoch history, the divergence steps, RNG states, seconds spent so far), to a
temporary file renamed into place, so a kill at any moment leaves the previous checkpoint or the
new one. A restarted group passes it to ``trainer.fit(ckpt_path=...)`` and continues after the
last saved epoch; the batch order is a function of (seed, epoch) alone, so on CPU the finished
cells are identical to ones that were never interrupted (tested). The folder is removed once the
group's results are written. Beside the checkpoint, ``code_fingerprint`` names the training code that
wrote it: a group interrupted under other code starts over rather than finish, under this code's
fingerprint, what other code began.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from vgbench import atomic
from vgbench.results import code_fingerprint

LAST = "last.ckpt"
WRITTEN_BY = "code_fingerprint"


def checkpoint_dir(results_root: Path, group_id: str) -> Path:
    return results_root / "checkpoints" / group_id


def latest(results_root: Path, group_id: str) -> Path | None:
    """The group's checkpoint to resume from: None where there is none, or where other training code wrote
    it (then it is removed)."""
    folder = checkpoint_dir(results_root, group_id)
    if not (folder / LAST).exists():
        return None
    written_by = folder / WRITTEN_BY
    if not written_by.exists() or written_by.read_text().strip() != code_fingerprint():
        remove(results_root, group_id)
        return None
    return folder / LAST


def remove(results_root: Path, group_id: str) -> None:
    shutil.rmtree(checkpoint_dir(results_root, group_id), ignore_errors=True)


class Clock:
    """Wall and fit seconds of a cell group, summed over the runs a restart splits it into."""

    def __init__(self):
        self.started = time.perf_counter()
        self.fit_started: float | None = None
        self.fit_ended: float | None = None
        self.before_wall = 0.0  # seconds of the earlier runs, restored from the checkpoint
        self.before_fit = 0.0

    def wall(self) -> float:
        return self.before_wall + time.perf_counter() - self.started

    def fit(self) -> float:
        if self.fit_started is None:
            return self.before_fit
        return self.before_fit + (self.fit_ended or time.perf_counter()) - self.fit_started


class EpochCheckpoint(Checkpoint):
    """Save every ``every`` epochs; a ``Checkpoint`` so Lightning calls it after the module's epoch-end hook
    (which records the epoch's training loss in the history the checkpoint must hold)."""

    def __init__(self, folder: Path, every: int, clock: Clock):
        self.folder, self.every, self.clock = Path(folder), every, clock
        self.restored = False
        self.resumed_from_epoch: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            atomic.write_text(self.folder / WRITTEN_BY, code_fingerprint() + "\n")
            atomic.sync_file(tmp)  # else a power cut can leave an empty last.ckpt, which every resume then fails on
            os.replace(tmp, self.folder / LAST)

    def state_dict(self) -> dict:
        return {"wall_seconds": self.clock.wall(), "fit_seconds": self.clock.fit()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.clock.before_wall, self.clock.before_fit = state_dict["wall_seconds"], state_dict["fit_seconds"]
        self.restored = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restored:  # the loop continues after the saved epoch
            self.resumed_from_epoch = trainer.current_epoch
