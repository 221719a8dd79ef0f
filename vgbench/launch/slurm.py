"""``slurm``: the cells as submitit job arrays on a SLURM cluster (the only module importing submitit).

What it submits: the cells to train are packed into array tasks by their
estimated cost (``vgbench plan``'s measurement), whole cell groups at a time (a
row's seeds x rates, or ``launcher.group_size`` of them; short groups together
up to ``task_minutes``, a longer one alone), each task one ``WorkUnit``. Arrays
are kept within the cluster's ``MaxArraySize`` (``scontrol show config``), chunked
into several arrays where needed. The executor is ``submitit.SlurmExecutor``,
chosen explicitly (``AutoExecutor`` would pick SLURM whenever ``srun`` is on
PATH). Its folder is ``results/launch/<timestamp>/``: the params snapshot,
``launch.json`` (array ids, units), and submitit's per-task logs.

Time limits and preemption: each task is a ``submitit.helpers.Checkpointable``.
On the USR2 that SLURM sends ``signal_delay_s`` before the limit (or a
preemption notice), submitit requeues the same unit, up to ``max_requeues``
times; the requeued task skips the cells already done, takes over its own
claim and resumes the interrupted cell from its last checkpoint
(``launcher.checkpoint_every``). Lightning's own SLURM auto-requeue is off
(run_group.build_trainer), so the two never both requeue.

A profile whose trainer asks for several devices or nodes runs each cell
alone, as ``nodes x devices`` SLURM tasks under srun: Lightning's DDP reads
its ranks from SLURM.

Waiting (the default, so ``dvc repro`` works unchanged): progress is read from
the cell files, which are the truth (``sacct`` may be absent, and submitit then
reports UNKNOWN), and the queue from ``squeue``; the wait ends when no task of
the launch is queued or running. ``--detach`` submits and returns.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

import submitit

from vgbench import atomic, cpu_kernels, plan
from vgbench.groups import group
from vgbench.launch import LAUNCHERS
from vgbench.launch.marks import cell_marks
from vgbench.launch.request import LaunchError, LaunchRequest, WorkUnit
from vgbench.launch.worker import run_unit


class CellTask(submitit.helpers.Checkpointable):
    """One array task: train a ``WorkUnit``. ``checkpoint`` (inherited) resubmits the same unit."""

    def __call__(self, unit: WorkUnit) -> dict[str, list[str]]:
        return run_unit(unit)


def cluster_max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (array indices run from 0 to MaxArraySize - 1). The launcher's
    first question to the controller: one that does not answer stops the launch before anything is written."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError("the SLURM controller did not answer `scontrol show config` within 60 s; nothing was "
                          "submitted") from None
    if out.returncode != 0:
        raise LaunchError(f"`scontrol show config` failed ({out.stderr.strip() or out.returncode}): is the SLURM "
                          f"controller up (`sinfo`)? Nothing was submitted")
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    if not match:
        raise LaunchError("`scontrol show config` names no MaxArraySize; nothing was submitted")
    return int(match.group(1))


def chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def on_gpus(request: LaunchRequest) -> bool:
    return request.params.active.trainer.accelerator in ("gpu", "cuda")


def ddp_tasks(request: LaunchRequest) -> tuple[int, int]:
    """(nodes, tasks per node) of one cell: several when the trainer asks for DDP across devices or nodes."""
    return plan.ddp_layout(request.params.active.trainer.model_dump())


def executor_for(request: LaunchRequest) -> submitit.SlurmExecutor:
    settings = request.settings.slurm
    executor = submitit.SlurmExecutor(folder=request.folder / "%j", max_num_timeout=settings.max_requeues,
                                      python=sys.executable)
    nodes, tasks_per_node = ddp_tasks(request)
    gpus = tasks_per_node if on_gpus(request) else settings.gpus_per_node
    parameters = {
        "job_name": f"vgbench-{request.profile}", "time": settings.time_minutes,
        "cpus_per_task": settings.cpus_per_task, "nodes": nodes, "ntasks_per_node": tasks_per_node,
        "array_parallelism": settings.array_parallelism,
        # The kernel pin goes into the job script: a cluster may not pass the submitting shell's environment on.
        "setup": [*settings.setup, *(f"export {key}={value}" for key, value in
                                     cpu_kernels.environment(request.params.active.trainer.cpu_capability).items())],
        "additional_parameters": dict(settings.sbatch),
        "partition": settings.partition, "account": settings.account, "qos": settings.qos,
        "gpus_per_node": gpus or None,
        "mem": f"{round(settings.mem_gb * 1024)}M" if settings.mem_gb else None,
    }
    executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
    return executor


def estimate_costs(request: LaunchRequest) -> dict:
    """Per-cell cost estimates for packing, from the step costs ``vgbench plan`` kept (timing what is missing).

    A GPU profile is packed with costs measured on CUDA (``vgbench plan --device cuda`` on a GPU node);
    where none were measured and this node has no GPU, CPU timings stand in, which overestimates every
    cell alike: fewer cells per task, never a task over its limit.
    """
    import torch

    gpu = on_gpus(request)
    path = plan.costs_path(request.results_root)
    device = "cuda" if gpu else "cpu"
    known = plan.load_costs(path, device)
    missing = {plan.shape_key(cell) for cell in request.cells} - set(known)
    if missing and gpu and not torch.cuda.is_available():
        device, known = "cpu", plan.load_costs(path, "cpu")  # one device's timings throughout
        missing = {plan.shape_key(cell) for cell in request.cells} - set(known)
    if missing:
        print(f"slurm: timing {len(missing)} model shapes on {device} to pack the cells into tasks "
              f"(`vgbench plan` keeps such timings in {path})", flush=True)
    estimates = plan.estimate(request.cells, device, known=known)
    plan.save_costs(path, device, known)
    return estimates


def plan_units(request: LaunchRequest) -> list[WorkUnit]:
    """Array tasks (``plan.slurm_tasks``, which ``vgbench plan`` counts too): one cell group each for DDP
    profiles, else whole cell groups (vgbench/groups.py) packed by estimated cost (the sum of their cells': an
    upper bound, since a group shares the per-step cost)."""
    cell_groups = group(request.cells, request.settings.group_size)
    tasks = plan.slurm_tasks(cell_groups, lambda: {cell_id: cost.seconds
                                                   for cell_id, cost in estimate_costs(request).items()},
                             request.settings.slurm.task_minutes * 60)
    return [request.unit([cell.cell_id for members in task for cell in members]) for task in tasks]


def squeue_states(job_ids: list[str]) -> dict[str, int] | None:
    """How many tasks of these jobs (or arrays) are in each state; empty when none is left; None when the
    controller did not answer (busy or restarting: no proof that the jobs ended, as claims.py holds too)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        # squeue fails this way only when it knows none of the ids: every job finished long ago.
        return {} if "Invalid job id" in out.stderr else None
    return dict(Counter(out.stdout.split()))


def file_progress(request: LaunchRequest) -> dict[str, int]:
    """Done and failed cells of the launch, from the cell files alone (cheap: one stat each): a file counts
    once it differs from its mark in the request (``request.marks``, taken before submission). Every
    launched cell needed training, so a file still carrying its mark is an old one (a stale result, one
    --force replaces, an earlier failure)."""
    done = failed = 0
    for cell in request.cells:
        metrics_then, error_then = request.marks[cell.cell_id]
        metrics, error = cell_marks(request.results_root, cell.cell_id)
        if metrics is not None and metrics != metrics_then:
            done += 1
        elif error is not None and error != error_then:
            failed += 1
    return {"done": done, "failed": failed}


def wait(request: LaunchRequest, array_ids: list[str]) -> None:
    """Print progress until squeue knows none of the arrays. A controller that does not answer proves
    nothing (a restart takes minutes): keep asking, up to ``slurm.unanswered_minutes`` in a row."""
    total, last, unanswered_since = len(request.cells), None, None
    patience = request.settings.slurm.unanswered_minutes
    while True:
        asked = time.monotonic()
        queue = squeue_states(array_ids)
        if queue is None and unanswered_since is None:
            unanswered_since = asked
        elif queue is not None:
            unanswered_since = None
        progress = file_progress(request)
        tasks = ("unknown (squeue did not answer; asking again)" if queue is None else
                 ", ".join(f"{n} {state.lower()}" for state, n in sorted(queue.items())) or "none queued")
        line = f"slurm: {progress['done']}/{total} cells done, {progress['failed']} failed; tasks {tasks}"
        if line != last:
            print(line, flush=True)
            last = line
        if queue == {}:
            return
        silent_minutes = (time.monotonic() - unanswered_since) / 60 if unanswered_since is not None else 0.0
        if patience is not None and silent_minutes > patience:
            raise LaunchError(
                f"squeue has not answered for {patience:g} minutes (launcher.slurm.unanswered_minutes); stopped "
                f"waiting. The arrays {', '.join(array_ids)} were submitted and may still be running: `vgbench "
                f"status` counts the results as they land, `scancel {' '.join(array_ids)}` cancels them")
        time.sleep(request.settings.slurm.poll_seconds)


@LAUNCHERS.register("slurm")
def launch_slurm(request: LaunchRequest) -> bool:
    missing = [command for command in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(command) is None]
    if missing:
        raise LaunchError(f"the slurm launcher needs SLURM's commands on PATH; missing: {', '.join(missing)} "
                          f"(run on a cluster's login node, or `.ci/slurm-up` for a one-node test cluster)")
    limit = cluster_max_array_size()
    units = plan_units(request)
    if request.settings.slurm.max_array_size:
        limit = min(limit, request.settings.slurm.max_array_size)
    executor = executor_for(request)
    arrays = []
    for part in chunks(units, limit):
        jobs = executor.map_array(CellTask(), part)
        array_id = jobs[0].job_id.split("_")[0]
        arrays.append({"array_id": array_id, "tasks": len(part), "job_ids": [job.job_id for job in jobs],
                       "cells": [list(unit.cell_ids) for unit in part]})
        print(f"slurm: submitted array {array_id}: {len(part)} tasks, "
              f"{sum(len(unit.cell_ids) for unit in part)} cells", flush=True)
    atomic.write_text(request.folder / "launch.json", json.dumps(
        {"profile": request.profile, "params": str(request.params_path), "max_array_size": limit,
         "arrays": arrays}, indent=2) + "\n")
    array_ids = [entry["array_id"] for entry in arrays]
    if request.detach:
        print(f"slurm: detached; watch with `vgbench status`, logs in {request.folder}; "
              f"`scancel {' '.join(array_ids)}` cancels", flush=True)
        return False
    wait(request, array_ids)
    return True
