"""The launcher layer on this machine: claims, the local launcher, failures, status and resuming a killed cell.

Everything runs for real: ``vgbench train`` subprocesses, worker processes,
SIGKILL sent to a training process, W&B offline runs read back from disk.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.wandb_offline import read_run
from vgbench import atomic, claims, results
from vgbench.config import load_params
from vgbench.groups import group_id
from vgbench.matrix import expand
from vgbench.wandb_names import cell_run_id, machine_tag

# Timings and provenance; `group` too: which cells shared a cell's group changes none of its numbers.
IGNORED = {"fit_seconds", "wall_seconds", "probe_seconds", "probe_overhead_fraction", "environment", "launch",
           "group", "wandb"}


def write_params(tmp_path: Path, launcher: dict | None = None, training: dict | None = None,
                 wandb_mode: str = "disabled", seeds: list[int] | None = None) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "tiny"
    raw["wandb"]["mode"] = wandb_mode
    tiny = raw["profiles"]["tiny"]
    tiny["launcher"] = launcher or {"threads": 1}
    tiny["training"].update(training or {})
    if seeds is not None:
        tiny["seeds"] = seeds
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def vgbench(params: Path, data_root: Path, results_root: Path, *args: str, env: dict | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgbench", *args, "--params", str(params), "--data-root", str(data_root),
         "--results-root", str(results_root)],
        capture_output=True, text=True, timeout=timeout, cwd=params.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def metrics_of(results_root: Path) -> dict[str, dict]:
    return {folder.name: json.loads((folder / "metrics.json").read_text())
            for folder in sorted((results_root / "cells").iterdir()) if (folder / "metrics.json").exists()}


def comparable(metrics: dict) -> dict:
    """What must not depend on where and how a cell ran: everything but timings and provenance."""
    kept = {key: value for key, value in metrics.items() if key not in IGNORED}
    if kept.get("pretraining"):
        kept["pretraining"] = {k: v for k, v in kept["pretraining"].items() if k != "seconds"}
    return kept


# -- claims -------------------------------------------------------------------------------------------------

def test_a_claim_is_exclusive_while_its_owner_lives(tmp_path):
    first = claims.try_claim(tmp_path, "cell-a", "test")
    assert first is not None and claims.read_claim(tmp_path, "cell-a").token == first.token
    assert claims.try_claim(tmp_path, "cell-a", "test") is None  # this process is alive
    assert set(claims.live_claims(tmp_path)) == {"cell-a"}
    claims.release(tmp_path, first)
    assert claims.read_claim(tmp_path, "cell-a") is None


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = claims.claim_path(tmp_path, "cell-b")
    path.parent.mkdir(parents=True)
    import socket

    path.write_text(json.dumps({"cell_id": "cell-b", "token": "old", "host": socket.gethostname(), "pid": gone.pid,
                                "pid_start": 1, "slurm_job_id": None, "launcher": "test", "claimed_at": 0.0}))
    assert claims.live_claims(tmp_path) == {}
    taken = claims.try_claim(tmp_path, "cell-b", "test")
    assert taken is not None and claims.read_claim(tmp_path, "cell-b").token == taken.token != "old"


def test_a_reused_pid_does_not_keep_a_claim_alive(tmp_path):
    mine = claims.try_claim(tmp_path, "cell-c", "test")
    path = claims.claim_path(tmp_path, "cell-c")
    record = json.loads(path.read_text())
    record["pid_start"] += 1  # same pid, another process start: the pid was reused
    path.write_text(json.dumps(record))
    assert not claims.is_alive(claims.read_claim(tmp_path, "cell-c"))
    assert claims.try_claim(tmp_path, "cell-c", "test") not in (None, mine)


def _claim_from_another_process(root: Path, cell_id: str, environment: dict[str, str]) -> bool:
    code = (f"from pathlib import Path; from vgbench import claims; "
            f"print(claims.try_claim(Path({str(root)!r}), {cell_id!r}, 'test') is not None)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-c", code], env={**env, **environment}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_processes_of_one_slurm_job_respect_each_others_claims_and_a_requeued_run_takes_its_own_over(
        tmp_path, monkeypatch):
    """Several local workers under one sbatch/salloc share a job id. A live sibling's claim must hold (it
    was taken as "requeued" and the cells trained twice); a claim of the job's earlier run (before SLURM
    requeued it: a lower SLURM_RESTART_COUNT) is taken over."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    held = claims.try_claim(tmp_path, "cell-j", "local")
    assert held is not None and held.slurm_job_id == "777" and held.slurm_restart == 0
    sibling = {"SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "0"}
    assert not _claim_from_another_process(tmp_path, "cell-j", sibling)  # this process lives: refused
    assert claims.read_claim(tmp_path, "cell-j").token == held.token
    # The same job after a requeue: this run's processes are gone to it, whatever pid they had.
    assert _claim_from_another_process(tmp_path, "cell-j", {**sibling, "SLURM_RESTART_COUNT": "1"})
    assert claims.read_claim(tmp_path, "cell-j").slurm_restart == 1
    # A claim from another node of this same run of the job: alive (the job runs: it is us).
    path = claims.claim_path(tmp_path, "cell-k")
    path.write_text(json.dumps({"cell_id": "cell-k", "token": "t", "host": "elsewhere", "pid": 1, "pid_start": None,
                                "slurm_job_id": "777", "launcher": "local", "claimed_at": 0.0}))  # an older claim
    assert claims.is_alive(claims.read_claim(tmp_path, "cell-k"))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert not claims.is_alive(claims.read_claim(tmp_path, "cell-k"))


def _race(args) -> bool:
    root, barrier_file = args
    while not Path(barrier_file).exists():
        time.sleep(0.001)
    return claims.try_claim(Path(root), "contested", "race") is not None


def test_exactly_one_of_many_racing_processes_gets_the_claim(tmp_path):
    barrier = tmp_path / "go"
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pending = pool.map_async(_race, [(str(tmp_path), str(barrier))] * 6)
        time.sleep(1.0)
        barrier.touch()
        won = pending.get(timeout=60)
    # Each winner process has exited by now, but only one ever held the claim.
    assert sum(won) == 1


# -- the local launcher --------------------------------------------------------------------------------------

# Cells long enough (seconds each) that the second worker has started before the first could finish them all.
LONGER = {"max_epochs": 8}


@pytest.fixture(scope="module")
def serial_mlp(tmp_path_factory, tiny_data_root):
    """The tiny profile's MLP cells trained by the serial launcher, one thread."""
    tmp = tmp_path_factory.mktemp("serial")
    params = write_params(tmp, training=LONGER)
    done = vgbench(params, tiny_data_root, tmp / "results", "train", "--only", "mlp-")
    assert done.returncode == 0, done.stdout + done.stderr
    return metrics_of(tmp / "results")


def test_two_local_workers_match_serial_and_train_each_cell_once(serial_mlp, tiny_data_root, tmp_path):
    params = write_params(tmp_path, {"name": "local", "jobs": 2, "threads": 1}, LONGER)
    done = vgbench(params, tiny_data_root, tmp_path / "results", "train", "--only", "mlp-")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "local: 2 worker processes" in done.stdout
    local = metrics_of(tmp_path / "results")
    assert set(local) == set(serial_mlp) and len(local) == 6
    for cell_id, metrics in local.items():
        assert comparable(metrics) == comparable(serial_mlp[cell_id]), cell_id
        assert metrics["launch"]["launcher"] == "local" and metrics["launch"]["threads"] == 1
        assert metrics["group"]["cells"] == [cell_id]  # one seed and rate per row: groups of one
    # Count the trainings: every cell in exactly one worker's report, and both workers worked.
    launch = next((tmp_path / "results" / "launch").iterdir())
    trained = [json.loads((launch / f"worker-{k}.report.json").read_text())["trained"] for k in (0, 1)]
    assert sorted(trained[0] + trained[1]) == sorted(local) and all(trained)
    assert {m["launch"]["worker"] for m in local.values()} == {0, 1}
    assert not list((tmp_path / "results" / "claims").glob("*.json"))  # every claim released


def test_local_workers_are_pinned_to_their_gpu(tiny_data_root, tmp_path):
    """CUDA_VISIBLE_DEVICES reaches each worker's environment (recorded in its results); no CUDA needed."""
    # The slice and epochs of the two-worker test above, so that both workers train.
    params = write_params(tmp_path, {"name": "local", "gpus": [3, 5], "threads": 1}, LONGER)
    done = vgbench(params, tiny_data_root, tmp_path / "results", "train", "--only", "mlp-")
    assert done.returncode == 0, done.stdout + done.stderr
    results = metrics_of(tmp_path / "results").values()
    assert {(m["launch"]["worker"], m["launch"]["cuda_visible_devices"]) for m in results} == {(0, "3"), (1, "5")}
    assert {(m["launch"]["worker"], m["environment"]["cuda_visible_devices"]) for m in results} == {(0, "3"), (1, "5")}


def test_a_result_records_the_threads_its_cells_pinned_not_the_worker_s_default(tiny_data_root, tmp_path):
    """The worker starts with torch's default (OMP_NUM_THREADS=3 here) and run_group pins the cells' 1."""
    params = write_params(tmp_path, {"name": "local", "jobs": 1})
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["trainer"] = {"threads": 1}
    params.write_text(yaml.safe_dump(raw))
    done = vgbench(params, tiny_data_root, tmp_path / "results", "train", "--only", "mlp-he_relu",
                   env={"OMP_NUM_THREADS": "3"})
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = [(m["launch"]["threads"], m["environment"]["torch_threads"])
                for m in metrics_of(tmp_path / "results").values()]
    assert recorded and set(recorded) == {(1, 1)}


@pytest.mark.parametrize("pinned, launcher, cpus, expected", [
    (None, {"gpus": [0], "cells_per_gpu": 4}, 16, 4),  # the paper profile on a 16-CPU GPU machine
    (None, {"gpus": [0, 1], "cells_per_gpu": 4}, 16, 2),
    (None, {"gpus": [0], "cells_per_gpu": 4, "threads": 3}, 16, 3),  # launcher.threads wins
    (None, {"jobs": 8}, 2, 1),  # never below one thread
    (1, {"gpus": [0], "cells_per_gpu": 4, "threads": 3}, 16, None)])  # the cells pin their own
def test_each_local_worker_gets_its_share_of_the_cpus(pinned, launcher, cpus, expected, monkeypatch):
    from types import SimpleNamespace

    from vgbench.config import LauncherSettings
    from vgbench.launch.local import worker_count, worker_threads
    from vgbench.launch.request import LaunchRequest

    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    params = SimpleNamespace(active=SimpleNamespace(trainer=SimpleNamespace(threads=pinned)))
    request = LaunchRequest(params=params, params_path=Path("params.yaml"), profile="paper", cells=[],
                            data_root=Path("data"), results_root=Path("results"), folder=Path("results/launch"),
                            settings=LauncherSettings(name="local", **launcher))
    assert worker_threads(request, worker_count(request)) == expected


def test_the_worker_trains_a_row_s_seeds_as_one_group_with_the_same_results(tiny_data_root, tmp_path):
    """Two seeds of a row: one group of two by default, two groups of one with group_size 1; same numbers."""
    only = ("--only", "mlp-he_relu-mnist1d-d2")
    by_size = {}
    for size in (None, 1):
        folder = tmp_path / f"group-{size}"
        folder.mkdir()
        params = write_params(folder, {"threads": 1, "group_size": size}, seeds=[0, 1])
        done = vgbench(params, tiny_data_root, folder / "results", "train", *only)
        assert done.returncode == 0, done.stdout + done.stderr
        by_size[size] = metrics_of(folder / "results")
    together, apart = by_size[None], by_size[1]
    assert set(together) == set(apart) and len(together) == 2
    [group] = {json.dumps(m["group"]["cells"]) for m in together.values()}
    assert sorted(json.loads(group)) == sorted(together)
    assert sorted(m["group"]["index"] for m in together.values()) == [0, 1]
    assert len({m["group"]["id"] for m in together.values()}) == 1
    for cell_id, metrics in together.items():
        assert metrics["group"]["size"] == 2 and apart[cell_id]["group"]["size"] == 1
        assert comparable(metrics) == comparable(apart[cell_id]), cell_id
    assert together[min(together)]["test_metric"] != together[max(together)]["test_metric"]  # two seeds


# -- failures, status, retries and the leaderboard --------------------------------------------------------------

class NotTensors:
    """What a data file must not hold: an arbitrary object (torch's weights_only loading refuses it)."""


def test_a_failing_cell_is_recorded_and_the_others_go_on(tiny_params, tiny_data_root, tmp_path):
    """A data file torch refuses to load (a pickle of something else, its sha256 entered in the manifest so
    that the check before training passes) makes the adding cells raise; the rest train."""
    from vgbench.data.store import sha256

    data = tmp_path / "data"
    shutil.copytree(tiny_data_root, data)
    damaged = data / "adding" / "T6" / "train.pt"
    torch.save({"x": object.__new__(NotTensors)}, damaged)
    manifest_path = damaged.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"]["train.pt"] = sha256(damaged)
    manifest_path.write_text(json.dumps(manifest))
    params = write_params(tmp_path)
    only = ("--only=-d6-",)  # the MLP d6 cells and the two adding cells
    first = vgbench(params, data, tmp_path / "results", "train", *only)
    assert first.returncode == 1
    failed = [c.cell_id for c in expand(load_params(params).active) if "-d6-" in c.cell_id and "adding" in c.cell_id]
    assert len(failed) == 2 and "2 failed" in first.stderr and failed[0] in first.stderr
    error = json.loads((results.cell_dir(tmp_path / "results", failed[0]) / "error.json").read_text())
    assert error["attempt"] == 1 and "not a vgbench data file" in error["error"] and "Traceback" in error["traceback"]
    assert error["host"] and error["pid"] > 0
    assert len(metrics_of(tmp_path / "results")) == 3  # the MLP d6 cells trained

    status = vgbench(params, data, tmp_path / "results", "status")
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:8] if line.strip()}
    assert rows["rnn"] == ["0", "0", "2", "0", "1"] and rows["mlp"] == ["3", "0", "0", "0", "3"]
    assert f"{failed[0]}: attempt 1: DataNotReadyError" in status.stdout

    board = vgbench(params, data, tmp_path / "results", "leaderboard", "--no-wandb")
    assert board.returncode == 0, board.stderr
    table = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "Failed (2)" in table and all(cell_id in table for cell_id in failed)
    assert "Missing (8)" in table  # the tiny profile's cells not in this --only selection

    again = vgbench(params, data, tmp_path / "results", "train", *only)  # failed cells are not retried silently
    assert again.returncode == 1 and "0 to train" in again.stdout
    for name in ("train.pt", "manifest.json"):  # repaired
        shutil.copy2(tiny_data_root / "adding" / "T6" / name, damaged.parent / name)
    retried = vgbench(params, data, tmp_path / "results", "train", *only, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    result = results.read_result(tmp_path / "results", failed[0])
    assert result.launch.attempt == 2
    assert not (results.cell_dir(tmp_path / "results", failed[0]) / "error.json").exists()

    # --force retrains done cells; where that fails, the older result stays (still "done" to status), but
    # the command did not do what it was asked: exit 1, naming them (it said "all cells done", exit 0).
    torch.save({"x": object.__new__(NotTensors)}, damaged)
    manifest["sha256"]["train.pt"] = sha256(damaged)
    manifest_path.write_text(json.dumps(manifest))
    older = (results.cell_dir(tmp_path / "results", failed[0]) / "metrics.json").read_bytes()
    forced = vgbench(params, data, tmp_path / "results", "train", "--only=adding-d6", "--force")
    assert forced.returncode == 1 and "2 of 2 cells are not done (2 failed" in forced.stderr, forced.stderr
    assert (results.cell_dir(tmp_path / "results", failed[0]) / "metrics.json").read_bytes() == older


def test_status_names_the_cell_folders_no_profile_holds_and_prune_removes_only_those(tiny_data_root, tmp_path):
    """Results under an older cell id (a setting added to a family changes all its ids) are never read again;
    `vgbench status` names them and `--prune` removes them, never a current cell of any profile (the
    default profile's too, though tiny is active) nor a folder a live claim holds."""
    params = write_params(tmp_path)
    root = tmp_path / "results"
    assert vgbench(params, tiny_data_root, root, "train", "--only", "he_relu-mnist1d-d2").returncode == 0
    [current] = (root / "cells").iterdir()
    default_cell = expand(load_params(params, profile="default").active)[0].cell_id
    old = [f"{current.name[:-10]}0123456789", "rnn-lstm-adding-d6-lr0.01-s0-abcdefabcd"]  # ids no profile has
    for name in [*old, default_cell, "held-by-a-live-claim"]:
        shutil.copytree(current, root / "cells" / name)
    claim = claims.try_claim(root, "held-by-a-live-claim", "serial")  # this process: alive
    assert claim is not None

    status = vgbench(params, tiny_data_root, root, "status")
    assert status.returncode == 0, status.stderr
    assert "2 folder(s) under" in status.stdout and all(name in status.stdout for name in old)
    assert default_cell not in status.stdout and "held-by-a-live-claim" not in status.stdout
    assert sorted(p.name for p in (root / "cells").iterdir()) == sorted(
        [current.name, *old, default_cell, "held-by-a-live-claim"])  # naming removes nothing

    pruned = vgbench(params, tiny_data_root, root, "status", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 2 folder(s)" in pruned.stdout
    assert sorted(p.name for p in (root / "cells").iterdir()) == sorted(
        [current.name, default_cell, "held-by-a-live-claim"])
    assert "folder(s) under" not in vgbench(params, tiny_data_root, root, "status").stdout
    claims.release(root, claim)


def test_status_names_pretrained_stacks_no_finished_cell_read_and_prune_removes_them(tiny_data_root, tmp_path,
                                                                                   capsys, monkeypatch):
    """A stack's key names the code and data that made it, so after such a change the old stacks stay behind in
    results/pretrained (a DVC output) with nothing to read them. Not while a train runs (a live claim), asked
    again before each removal."""
    from vgbench.cli import main

    params = write_params(tmp_path)
    root = tmp_path / "results"
    assert vgbench(params, tiny_data_root, root, "train", "--only", "dbn-pretrain-mnist1d-d3").returncode == 0
    [read] = [path.name for path in (root / "pretrained").iterdir() if path.is_dir()]
    shutil.copytree(root / "pretrained" / read, root / "pretrained" / "rbm-mnist1d-3x16-seed0-0123456789abcdef")
    (root / "pretrained" / ".rbm-mnist1d-3x16-seed0-0123456789abcdef.lock").touch()
    status = ["status", "--params", str(params), "--results-root", str(root)]

    claim = claims.try_claim(root, "some-cell", "serial")  # a train is running: its cells may read any stack
    assert main(status) == 0 and "pretrained stack(s)" not in capsys.readouterr().out
    claims.release(root, claim)
    assert main(status) == 0
    out = capsys.readouterr().out
    assert "1 pretrained stack(s) under" in out and "rbm-mnist1d-3x16-seed0-0123456789abcdef" in out
    assert main([*status, "--only", "dbn"]) == 0 and "pretrained stack(s)" not in capsys.readouterr().out
    [record] = root.glob("cells/*/pretraining.json")  # damaged: the stack it names is unknown, so none is named
    good = record.read_text()
    record.write_text(good[:20])
    assert main(status) == 0 and "pretrained stack(s)" not in capsys.readouterr().out
    record.write_text(good)
    shutil.copytree(root / "pretrained" / read, root / "pretrained" / "rbm-mnist1d-3x16-seed0-fedcba9876543210")
    removals = []

    def remove_and_start_a_train(path):  # a train claims a cell right after the first removal
        removals.append(path.name)
        real_rmtree(path)
        removals.append(claims.try_claim(root, "some-cell", "serial"))

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", remove_and_start_a_train)
    assert main([*status, "--prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 pretrained stack(s)" in out and "a train started" in out and len(removals) == 2
    claims.release(root, removals[1])
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert main([*status, "--prune"]) == 0
    assert "removed 1 pretrained stack(s)" in capsys.readouterr().out
    assert sorted(path.name for path in (root / "pretrained").iterdir()) == sorted([read, f".{read}.lock"])


def test_status_expands_each_profile_once(tmp_path, monkeypatch, capsys):
    """It expanded the active profile twice (its states, then the unlisted folders): 1.7 s more on the
    default profile, whose edge extensions read every result."""
    from vgbench import tuning
    from vgbench.cli import main

    params = write_params(tmp_path)
    expanded = []
    real = tuning.matrix_cells
    monkeypatch.setattr(tuning, "matrix_cells", lambda profile, root: expanded.append(profile) or real(profile, root))
    assert main(["status", "--params", str(params), "--results-root", str(tmp_path / "results")]) == 0
    profiles = load_params(params).profiles
    assert sorted(map(str, expanded)) == sorted(map(str, profiles.values()))  # each profile, once
    assert f"profile tiny: {len(expand(profiles['tiny']))} cells" in capsys.readouterr().out


# -- resuming a killed cell -------------------------------------------------------------------------------------

def _wait_for(path: Path, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_killed_cell_resumes_from_its_checkpoint_with_identical_metrics(tiny_data_root, tmp_path):
    params = write_params(tmp_path, {"threads": 1, "checkpoint_every": 1}, {"max_epochs": 12},
                          wandb_mode="offline")
    cell = next(c for c in expand(load_params(params).active) if c.remedy == "he_relu" and c.depth == 6)
    wandb_dir = tmp_path / "wandb-root"
    wandb_dir.mkdir()
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    reference = vgbench(params, tiny_data_root, tmp_path / "reference", "train", "--only", cell.cell_id,
                        env={**env, "WANDB_DIR": str(tmp_path)})  # its W&B run lands apart
    assert reference.returncode == 0, reference.stderr

    root = tmp_path / "results"
    args = [sys.executable, "-m", "vgbench", "train", "--only", cell.cell_id, "--params", str(params),
            "--data-root", str(tiny_data_root), "--results-root", str(root)]
    killed = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    checkpoint = root / "checkpoints" / group_id([cell]) / "last.ckpt"  # the cell trains as a group of one
    _wait_for(checkpoint, killed, 300)
    assert (checkpoint.parent / "code_fingerprint").read_text().strip() == results.code_fingerprint()
    time.sleep(0.3)  # a few more epochs
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (results.cell_dir(root, cell.cell_id) / "metrics.json").exists(), "killed too late: cell finished"
    assert claims.read_claim(root, cell.cell_id) is not None  # a SIGKILL leaves its claim behind

    resumed = subprocess.run(args, cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from epoch" in resumed.stdout
    result = json.loads((results.cell_dir(root, cell.cell_id) / "metrics.json").read_text())
    expected = json.loads((results.cell_dir(tmp_path / "reference", cell.cell_id) / "metrics.json").read_text())
    assert 1 <= result["launch"]["resumed_from_epoch"] < 12
    assert comparable(result) == comparable(expected)
    profile = [json.loads((results.cell_dir(r, cell.cell_id) / "grad_profile.json").read_text())["records"]
               for r in (root, tmp_path / "reference")]
    assert profile[0] == profile[1]  # probe history survived the kill
    assert result["fit_seconds"] > 0 and result["probe_seconds"] > 0
    assert not checkpoint.parent.exists()  # removed once the cell is done
    runs = sorted(wandb_dir.glob("wandb/offline-run-*"))
    # One W&B run, resumed: the killed process's directory (its log cut short by SIGKILL) and the
    # restarted one's carry the same run id.
    run_id = cell_run_id(cell.cell_id, results.code_fingerprint(), machine_tag(results.environment()))
    assert len(runs) == 2 and all(run.name.endswith(run_id) for run in runs)
    restarted = read_run(runs[-1])
    assert restarted.run.run_id == run_id == result["wandb"]["run_id"]
    assert restarted.summary["test_metric"] == pytest.approx(result["test_metric"])


def test_a_checkpoint_written_by_other_training_code_is_not_resumed(tmp_path):
    """An interrupted group resumes only under the code that began it: finishing under another code's
    fingerprint what other code trained would stamp the result with the wrong code."""
    from vgbench.training import checkpoints

    folder = checkpoints.checkpoint_dir(tmp_path, "group-a")
    folder.mkdir(parents=True)
    (folder / checkpoints.LAST).write_bytes(b"a checkpoint")
    (folder / checkpoints.WRITTEN_BY).write_text(results.code_fingerprint() + "\n")
    assert checkpoints.latest(tmp_path, "group-a") == folder / checkpoints.LAST
    (folder / checkpoints.WRITTEN_BY).write_text("0123456789ab\n")  # another version of the training code
    assert checkpoints.latest(tmp_path, "group-a") is None and not folder.exists()  # removed: training starts over


# -- stopping -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, launcher", [(signal.SIGTERM, {"threads": 1}),
                                              (signal.SIGINT, {"name": "local", "jobs": 2, "threads": 1})])
def test_a_stopped_train_exits_non_zero_and_says_how_far_it_got(signum, launcher, tiny_data_root, tmp_path):
    """SIGTERM (what SLURM, Kubernetes and `timeout` send) or SIGINT mid-matrix: a non-zero status and one line,
    never the 0 that would let DVC lock a partial stage."""
    params = write_params(tmp_path, launcher)
    root = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "vgbench", "train", "--only", "mlp-", "--params", str(params), "--data-root",
         str(tiny_data_root), "--results-root", str(root)],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    _wait_for(root / "cells", process, 120)
    deadline = time.time() + 120
    while not list((root / "cells").glob("*/metrics.json")):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, out + err
    done = len(list((root / "cells").glob("*/metrics.json")))
    assert 1 <= done < 6, "stopped too late"
    name = signal.Signals(signum).name
    assert f"vgbench train: stopped by {name}: {done} of 6 cells done; run the same command again" in err
    assert "Traceback" not in err
    assert not list((root / "claims").glob("*.json"))  # claims released on the way out
    again = vgbench(params, tiny_data_root, root, "train", "--only", "mlp-")
    assert again.returncode == 0 and f"{done} done" in again.stdout and f"{6 - done} to train" in again.stdout


def test_the_slurm_launcher_without_slurm_says_what_is_missing(tiny_data_root, tmp_path):
    """A machine without SLURM's commands (PATH without them): one message, exit 1, nothing submitted."""
    params = write_params(tmp_path, {"name": "slurm"})
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    done = vgbench(params, tiny_data_root, tmp_path / "results", "train", "--only", "mlp-he_relu-mnist1d-d2",
                   env={"PATH": str(bare)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the slurm launcher needs SLURM's commands on PATH; missing: sbatch, srun, squeue, scontrol" in done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "results" / "cells").iterdir())


def test_two_train_commands_at_once_train_each_cell_once(tiny_data_root, tmp_path):
    """Two independent `vgbench train` on one results folder: the claims split the work, nothing is trained twice."""
    params = write_params(tmp_path)
    args = [sys.executable, "-m", "vgbench", "train", "--only", "mlp-", "--params", str(params), "--data-root",
            str(tiny_data_root), "--results-root", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    both = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in both]
    trained = [line.split(": test ")[0].split("] ")[1] for out, _ in outputs for line in out.splitlines()
               if ": test " in line]
    assert sorted(trained) == sorted(metrics_of(tmp_path / "results")) and len(trained) == 6
    # Each either saw every cell done, or (finishing first) named the cells the other was still training.
    for process, (out, err) in zip(both, outputs):
        assert "Traceback" not in err, err
        if process.returncode != 0:  # only "running" cells may be left, in the message train prints for them
            assert process.returncode == 1 and re.search(r"cells are not done \(\d+ running: [^;]*\); ", err), out + err
    final = vgbench(params, tiny_data_root, tmp_path / "results", "train", "--only", "mlp-")
    assert final.returncode == 0 and "6 done" in final.stdout and "0 to train" in final.stdout


def test_an_unwritable_results_folder_is_refused_before_training(tiny_data_root, tmp_path):
    params = write_params(tmp_path)
    results_file = tmp_path / "results"
    results_file.write_text("not a folder")
    done = vgbench(params, tiny_data_root, results_file, "train", "--only", "mlp-he_relu-mnist1d-d2")
    assert done.returncode == 1
    assert f"cannot write results under {results_file}" in done.stderr and "Traceback" not in done.stderr


def test_a_ddp_profile_asks_slurm_for_srun_tasks_one_cell_at_a_time(tiny_params, tmp_path):
    """devices x num_nodes SLURM tasks per cell, under srun (submitit's command), one cell per task: the sbatch
    script the slurm launcher would submit (needs no cluster; tests/test_slurm.py submits real jobs)."""
    from vgbench.config import parse_params
    from vgbench.launch.request import LaunchRequest
    from vgbench.launch.slurm import executor_for, plan_units
    from vgbench.matrix import expand

    raw = tiny_params.model_dump()
    raw["profiles"]["tiny"]["trainer"] = {"accelerator": "gpu", "devices": 4, "num_nodes": 2, "strategy": "ddp"}
    params = parse_params(raw)
    cells = expand(params.active)[:3]
    request = LaunchRequest(params=params, params_path=tmp_path / "params.yaml", profile="tiny", cells=cells,
                            data_root=tmp_path, results_root=tmp_path, folder=tmp_path,
                            settings=params.active.launcher.model_copy(update={"name": "slurm"}))
    assert [unit.cell_ids for unit in plan_units(request)] == [(c.cell_id,) for c in cells]
    script = executor_for(request)._make_submission_file_text("python -m submitit.core._submit x", "uid")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --gpus-per-node=4" in script
    assert "\nsrun " in script  # Lightning reads the ranks of srun's tasks


def test_progress_counts_a_cell_once_its_files_change_not_by_clocks(tiny_params, tmp_path):
    """The waiting launcher's "n/N cells done" counted any metrics.json, so a stale result (other code) being
    retrained read as done from the first poll; failures were dated against the login node's clock, which a
    file server's clock ahead of it turned into failures at once. The request's marks, taken before
    anything is submitted, fix both."""
    from vgbench.launch.request import LaunchRequest
    from vgbench.launch.slurm import file_progress

    stale, failed_before, fresh, again = expand(tiny_params.active)[:4]
    root = tmp_path / "results"
    ahead = time.time() + 3600  # files dated by a clock an hour ahead of this one
    for cell, name in ((stale, "metrics.json"), (failed_before, "error.json")):
        path = results.cell_dir(root, cell.cell_id) / name
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        os.utime(path, (ahead, ahead))
    # A file system that keeps whole seconds, or a node whose clock lags: a rewrite carries the old
    # modification time. It is still another file (written beside and renamed in), so it must count.
    same_time = results.cell_dir(root, again.cell_id) / "metrics.json"
    atomic.write_text(same_time, "{}")
    old_times = same_time.stat()

    def request():
        return LaunchRequest(params=tiny_params, params_path=tmp_path / "params.yaml", profile="tiny",
                             cells=[stale, failed_before, fresh, again], data_root=tmp_path, results_root=root,
                             folder=tmp_path, settings=tiny_params.active.launcher)

    launched = request()
    assert file_progress(launched) == {"done": 0, "failed": 0}
    for cell, name in ((stale, "metrics.json"), (failed_before, "metrics.json"), (fresh, "error.json")):
        path = results.cell_dir(root, cell.cell_id) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    # the stale cell and the failed one retrained; the new one failed (its error.json is new)
    assert file_progress(launched) == {"done": 2, "failed": 1}
    assert file_progress(request()) == {"done": 0, "failed": 0}  # a later request's marks are these files

    atomic.write_text(same_time, "{}")
    os.utime(same_time, ns=(old_times.st_atime_ns, old_times.st_mtime_ns))
    assert same_time.stat().st_mtime_ns == old_times.st_mtime_ns
    assert file_progress(launched) == {"done": 3, "failed": 1}


def test_force_retrains_whatever_the_clocks_of_the_file_server_and_the_nodes_say(tiny_data_root, tmp_path):
    """``train --force`` compared each metrics.json's modification time with this process's clock. A result
    dated by a file server an hour ahead read as already retrained: the workers skipped every cell and the
    command said all were done. A retrain written by a node whose clock lags read as not retrained: "failed".
    It now compares the file the launch found with the file there now (launch/marks.py)."""
    from vgbench.cli import _forced_but_not_retrained
    from vgbench.launch.marks import metrics_mark
    from vgbench.launch.request import WorkUnit
    from vgbench.launch.worker import _is_done

    params = write_params(tmp_path, seeds=[0, 1])
    root = tmp_path / "results"
    only = ("--only", "he_relu-mnist1d-d2")
    assert vgbench(params, tiny_data_root, root, "train", *only).returncode == 0
    before = metrics_of(root)
    assert len(before) == 2
    ahead = time.time() + 3600
    for cell_id in before:
        os.utime(results.cell_dir(root, cell_id) / "metrics.json", (ahead, ahead))
    found = {cell_id: metrics_mark(root, cell_id) for cell_id in before}

    forced = vgbench(params, tiny_data_root, root, "train", *only, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"{len(before)} to train" in forced.stdout and f"all {len(before)} cells done" in forced.stdout
    after = metrics_of(root)
    for cell_id in before:
        assert metrics_mark(root, cell_id) != found[cell_id], f"{cell_id} was not retrained"
        assert comparable(after[cell_id]) == comparable(before[cell_id])  # the same config, the same numbers

    # A node whose clock lags an hour writes the retrained result of the first cell; the second keeps the
    # result the launch found.
    first, second = sorted(before)[:2]
    found = {cell_id: metrics_mark(root, cell_id) for cell_id in before}
    path = results.cell_dir(root, first) / "metrics.json"
    behind = time.time() - 3600
    atomic.write_text(path, path.read_text())
    os.utime(path, (behind, behind))
    unit = WorkUnit(params_path=str(params), profile="tiny", data_root=str(tiny_data_root),
                    results_root=str(root), cell_ids=tuple(before), launcher="serial", replaces=found)
    assert _is_done(root, first, unit) and not _is_done(root, second, unit)
    cells = [cell for cell in expand(load_params(params).active) if cell.cell_id in (first, second)]
    states = {cell.cell_id: results.cell_state(root, cell.cell_id) for cell in cells}
    assert {cell_id: state.state for cell_id, state in states.items()} == {first: "done", second: "done"}
    not_retrained = _forced_but_not_retrained(cells, states, {first, second}, root, found)
    assert list(not_retrained) == [second] and not_retrained[second].state == "failed"


def test_workers_that_import_other_vgbench_code_than_the_launcher_refuse_to_train(tiny_data_root, tmp_path):
    """The `vgbench` command imports the installed package; its local workers (`python -m vgbench.launch`)
    import the one in their working folder first. A checkout there with other training code (`pip install .`
    and then an edit, or an editable install of another checkout) trained every cell with that code, after
    which the launcher found all of them written by other code: "N stale", the whole training wasted. The
    workers now refuse before training, naming both packages."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "vgbench", checkout / "vgbench", ignore=shutil.ignore_patterns("__pycache__"))
    with open(checkout / "vgbench" / "models" / "mlp.py", "a") as handle:
        handle.write("# an edit in the checkout\n")
    params = write_params(tmp_path, launcher={"name": "local", "jobs": 2, "threads": 1}, seeds=[0, 1])
    # As the console script runs: its own folder, not the working folder, first on the import path.
    command = [sys.executable, "-c", "import sys; sys.path.pop(0); from vgbench.cli import main; sys.exit(main())",
               "train", "--only", "mlp-he_relu-mnist1d-d2", "--params", str(params), "--data-root",
               str(tiny_data_root), "--results-root", str(tmp_path / "results")]
    mixed = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert mixed.returncode == 1, mixed.stderr
    assert mixed.stdout.count(f"this worker imports vgbench from {checkout / 'vgbench'}") == 2, mixed.stdout
    launcher_package = re.search(r"the launcher from (\S+) \(training code", mixed.stdout).group(1)
    assert Path(launcher_package) != checkout / "vgbench"  # the installed package, editable or not
    assert "2 pending" in mixed.stderr and not list((tmp_path / "results").rglob("metrics.json"))
