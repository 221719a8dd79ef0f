"""Where cell results live and what makes one current.

``results/cells/<cell_id>/metrics.json`` (a ``CellResult``) is the source of truth
for everything downstream; ``grad_profile.json`` beside it holds every probe
record, and ``error.json`` records a cell that raised. A result
is reused only if it was written for the same resolved config (the cell id)
*and* by the same vgbench code (the code fingerprint), so editing a model file
reruns its cells on the next ``dvc repro``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import vgbench
from vgbench import atomic, cell_result, cpu_kernels
from vgbench.cell_result import CellResult, UnreadableResultError
from vgbench.source_digest import source_digest

PACKAGE_DIR = Path(vgbench.__file__).parent
# Code that only reads results, or decides names, places and reports, cannot change a cell's numbers;
# leave it out of the fingerprint, so that changing it keeps results current.
_NOT_TRAINING_CODE = ("report/", "cli.py", "launch/", "claims.py", "plan.py", "tuning.py", "twins.py",
                      "wandb_names.py", "training/wandb_run.py", "references.py", "findings.py")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The training code: every module of the package but those that cannot change a cell's numbers."""
    training_code = [path for path in PACKAGE_DIR.rglob("*.py")
                     if not path.relative_to(PACKAGE_DIR).as_posix().startswith(_NOT_TRAINING_CODE)]
    return source_digest(PACKAGE_DIR, training_code)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows): it moves float rounding."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """Vendor, family, model and stepping (Linux /proc/cpuinfo): a virtual machine may show only "AMD EPYC" as
    its model name, which two CPU generations that round differently share."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
    except OSError:
        return None
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if "vendor_id" not in fields:
        return None
    return (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}")


def environment() -> dict:
    import lightning
    import torch

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "lightning": lightning.__version__,
        "vgbench": vgbench.__version__, "code_fingerprint": code_fingerprint(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        # The GPU and whether float32 products ran as TF32 (cuDNN convolutions do by default): both move rounding.
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        # CPU results can depend on the thread count (reduction order): keep it with them.
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(), "cpu_id": cpu_id(),
        # The vector instruction set torch's CPU kernels run (DEFAULT, AVX2, AVX512, ...): another one sums in
        # another order, so it moves rounding like another CPU does; ATEN_CPU_CAPABILITY can lower it.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # oneDNN's cap for its convolutions and fused RNNs (vgbench/cpu_kernels.py): None where nothing capped
        # them; and the instruction set it runs, in its own words ("Intel AVX2"), which the cap and the CPU set.
        "onednn_max_cpu_isa": os.environ.get(cpu_kernels.ONEDNN_ENV), "onednn_isa": cpu_kernels.onednn_isa(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def cell_dir(results_root: Path, cell_id: str) -> Path:
    return results_root / "cells" / cell_id


def read_result(results_root: Path, cell_id: str) -> CellResult | None:
    """The cell's result, None if it has none; raises ``UnreadableResultError`` for a damaged one, or for
    one written for another cell (a folder copied or renamed by hand): its id names the config it ran."""
    path = cell_dir(results_root, cell_id) / "metrics.json"
    result = cell_result.read(path)
    if result is not None and result.cell_id != cell_id:
        raise UnreadableResultError(f"{path} holds the result of cell {result.cell_id}, not of {cell_id}")
    return result


def write_error(results_root: Path, cell_id: str, error: BaseException, launch: dict) -> dict:
    """Record a cell that raised: ``error.json`` beside where its result would be (the others go on)."""
    previous = read_error(results_root, cell_id)
    record = {
        "cell_id": cell_id, "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "attempt": (previous["attempt"] + 1) if previous else 1,
        "code_fingerprint": code_fingerprint(), "written_at": time.time(), **launch,
    }
    atomic.write_json(cell_dir(results_root, cell_id) / "error.json", record)
    return record


def read_error(results_root: Path, cell_id: str) -> dict | None:
    path = cell_dir(results_root, cell_id) / "error.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("attempt"), int):
        return {"cell_id": cell_id, "error": f"{path} is damaged", "attempt": 1, "code_fingerprint": None}
    return record


def clear_error(results_root: Path, cell_id: str) -> None:
    (cell_dir(results_root, cell_id) / "error.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class CellState:
    """What the cell files say about one cell (the truth; job accounting is not consulted).

    ``state`` is one of STATES. ``detail`` says why (the error of a failed cell,
    where a running one runs, why a result is not used).
    """

    cell_id: str
    state: str
    detail: str = ""


STATES = ("done", "running", "failed", "stale", "pending")


def cell_state(results_root: Path, cell_id: str, claim=None) -> CellState:
    """done: a current, readable result; running: a live claim (also over a stale result, being retrained);
    failed: error.json from this code; stale: a result from other code or a damaged one (trained again);
    pending: nothing yet."""
    try:
        result = read_result(results_root, cell_id)
    except UnreadableResultError as error:
        result, unreadable = None, str(error)
    else:
        unreadable = ""
    if result is not None:
        if result.environment.get("code_fingerprint") != code_fingerprint():
            unreadable = "written by other vgbench training code"
        else:
            unreadable = _probe_file_problem(cell_dir(results_root, cell_id) / "grad_profile.json")
        if not unreadable:
            return CellState(cell_id, "done")
    if claim is not None:  # retraining a stale result too
        return CellState(cell_id, "running", claim.where)
    error = read_error(results_root, cell_id)
    if error is not None and error.get("code_fingerprint") == code_fingerprint():
        return CellState(cell_id, "failed", f"attempt {error['attempt']}: {error['error']}")
    return CellState(cell_id, "stale" if unreadable else "pending", unreadable)


def _probe_file_problem(path: Path) -> str:
    """Why a cell's grad_profile.json cannot be used ('' when it can): the leaderboard's figures read its
    first record, so a missing, cut-short or emptied file makes the cell stale (retrained), not done."""
    if not path.exists():
        return "grad_profile.json is missing"
    try:
        records = json.loads(path.read_text())["records"]
        records[0]["dL_dh_norm"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        return f"grad_profile.json is damaged ({type(error).__name__}: {error})"
    return ""

