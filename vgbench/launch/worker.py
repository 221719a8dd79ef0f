"""The worker: train the cells of one ``WorkUnit`` that are neither done nor claimed.

Every launcher ends here (in-process for ``serial``, as ``python -m
vgbench.launch UNIT.json`` for ``local``, inside a submitit array task
for ``slurm``). It skips the cells that are done (or failed, unless retrying),
groups the rest by row (vgbench/groups.py: the seeds and learning rates of a
row train as one stacked network), and per group: claims its cells (those
another worker holds stay out of the group), trains them together, resuming
from the group's checkpoint if an earlier run of the same group was
interrupted; on an exception writes ``error.json`` for each of its cells and
goes on with the next group; releases the claims. The cell files are the only
record of what happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from vgbench import atomic, claims, results
from vgbench.launch.marks import metrics_mark
from vgbench.launch.request import WorkUnit


def _where(unit: WorkUnit) -> dict:
    """Which process of which launch this is: recorded with every result and every error."""
    return {"launcher": unit.launcher, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": claims.current_slurm_job(), "worker": unit.worker}


def _launch_info(unit: WorkUnit, attempt: int, pinned_threads: int | None):
    """Where and how a group trains; its threads are the ones its cells pin (run_group sets them), else
    the worker's."""
    import torch

    from vgbench.cell_result import LaunchInfo

    return LaunchInfo(**_where(unit), cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      threads=pinned_threads or torch.get_num_threads(), attempt=attempt)


class MixedCodeError(RuntimeError):
    """The worker imports other vgbench training code than the launcher that started it."""


def check_same_code(unit: WorkUnit) -> None:
    """Refuse to train with other code than the launcher's. ``python -m`` puts the working folder first on
    the import path, so a worker started in a checkout imports that checkout's vgbench, while the ``vgbench``
    command imports the installed one: after ``pip install .`` (not ``-e``) and an edit, or with an
    editable install of another checkout, the workers trained with one code and the launcher then found
    every result written by other code, stale, after the whole training."""
    if unit.code_fingerprint is not None and unit.code_fingerprint != results.code_fingerprint():
        raise MixedCodeError(
            f"this worker imports vgbench from {results.PACKAGE_DIR} (training code {results.code_fingerprint()}), "
            f"the launcher from {unit.package_dir} (training code {unit.code_fingerprint}): the two must run the "
            f"same code. Workers import the package in their working folder first; install the checkout you "
            f"run in (`pip install -e .` there), or run `vgbench` from a folder that holds no other vgbench")


def _is_done(results_root: Path, cell_id: str, unit: WorkUnit, state: results.CellState | None = None) -> bool:
    """Done, and (under --force) not the result the launch found (its metrics.json changed since)."""
    return ((state or results.cell_state(results_root, cell_id)).state == "done"
            and (unit.replaces is None or metrics_mark(results_root, cell_id) != unit.replaces[cell_id]))


def _summary_line(done: int, total: int, result) -> str:
    return (f"[{done}/{total}] {result.cell_id}: test {result.metric} {result.test_metric:.3f} "
            f"(baseline {result.baseline_metric:.3f}), log10 dL/dh first/last "
            f"{result.init_log10_dL_dh_first_last:+.2f}, failure {result.failure or '–'}, {result.wall_seconds:.1f}s"
            + (f", resumed from epoch {result.launch.resumed_from_epoch}"
               if result.launch and result.launch.resumed_from_epoch is not None else ""))


def run_unit(unit: WorkUnit) -> dict[str, list[str]]:
    """Train what is left of ``unit``, group by group; return the ids trained, failed and skipped (with why)."""
    import torch

    from vgbench.config import load_params
    from vgbench.groups import group
    from vgbench.training.run_group import data_for
    from vgbench.tuning import matrix_cells
    from vgbench.twins import unique_stored

    check_same_code(unit)
    params = load_params(unit.params_path, unit.profile)
    by_id = {cell.cell_id: cell for cell in unique_stored(matrix_cells(params.active, Path(unit.results_root)))}
    unknown = [cell_id for cell_id in unit.cell_ids if cell_id not in by_id]
    if unknown:
        raise ValueError(f"{unit.params_path} (profile {unit.profile}) has no cells {unknown[:3]}")
    if unit.threads:
        torch.set_num_threads(unit.threads)
    root, data_root = Path(unit.results_root), Path(unit.data_root)
    rank_zero = claims.is_rank_zero()  # under DDP every rank trains the same cells; rank 0 claims and writes
    report: dict[str, list[str]] = {"trained": [], "failed": [], "skipped": []}
    data_cache: dict = {}
    total = len(unit.cell_ids)
    pending = []
    for cell_id in unit.cell_ids:
        state = results.cell_state(root, cell_id)
        if _is_done(root, cell_id, unit, state) or (state.state == "failed" and not unit.retry_failed):
            report["skipped"].append(f"{cell_id} ({state.state})")
        else:
            pending.append(by_id[cell_id])
    for cells in group(pending, unit.group_size):
        held = []
        try:
            for cell in cells:
                with claims.signals_deferred():  # taken and in `held` (released below), or not taken
                    claim = claims.try_claim(root, cell.cell_id, unit.launcher) if rank_zero else None
                    if claim is not None or not rank_zero:
                        held.append((cell, claim))
                if rank_zero and claim is None:
                    holder = claims.read_claim(root, cell.cell_id)  # None if released meanwhile: done or failed
                    where = holder.where if holder else "another worker"
                    report["skipped"].append(f"{cell.cell_id} (claimed by {where})")
                    continue
                if _is_done(root, cell.cell_id, unit):  # finished by another worker between our look and our claim
                    report["skipped"].append(f"{cell.cell_id} (done)")
                    with claims.signals_deferred():
                        held.pop()
                        if claim is not None:
                            claims.release(root, claim)
            if not held:
                continue
            mine = [cell for cell, _ in held]
            _train_group(unit, root, mine, lambda: data_for(mine[0], data_root, data_cache), params, report, total,
                         rank_zero)
        finally:
            with claims.signals_deferred():  # a stop signal here must not cut the releases short
                for _, claim in held:
                    if claim is not None:
                        claims.release(root, claim)
    if unit.report_path:
        atomic.write_json(unit.report_path, report)
    return report


def _train_group(unit: WorkUnit, root: Path, cells: list, load_data, params, report: dict, total: int,
                 rank_zero: bool) -> None:
    """Train one group; on an exception (loading its data included) record it for each of its cells
    (the matrix goes on)."""
    from vgbench.training.run_group import run_group

    try:
        data = load_data()
        attempts = [results.read_error(root, cell.cell_id) for cell in cells]
        launch = _launch_info(unit, attempt=1 + max((error["attempt"] for error in attempts if error), default=0),
                              pinned_threads=cells[0].trainer.get("threads"))
        group_results = run_group(cells, data, root, params.wandb, launch, unit.checkpoint_every, params.profile)
        for result in group_results or []:
            report["trained"].append(result.cell_id)
            print(_summary_line(len(report["trained"]), total, result), flush=True)
        if group_results is None:  # DDP ranks > 0 train but write nothing
            report["trained"] += [cell.cell_id for cell in cells]
    except Exception as error:  # noqa: BLE001 - a group's failure is recorded; the others go on
        report["failed"] += [cell.cell_id for cell in cells]
        if rank_zero:
            for cell in cells:
                record = results.write_error(root, cell.cell_id, error, _where(unit))
                print(f"{cell.cell_id}: FAILED (attempt {record['attempt']}): {record['error']} "
                      f"(traceback in {results.cell_dir(root, cell.cell_id) / 'error.json'})", file=sys.stderr,
                      flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m vgbench.launch UNIT.json`` (vgbench/launch/__main__.py): what the local launcher starts."""
    argv = sys.argv[1:] if argv is None else argv
    fields = json.loads(Path(argv[0]).read_text())
    unit = WorkUnit(**{**fields, "cell_ids": tuple(fields["cell_ids"])})
    # SIGTERM from the launcher (or a user) ends the worker through Python, so claims are released.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        report = run_unit(unit)
    except MixedCodeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 1 if report["failed"] else 0

