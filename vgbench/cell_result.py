"""The record between the trainer and every reader: one ``CellResult`` per cell.

``run_group`` writes it as ``results/cells/<cell_id>/metrics.json`` (last, so its
presence marks the cell done); ``vgbench status``, the launchers and the
leaderboard read it back through ``read`` and nothing else. It carries a
schema version: a file written by another schema (or damaged, or missing a
field) is not a result, and the cell counts as not done, so it is trained
again rather than read by string keys that may no longer exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from vgbench import atomic

SCHEMA_VERSION = 5  # 1: the untyped dict of vgbench 0.1; 2: before cell groups (no `group`); 3: no convergence;
# 4: no mean-field prediction


class UnreadableResultError(ValueError):
    """metrics.json exists but is not a result of this schema; the message says why."""


class LaunchInfo(BaseModel):
    """Where and how the cell ran: which launcher, host, process, SLURM job and device pinning."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    launcher: str
    host: str
    pid: int
    slurm_job_id: str | None = None
    worker: int | None = None  # slot of a local worker
    cuda_visible_devices: str | None = None
    threads: int  # torch intra-op threads the cell trained with
    attempt: int = 1  # 1 + the number of failed attempts before (error.json)
    resumed_from_epoch: int | None = None  # the checkpoint a restarted cell continued from


class GroupInfo(BaseModel):
    """The cell group the cell trained in (vgbench/groups.py): K models stacked, this one at ``index``.

    Recorded for provenance only: the cell's numbers do not depend on it (tests/test_stacking.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    size: int
    index: int
    cells: list[str]


class CellResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[SCHEMA_VERSION] = SCHEMA_VERSION
    cell_id: str
    cell: dict[str, Any]  # the resolved CellSpec
    status: Literal["completed", "diverged"]
    failure: str | None
    diverged_at_step: int | None
    trainable: bool
    task: str
    metric: str
    higher_is_better: bool
    baseline_metric: float
    test_metric: float
    test: dict[str, float]
    val_metric: float
    best_val_metric: float
    final_train_loss: float
    epochs_to_target: int | None
    late_val_improvement: float  # training/convergence.py: over the last fifth of the epochs
    converged: bool | None  # None: diverged, or too few epochs to say
    target_metric: float
    pretraining: dict[str, Any] | None
    init_log10_dL_dh_first_last: float
    theory_log10_dL_dh_first_last: float  # mean-field prediction for the same weights (probes/theory.py); NaN: none
    theory: str  # its source, or "not predicted: why"
    init_log10_weight_grad_first_last: float
    final_log10_dL_dh_first_last: float
    history: list[dict[str, Any]]  # one row per epoch
    world_size: int
    num_parameters: int
    steps: int
    fit_seconds: float  # summed over restarts; the group's divided by its size
    wall_seconds: float  # summed over restarts; the group's divided by its size
    probe_seconds: float
    probe_overhead_fraction: float
    environment: dict[str, Any]
    launch: LaunchInfo | None = None
    group: GroupInfo | None = None
    wandb: dict[str, Any] | None

    def write(self, folder: Path) -> Path:
        path = folder / "metrics.json"
        atomic.write_json(path, self.model_dump(mode="python"))
        return path


def read(path: Path) -> CellResult | None:
    """The result in ``path`` (a metrics.json); None if there is none; raises if it is not one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        raise UnreadableResultError(f"{path} is not text ({error}): damaged") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableResultError(f"{path} is not valid JSON ({error}): damaged or cut short") from None
    if not isinstance(data, dict):
        raise UnreadableResultError(f"{path} holds a {type(data).__name__}, not a cell result")
    version = data.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise UnreadableResultError(f"{path} was written with result schema {version}; this vgbench reads "
                                    f"{SCHEMA_VERSION}: the cell is trained again")
    try:
        return CellResult.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise UnreadableResultError(f"{path} is not a complete cell result ({problems})") from None
