"""The slurm launcher on a real one-node SLURM cluster (``.ci/slurm-up`` starts one; CI runs it).

Skipped, with the reason, where SLURM is not installed; failing where it is
installed but the cluster does not answer (``.ci/run`` sets it up, so there a
dead cluster is an error, not a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from submitit.slurm.slurm import SlurmJob

from tests.test_launch import comparable, metrics_of, vgbench, write_params
from vgbench import claims, results
from vgbench.config import load_params
from vgbench.groups import group_id
from vgbench.launch.slurm import cluster_max_array_size, squeue_states
from vgbench.matrix import expand

# One pytest-xdist worker runs them all, one after another: they share the cluster's two CPUs, and their waits
# (a first checkpoint, a requeue) are sized for a cluster that no other test's jobs fill.
pytestmark = [pytest.mark.skipif(shutil.which("sbatch") is None,
                                 reason="SLURM is not installed here (`.ci/slurm-up` installs and starts one)"),
              pytest.mark.xdist_group("slurm")]

SLURM = {"name": "slurm", "threads": 1, "checkpoint_every": 1,
         "slurm": {"cpus_per_task": 1, "time_minutes": 10, "task_minutes": 0.0001, "max_array_size": 4,
                   "poll_seconds": 1}}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    assert state.returncode == 0 and state.stdout.split()[0] in ("idle", "mixed", "allocated"), (
        f"SLURM is installed but its cluster is not up ({state.stdout.strip() or state.stderr.strip()}): "
        f"run .ci/slurm-up")


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def launch_folder(results_root: Path) -> Path:
    (folder,) = [path for path in (results_root / "launch").iterdir() if path.is_dir()]
    return folder


def launch_json(results_root: Path) -> dict:
    return json.loads((launch_folder(results_root) / "launch.json").read_text())


def cells_by_checkpoint(params: Path) -> dict[str, str]:
    """Checkpoint folder (a group id) -> cell id: the tiny profile's rows hold one seed and one rate, so every
    cell trains as a group of one, checkpointed under its group's id."""
    return {group_id([cell]): cell.cell_id for cell in expand(load_params(params).active)}


def test_max_array_size_is_read_from_the_cluster():
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in config.splitlines() if line.startswith("MaxArraySize"))
    assert cluster_max_array_size() == int(line.split("=")[1]) > 4


def test_slurm_arrays_give_the_serial_results_and_leaderboard(tiny_params, tiny_data_root, tmp_path):
    """Four families' cells (a DBN stack pretrained inside its task, the MLP that is the unpretrained stack, a GRU
    on copy memory, a highway net), one cell per array task, chunked into arrays of at most 3 (max_array_size).
    (The whole tiny profile, 13 tasks that each start Python, torch and Lightning, cost CI two minutes for no
    path these do not take.)"""
    only = "--only=-d3-"
    (tmp_path / "serial").mkdir()
    serial_params = write_params(tmp_path / "serial")
    serial = vgbench(serial_params, tiny_data_root, tmp_path / "serial" / "results", "train", only)
    assert serial.returncode == 0, serial.stderr
    slurm_dir = tmp_path / "slurm"
    slurm_dir.mkdir()
    params = write_params(slurm_dir, {**SLURM, "slurm": {**SLURM["slurm"], "max_array_size": 3}})
    done = vgbench(params, tiny_data_root, slurm_dir / "results", "train", only)
    assert done.returncode == 0, done.stdout + done.stderr
    cells = len([cell for cell in expand(tiny_params.active) if "-d3-" in cell.cell_id])
    assert cells == 4 and {cell_id.split("-")[0] for cell_id in metrics_of(tmp_path / "serial" / "results")} == \
        {"dbn", "mlp", "rnn", "highway"}  # the unpretrained DBN stack is stored as its MLP twin
    launch = launch_json(slurm_dir / "results")
    assert [entry["tasks"] for entry in launch["arrays"]] == [3, 1]  # chunked
    assert done.stdout.count("slurm: submitted array") == len(launch["arrays"])

    expected, got = metrics_of(tmp_path / "serial" / "results"), metrics_of(slurm_dir / "results")
    assert set(got) == set(expected) and len(got) == cells
    jobs = set()
    for cell_id, metrics in got.items():
        assert comparable(metrics) == comparable(expected[cell_id]), cell_id
        assert metrics["launch"]["launcher"] == "slurm" and metrics["launch"]["slurm_job_id"]
        jobs.add(metrics["launch"]["slurm_job_id"])
    assert len(jobs) == cells  # one array task each
    boards = []
    for root, params_file in ((tmp_path / "serial" / "results", serial_params), (slurm_dir / "results", params)):
        board = vgbench(params_file, tiny_data_root, root, "leaderboard", "--no-wandb")
        assert board.returncode == 0, board.stderr
        # Timings and the provenance columns (which params file, which dvc.lock) are the run's, not the results'.
        boards.append(pd.read_csv(root / "leaderboard.csv").filter(regex="^(?!wall_seconds|provenance_)"))
    pd.testing.assert_frame_equal(boards[0], boards[1])
    assert (slurm_dir / "results" / "leaderboard.md").read_text().count("## ") == \
        (tmp_path / "serial" / "results" / "leaderboard.md").read_text().count("## ")


def test_a_pinned_profile_s_kernels_reach_the_node_through_the_job_script(tiny_data_root, tmp_path):
    """The submitting shell has no ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA; the job script exports the
    profile's pin ("default", below every x86-64 CPU's best), so the node's group runs those kernels instead
    of refusing to train (vgbench/cpu_kernels.py)."""
    from vgbench import cpu_kernels

    if not cpu_kernels.applies():
        pytest.skip("the pin applies to x86-64 CPUs only")
    params = write_params(tmp_path, SLURM)
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["trainer"] = {"threads": 1, "cpu_capability": "default"}
    params.write_text(yaml.safe_dump(raw))
    environment = {key: value for key, value in os.environ.items()
                   if key not in (cpu_kernels.ENV, cpu_kernels.ONEDNN_ENV)}
    done = subprocess.run(
        [sys.executable, "-m", "vgbench", "train", "--only", "mlp-he_relu-mnist1d-d2", "--params", str(params),
         "--data-root", str(tiny_data_root), "--results-root", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment)
    assert done.returncode == 0, done.stdout + done.stderr
    (metrics,) = metrics_of(tmp_path / "results").values()
    assert metrics["launch"]["launcher"] == "slurm" and metrics["launch"]["slurm_job_id"]
    assert (metrics["environment"]["cpu_capability"], metrics["environment"]["onednn_max_cpu_isa"]) == \
        ("DEFAULT", "SSE41")


def _slow_cell_params(folder: Path) -> Path:
    folder.mkdir()
    return write_params(folder, SLURM, {"max_epochs": 40})


def test_scancel_then_relaunch_trains_only_what_is_left_and_resumes(tiny_data_root, tmp_path):
    params = _slow_cell_params(tmp_path / "run")
    root = tmp_path / "run" / "results"
    only = ("--only", "mlp-he_relu")  # two cells, one array task each
    detached = vgbench(params, tiny_data_root, root, "train", *only, "--detach")
    assert detached.returncode == 0, detached.stderr
    array_id = launch_json(root)["arrays"][0]["array_id"]
    checkpoints = root / "checkpoints"
    wait_for(lambda: checkpoints.exists() and any(checkpoints.glob("*/last.ckpt")), 240, "a first checkpoint")
    subprocess.run(["scancel", array_id], check=True)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", array_id], capture_output=True, text=True).stdout,
             60, "the cancelled array to leave the queue")
    before = {path.parent.name: path.stat().st_mtime for path in (root / "cells").glob("*/metrics.json")}
    cell_of = cells_by_checkpoint(params)
    interrupted = [cell_of[p.parent.name] for p in checkpoints.glob("*/last.ckpt")
                   if cell_of[p.parent.name] not in before]
    assert interrupted

    shutil.rmtree(launch_folder(root))
    again = vgbench(params, tiny_data_root, root, "train", *only)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(before)} done" in again.stdout and f"{2 - len(before)} to train" in again.stdout
    for cell_id, mtime in before.items():  # finished cells were not trained again
        assert (results.cell_dir(root, cell_id) / "metrics.json").stat().st_mtime == mtime
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = vgbench(write_params(reference_dir, {"threads": 1}, {"max_epochs": 40}), tiny_data_root,
                        reference_dir / "results", "train", *only)
    assert reference.returncode == 0, reference.stderr
    expected = metrics_of(reference_dir / "results")
    for cell_id in interrupted:
        result = results.read_result(root, cell_id)
        assert result.launch.resumed_from_epoch is not None and result.launch.resumed_from_epoch >= 1
        assert comparable(result.model_dump()) == comparable(expected[cell_id])


def test_a_timed_out_task_is_requeued_and_resumes(tiny_data_root, tmp_path):
    params = _slow_cell_params(tmp_path / "run")
    root = tmp_path / "run" / "results"
    detached = vgbench(params, tiny_data_root, root, "train", "--only", "mlp-he_relu-mnist1d-d6", "--detach")
    assert detached.returncode == 0, detached.stderr
    (job_id,) = launch_json(root)["arrays"][0]["job_ids"]  # one task: submitit submits a plain job
    (cell_id,) = launch_json(root)["arrays"][0]["cells"][0]
    checkpoint = {cell: group for group, cell in cells_by_checkpoint(params).items()}[cell_id]
    wait_for(lambda: (root / "checkpoints" / checkpoint / "last.ckpt").exists(), 240, "a first checkpoint")
    job = SlurmJob(folder=launch_folder(root) / "%j", job_id=job_id)
    job._interrupt(timeout=True)  # what SLURM sends before the time limit: submitit's USR2
    metrics = results.cell_dir(root, cell_id) / "metrics.json"
    wait_for(metrics.exists, 300, "the requeued task to finish the cell")
    result = results.read_result(root, cell_id)
    assert result.launch.resumed_from_epoch is not None and result.launch.resumed_from_epoch >= 1
    assert result.launch.slurm_job_id == job_id  # the same task, requeued
    log = "".join(path.read_text() for path in launch_folder(root).glob("*/*_log.err"))
    # slurmstepd's own record that the job was requeued (not cancelled or failed), after submitit caught USR2
    assert "Caught signal SIGUSR2" in log and re.search(rf"JOB {job_id} ON \S+ CANCELLED AT \S+ DUE TO JOB REQUEUE",
                                                        log), log


def test_a_claim_inside_a_slurm_job_lives_as_long_as_the_job(tmp_path):
    submitted = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "out"), "--wrap", "sleep 60"],
                               capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    path = claims.claim_path(tmp_path, "cell-s")
    path.parent.mkdir(parents=True)
    # Another host's claim: only SLURM can say whether its owner lives.
    path.write_text(json.dumps({"cell_id": "cell-s", "token": "t", "host": "elsewhere", "pid": 1, "pid_start": None,
                                "slurm_job_id": job_id, "launcher": "slurm", "claimed_at": 0.0}))
    try:
        wait_for(lambda: job_id in (claims.queued_slurm_jobs() or set()), 30, "the job to be queued")
        assert set(claims.live_claims(tmp_path)) == {"cell-s"}
        assert claims.try_claim(tmp_path, "cell-s", "test") is None
    finally:
        subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: job_id not in claims.queued_slurm_jobs(), 60, "the job to leave the queue")
    assert claims.live_claims(tmp_path) == {}
    assert claims.try_claim(tmp_path, "cell-s", "test") is not None


def _no_controller(folder: Path) -> Path:
    """A copy of this cluster's slurm.conf whose controller port nobody listens on: SLURM's own commands,
    pointed at it with SLURM_CONF, fail as they do when the controller is down or restarting."""
    conf = folder / "slurm.conf"
    conf.write_text(Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text() + "\nSlurmctldPort=6999\n")
    return conf


def test_a_controller_that_does_not_answer_is_no_proof_that_the_jobs_ended(tmp_path, monkeypatch):
    """The launcher waits on squeue. An id the controller does not know is a job that ended long ago (done
    waiting); a controller that does not answer (busy, restarting) proves nothing, and the launcher used to
    stop waiting on it, exiting 1 with the arrays still running."""
    assert squeue_states(["99999999"]) == {}
    monkeypatch.setenv("SLURM_CONF", str(_no_controller(tmp_path)))
    assert squeue_states(["99999999"]) is None


def test_a_waiting_launch_gives_up_on_a_controller_that_stays_away(tiny_params, tmp_path, monkeypatch, capsys):
    """It kept asking for ever (once per poll, silently after the first line). After
    ``launcher.slurm.unanswered_minutes`` without an answer it stops, says what was submitted and how to
    follow it, and leaves the jobs alone (LaunchError: `train` exits 1 with the message)."""
    from vgbench.launch.request import LaunchError, LaunchRequest
    from vgbench.launch.slurm import wait

    launcher = tiny_params.active.launcher
    settings = launcher.model_copy(update={"name": "slurm", "slurm": launcher.slurm.model_copy(
        update={"unanswered_minutes": 0.001, "poll_seconds": 0.01})})
    request = LaunchRequest(params=tiny_params, params_path=tmp_path / "params.yaml", profile="tiny", cells=[],
                            data_root=tmp_path, results_root=tmp_path, folder=tmp_path, settings=settings)
    monkeypatch.setenv("SLURM_CONF", str(_no_controller(tmp_path)))
    with pytest.raises(LaunchError) as error:
        wait(request, ["4242", "4243"])
    assert str(error.value).startswith("squeue has not answered for 0.001 minutes (launcher.slurm.unanswered_minutes)")
    assert "arrays 4242, 4243 were submitted" in str(error.value) and "`scancel 4242 4243`" in str(error.value)
    assert "tasks unknown (squeue did not answer; asking again)" in capsys.readouterr().out


def test_a_launch_without_a_controller_stops_with_a_message_and_leaves_nothing(tiny_data_root, tmp_path):
    params = write_params(tmp_path, launcher=SLURM)
    root = tmp_path / "results"
    done = vgbench(params, tiny_data_root, root, "train", "--only", "mlp-he_relu-mnist1d-d2",
                   env={"SLURM_CONF": str(_no_controller(tmp_path))})
    assert done.returncode == 1 and "error: `scontrol show config` failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Nothing was submitted" in done.stderr
    launches = root / "launch"
    assert not launches.exists() or not any(launches.iterdir())  # no snapshot, no step costs
