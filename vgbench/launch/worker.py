"""The worker: train the cells of one ``WorkUnit`` that are neither done nor claimed.

Every launcher ends here (in-process for ``serial``, as ``python -m
vgbench.launch.worker UNIT.json`` for ``local``, inside a submitit array task
for ``slurm``). Per cell: skip it if done (or failed, unless retrying); claim
it; train it, resuming from its checkpoint if an earlier run was interrupted;
on an exception write ``error.json`` and go on with the next; release the
claim. The cell files are the only record of what happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from vgbench import atomic, claims, results
from vgbench.launch.request import WorkUnit


def _where(unit: WorkUnit) -> dict:
    """Which process of which launch this is: recorded with every result and every error."""
    return {"launcher": unit.launcher, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": claims.current_slurm_job(), "worker": unit.worker}


def _launch_info(unit: WorkUnit, attempt: int):
    import torch

    from vgbench.cell_result import LaunchInfo

    return LaunchInfo(**_where(unit), cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      threads=torch.get_num_threads(), attempt=attempt)


def _is_done(results_root: Path, cell_id: str, unit: WorkUnit, state: results.CellState | None = None) -> bool:
    """Done, and (under --force) written by this launch."""
    if (state or results.cell_state(results_root, cell_id)).state != "done":
        return False
    if unit.not_before is None:
        return True
    return (results.cell_dir(results_root, cell_id) / "metrics.json").stat().st_mtime >= unit.not_before


def _summary_line(index: int, total: int, result) -> str:
    return (f"[{index}/{total}] {result.cell_id}: test {result.metric} {result.test_metric:.3f} "
            f"(baseline {result.baseline_metric:.3f}), log10 dL/dh first/last "
            f"{result.init_log10_dL_dh_first_last:+.2f}, failure {result.failure}, {result.wall_seconds:.1f}s"
            + (f", resumed from epoch {result.launch.resumed_from_epoch}"
               if result.launch and result.launch.resumed_from_epoch is not None else ""))


def run_unit(unit: WorkUnit) -> dict[str, list[str]]:
    """Train what is left of ``unit``; return the ids trained, failed and skipped (with why)."""
    import torch

    from vgbench.config import load_params
    from vgbench.matrix import expand
    from vgbench.training.run_cell import data_for, run_cell

    params = load_params(unit.params_path, unit.profile)
    by_id = {cell.cell_id: cell for cell in expand(params.active)}
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
    for index, cell_id in enumerate(unit.cell_ids, 1):
        state = results.cell_state(root, cell_id)
        if _is_done(root, cell_id, unit, state) or (state.state == "failed" and not unit.retry_failed):
            report["skipped"].append(f"{cell_id} ({state.state})")
            continue
        claim = claims.try_claim(root, cell_id, unit.launcher) if rank_zero else None
        if rank_zero and claim is None:
            holder = claims.read_claim(root, cell_id)  # None if released meanwhile: then it is done or failed
            report["skipped"].append(f"{cell_id} (claimed by {holder.where if holder else 'another worker'})")
            continue
        try:
            if _is_done(root, cell_id, unit):  # finished by another worker between our look and our claim
                report["skipped"].append(f"{cell_id} (done)")
                continue
            error = results.read_error(root, cell_id)
            launch = _launch_info(unit, attempt=1 + (error["attempt"] if error else 0))
            cell = by_id[cell_id]
            result = run_cell(cell, data_for(cell, data_root, data_cache), root, params.wandb, launch,
                              unit.checkpoint_every)
            report["trained"].append(cell_id)
            if result is not None:
                print(_summary_line(index, total, result), flush=True)
        except Exception as error:  # noqa: BLE001 - a cell's failure is recorded; the others go on
            report["failed"].append(cell_id)
            if rank_zero:
                record = results.write_error(root, cell_id, error, _where(unit))
                print(f"[{index}/{total}] {cell_id}: FAILED (attempt {record['attempt']}): {record['error']} "
                      f"(traceback in {results.cell_dir(root, cell_id) / 'error.json'})", file=sys.stderr, flush=True)
        finally:
            if claim is not None:
                claims.release(root, claim)
    if unit.report_path:
        atomic.write_json(unit.report_path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m vgbench.launch.worker UNIT.json``: what the local launcher starts."""
    argv = sys.argv[1:] if argv is None else argv
    fields = json.loads(Path(argv[0]).read_text())
    unit = WorkUnit(**{**fields, "cell_ids": tuple(fields["cell_ids"])})
    # SIGTERM from the launcher (or a user) ends the worker through Python, so claims are released.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run_unit(unit)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
