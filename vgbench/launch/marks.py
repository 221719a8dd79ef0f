"""Which result file a cell has now: the mark that tells a new result from the one a launch found.

A launch needs to know whether a cell's ``metrics.json`` (or ``error.json``)
was written after it started: the waiting SLURM launcher counts progress
that way, and ``train --force`` must not take the result it is replacing for
the new one. Comparing modification times with this process's clock fails
wherever clocks disagree (a file server ahead of the login node, a compute
node that lags it). A mark needs no clock: every result file is written beside
and renamed into place (``atomic.write_text``), so a rewrite is a new inode,
even where the modification time repeats (a file system that keeps whole
seconds). A mark is a string so that it survives JSON (a worker's unit file)
and pickling (a submitit task) unchanged.
"""

from __future__ import annotations

from pathlib import Path

from vgbench import results

FileMark = str | None  # "<inode>:<modification time in ns>" of a file; None: absent


def file_mark(path: Path) -> FileMark:
    """Which file is at ``path`` now."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return f"{status.st_ino}:{status.st_mtime_ns}"


def metrics_mark(results_root: Path, cell_id: str) -> FileMark:
    """The mark of a cell's metrics.json."""
    return file_mark(results.cell_dir(results_root, cell_id) / "metrics.json")


def cell_marks(results_root: Path, cell_id: str) -> tuple[FileMark, FileMark]:
    """The marks of a cell's metrics.json and error.json, in that order."""
    return metrics_mark(results_root, cell_id), file_mark(results.cell_dir(results_root, cell_id) / "error.json")
