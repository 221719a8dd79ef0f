"""``local``: N worker processes on this machine.

Each worker is ``python -m vgbench.launch`` with the whole list of cells
to train; the claims hand each cell to exactly one of them, so a worker that
finishes early simply takes the next free cell (no scheduler of our own). On
GPUs, worker k is pinned to ``gpus[k % len(gpus)]`` through
CUDA_VISIBLE_DEVICES (``cells_per_gpu`` workers share a GPU); on CPU there are
by default as many workers as cores / threads. Each worker gets the cell's
``trainer.threads`` where it pins them, else ``launcher.threads``, else its
share of the CPUs (``worker_threads``). Every line a
worker prints is shown prefixed with its slot and kept in
``results/launch/<timestamp>/worker-<k>.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from vgbench import atomic, cpu_kernels
from vgbench.launch import LAUNCHERS
from vgbench.launch.request import LaunchError, LaunchRequest


def worker_count(request: LaunchRequest) -> int:
    settings = request.settings
    if settings.jobs:
        return settings.jobs
    if settings.gpus:
        return len(settings.gpus) * settings.cells_per_gpu
    threads = request.params.active.trainer.threads or settings.threads or 1
    return max(1, (os.cpu_count() or 1) // threads)


def worker_threads(request: LaunchRequest, workers: int) -> int | None:
    """Torch threads per worker where the cells leave them to the launcher (None where they pin their own):
    ``launcher.threads``, else the machine's CPUs shared among the workers. Torch's own default, every CPU in
    every process, had 4 workers sharing a GPU on 16 CPUs run 64 threads (load average 21, bench/README.md)."""
    if request.cells_pin_threads:
        return None
    return request.settings.threads or max(1, (os.cpu_count() or 1) // workers)


def worker_environment(request: LaunchRequest, slot: int) -> dict[str, str]:
    env = {**os.environ, **cpu_kernels.environment(request.params.active.trainer.cpu_capability)}
    if request.settings.gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(request.settings.gpus[slot % len(request.settings.gpus)])
    return env


def _relay(stream, prefix: str, log: Path) -> None:
    with open(log, "a") as handle:
        for line in stream:
            handle.write(line)
            handle.flush()
            print(f"{prefix} {line}", end="", flush=True)


def check_devices(request: LaunchRequest) -> None:
    """Each worker sees one GPU of ``launcher.gpus``: a cell that asks for several (DDP) could never start."""
    devices = request.params.active.trainer.devices
    if request.settings.gpus and isinstance(devices, int) and devices > 1:  # "auto" finds the one it sees
        raise LaunchError(f"trainer.devices = {devices!r}, but the local launcher pins each worker to one GPU of "
                          f"launcher.gpus {request.settings.gpus}: for a cell on several GPUs set launcher.gpus: [] "
                          f"and jobs: 1 (the worker sees every GPU), or use the slurm launcher")


@LAUNCHERS.register("local")
def launch_local(request: LaunchRequest) -> bool:
    check_devices(request)
    ids = [cell.cell_id for cell in request.cells]
    count = min(worker_count(request), max(1, len(ids)))
    print(f"local: {count} worker processes" + (f" on GPUs {request.settings.gpus}" if request.settings.gpus else ""),
          flush=True)
    workers, relays = [], []
    for slot in range(count):
        report = request.folder / f"worker-{slot}.report.json"
        unit = request.unit(ids, worker=slot, report_path=str(report), threads=worker_threads(request, count))
        unit_path = request.folder / f"worker-{slot}.unit.json"
        atomic.write_text(unit_path, json.dumps(asdict(unit), indent=2))
        process = subprocess.Popen([sys.executable, "-m", "vgbench.launch", str(unit_path)],
                                   env=worker_environment(request, slot), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[w{slot}]",
                                                      request.folder / f"worker-{slot}.log"), daemon=True)
        relay.start()
        workers.append((slot, process, report))
        relays.append(relay)
    try:
        for _, process, _ in workers:
            process.wait()
    except BaseException:  # interrupted: stop the workers (they release their claims) and pass it on
        for _, process, _ in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in workers:
            process.wait()
        raise
    for relay in relays:
        relay.join()
    for slot, process, report in workers:
        if not report.exists():  # died before its cells were through (its cells show as pending)
            print(f"local: worker {slot} ended with exit status {process.returncode} and no report; see "
                  f"{request.folder / f'worker-{slot}.log'}", file=sys.stderr, flush=True)
    return True
