"""What a launcher is asked to do, and the unit of work it hands to a worker."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from vgbench import results
from vgbench.config import LauncherSettings, Params
from vgbench.launch.marks import FileMark, cell_marks
from vgbench.matrix import CellSpec


class LaunchError(RuntimeError):
    """A launcher cannot start here (say, no SLURM commands); the message says what is missing."""


@dataclass(frozen=True)
class WorkUnit:
    """Cells for one worker: ids plus where to find their config; small and picklable.

    ``params_path`` is the launch's snapshot of the params file, so a job that
    starts hours later on a cluster trains the config that was launched.
    """

    params_path: str
    profile: str
    data_root: str
    results_root: str
    cell_ids: tuple[str, ...]
    launcher: str
    checkpoint_every: int | None = None
    group_size: int | None = None  # most cells stacked in one group (None: a row's seeds x rates)
    threads: int | None = None  # torch threads where the cell's trainer.threads is null
    worker: int | None = None
    retry_failed: bool = False
    # --force: each cell's metrics.json mark when the launch began (launch/marks.py); a result still carrying
    # it is the one this launch replaces, not done.
    replaces: dict[str, FileMark] | None = None
    report_path: str | None = None
    # The launcher's vgbench (its folder, its training-code fingerprint): a worker that imports another
    # refuses to train (worker.check_same_code).
    package_dir: str | None = None
    code_fingerprint: str | None = None


@dataclass
class LaunchRequest:
    params: Params
    params_path: Path  # the snapshot under ``folder``
    profile: str
    cells: list[CellSpec]  # the cells to train, in matrix order
    data_root: Path
    results_root: Path
    folder: Path  # results/launch/<timestamp>/: snapshot, logs, reports
    settings: LauncherSettings
    retry_failed: bool = False
    force: bool = False  # train --force: retrain the cells even where they are done
    detach: bool = False
    # Each cell's (metrics.json, error.json) marks when the request was made, before anything was launched: a
    # file that still carries its mark is not this launch's.
    marks: dict[str, tuple[FileMark, FileMark]] = field(init=False)

    def __post_init__(self):
        self.marks = {cell.cell_id: cell_marks(self.results_root, cell.cell_id) for cell in self.cells}

    @property
    def cells_pin_threads(self) -> bool:
        """Do the cells set their own torch threads (``trainer.threads``)? Then no launcher setting may."""
        return self.params.active.trainer.threads is not None

    def unit(self, cell_ids, **changes) -> WorkUnit:
        threads = None if self.cells_pin_threads else self.settings.threads
        unit = WorkUnit(
            params_path=str(self.params_path.resolve()), profile=self.profile,
            data_root=str(self.data_root.resolve()), results_root=str(self.results_root.resolve()),
            cell_ids=tuple(cell_ids), launcher=self.settings.name, checkpoint_every=self.settings.checkpoint_every,
            group_size=self.settings.group_size,
            threads=threads, retry_failed=self.retry_failed,
            replaces={cell_id: self.marks[cell_id][0] for cell_id in cell_ids} if self.force else None,
            package_dir=str(results.PACKAGE_DIR), code_fingerprint=results.code_fingerprint())
        return replace(unit, **changes)


def launch_folder(results_root: Path, params_path: Path) -> tuple[Path, Path]:
    """A new ``results/launch/<timestamp>/`` holding a copy of the params file; (folder, snapshot)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = results_root / "launch"
    base.mkdir(parents=True, exist_ok=True)
    folder, count = base / stamp, 1
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            count += 1
            folder = base / f"{stamp}-{count}"
    snapshot = folder / "params.yaml"
    shutil.copyfile(params_path, snapshot)
    return folder, snapshot
