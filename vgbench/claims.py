"""Claims: each cell is trained by one process at a time, whoever launched it.

Before training a cell, a worker (serial, a local worker process, a SLURM array
task) claims it by creating ``results/claims/<cell_id>.json`` with its host,
pid, the pid's start time and its SLURM job id. Creation is atomic (a complete
file is hard-linked into place, which fails if one is there; the same works on
NFS), so two workers, two launches, or a launch and a hand-run ``vgbench
train`` never train the same cell. A claim whose owner is gone is taken over:

- a claim made inside a SLURM job is alive while ``squeue`` lists the job. Within
  one job, a claim from an earlier run of it (a lower ``SLURM_RESTART_COUNT``: the
  task was requeued, its processes are gone) is taken over; one from this same run
  (several local workers in one allocation share the job id) lives while its pid
  does, as outside SLURM;
- otherwise, on the same host, while the pid lives and started when the claim
  says (pids are reused);
- a claim from another host outside SLURM cannot be checked from here and is
  trusted: ``vgbench status`` shows where it is; delete the file to free it.

The check-then-replace of a stale claim runs under an ``flock`` of
``results/claims/.lock``, so two workers cannot both take over the same claim.
Claims live outside ``results/cells`` (a DVC output) on purpose.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from vgbench import atomic

ALIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                      "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


def claims_dir(results_root: Path) -> Path:
    return results_root / "claims"


def claim_path(results_root: Path, cell_id: str) -> Path:
    return claims_dir(results_root) / f"{cell_id}.json"


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # after the command name, which may hold spaces


def current_slurm_job() -> str | None:
    """This process's SLURM job as squeue names it: ``<array job>_<task>`` for array tasks."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def current_slurm_restart() -> int:
    """How many times SLURM has requeued this job (0 for its first run, and outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def is_rank_zero() -> bool:
    """False in the extra processes of a DDP cell (Lightning's, torchrun's or SLURM's ranks > 0).

    Those processes rerun ``vgbench train`` and must train exactly the cells rank 0
    trains: they neither claim nor skip a cell because rank 0 holds its claim.
    """
    if int(os.environ.get("RANK", "0")) or int(os.environ.get("LOCAL_RANK", "0")):
        return False
    return not (int(os.environ.get("SLURM_NTASKS", "1")) > 1 and int(os.environ.get("SLURM_PROCID", "0")))


@dataclass(frozen=True)
class Claim:
    cell_id: str
    token: str
    host: str
    pid: int
    pid_start: int | None
    slurm_job_id: str | None
    launcher: str
    claimed_at: float
    slurm_restart: int = 0  # the job's SLURM_RESTART_COUNT when claimed (absent in claims of older versions)

    @property
    def where(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"{self.host} pid {self.pid}{job} ({self.launcher})"

    def is_mine(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()


def queued_slurm_jobs() -> set[str] | None:
    """Ids of every job and array task SLURM still holds (``123``, ``123_4``); None where there is no squeue."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%A|%T"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None  # a busy controller is no proof of death
    if out.returncode != 0:
        return None
    alive = set()
    for line in out.stdout.splitlines():
        name, job_id, state = line.strip().split("|")
        if state in ALIVE_SLURM_STATES:
            alive.update((name, job_id))  # array task 123_4 is also job 128 to SLURM
    return alive


def is_alive(claim: Claim, queued: set[str] | None = None) -> bool:
    """``queued``: ``queued_slurm_jobs()`` when checking many claims (asked here when not given)."""
    if claim.slurm_job_id:
        if claim.slurm_job_id == current_slurm_job():
            if claim.slurm_restart < current_slurm_restart():
                return False  # this job was requeued since: the claim is its own earlier run's
            if claim.host != socket.gethostname():
                return True  # another node of this same run of the job, which is running: us
            return _pid_lives(claim)  # a sibling process of this run (local workers in one allocation)
        queued = queued if queued is not None else queued_slurm_jobs()
        if queued is not None:
            return claim.slurm_job_id in queued
    if claim.host == socket.gethostname():
        return _pid_lives(claim)
    return True  # another host, outside SLURM: nothing here can tell


def _pid_lives(claim: Claim) -> bool:
    """The claim's process still runs: its pid is there and started when the claim says (pids are reused)."""
    start = _process_start(claim.pid)
    return start is not None and (claim.pid_start is None or start == claim.pid_start)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT held back until the block ends (then delivered): a stop signal arriving between the
    creation of a claim file and its caller's note of it (or among the releases) would leave a claim that no
    one releases until its process is found dead. Main thread only (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def read_claim(results_root: Path, cell_id: str) -> Claim | None:
    try:
        return Claim(**json.loads(claim_path(results_root, cell_id).read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError):
        # Cannot happen with our atomic creation; a hand-edited file is not a claim.
        return Claim(cell_id, "unreadable", "?", -1, None, None, "?", 0.0)


@contextmanager
def _locked(results_root: Path) -> Iterator[None]:
    folder = claims_dir(results_root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create(path: Path, claim: Claim) -> bool:
    tmp = path.with_name(f".{path.name}.{claim.token}.tmp")
    tmp.write_text(json.dumps(asdict(claim), indent=2) + "\n")
    try:
        # On the disk before its link: a claim a power cut emptied would read as another host's, live forever.
        atomic.sync_file(tmp)
        os.link(tmp, path)  # atomic, and fails if a claim is there
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def try_claim(results_root: Path, cell_id: str, launcher: str) -> Claim | None:
    """Claim ``cell_id`` for this process; None if a live worker holds it."""
    pid = os.getpid()
    claim = Claim(cell_id=cell_id, token=uuid.uuid4().hex, host=socket.gethostname(), pid=pid,
                  pid_start=_process_start(pid), slurm_job_id=current_slurm_job(), launcher=launcher,
                  claimed_at=time.time(), slurm_restart=current_slurm_restart())
    path = claim_path(results_root, cell_id)
    with _locked(results_root):
        if _create(path, claim):
            return claim
        held = read_claim(results_root, cell_id)
        if held is not None and is_alive(held):
            return None
        path.unlink(missing_ok=True)  # the owner is gone: take over
        return claim if _create(path, claim) else None


def release(results_root: Path, claim: Claim) -> None:
    """Remove ``claim`` if it is still ours (a takeover may have replaced it)."""
    with _locked(results_root):
        held = read_claim(results_root, claim.cell_id)
        if held is not None and held.token == claim.token:
            claim_path(results_root, claim.cell_id).unlink(missing_ok=True)


def live_claims(results_root: Path) -> dict[str, Claim]:
    """Every claim whose owner is still alive, by cell id."""
    folder = claims_dir(results_root)
    held = [read_claim(results_root, path.name.removesuffix(".json"))
            for path in (sorted(folder.glob("*.json")) if folder.exists() else [])]
    held = [claim for claim in held if claim is not None]
    queued = queued_slurm_jobs() if any(claim.slurm_job_id for claim in held) else None
    return {claim.cell_id: claim for claim in held if is_alive(claim, queued)}
