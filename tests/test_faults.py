"""Faults an unlucky operator meets, each run for real against the `vgbench` command: the fault, the
command, the exit status, a fragment of the message, and what the files look like afterwards.

Each case ends in a clear message (no traceback) or a repaired state. Older cases of the same catalogue
live beside the code they exercise: signals in tests/test_training.py and tests/test_launch.py, config
validation in tests/test_config.py, damaged results in tests/test_report.py; README.md's reliability
section lists them all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from tests.conftest import REPO
from vgbench.data.store import sha256


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Workspace:
    root: Path
    params: Path
    data: Path
    results: Path
    monkeypatch: pytest.MonkeyPatch

    def run(self, *args: str, env: dict | None = None) -> Completed:
        """The `vgbench` command, in this process (its parser, handlers and error handling: the same code a
        shell runs, without paying torch's import per call); ``env`` entries of None unset a variable."""
        from vgbench.cli import main

        with self.monkeypatch.context() as patch:
            patch.chdir(self.root)
            for key, value in {"WANDB_MODE": "disabled", **(env or {})}.items():
                if value is None:
                    patch.delenv(key, raising=False)
                else:
                    patch.setenv(key, value)
            out, err = io.StringIO(), io.StringIO()
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:  # `train` installs its own SIGTERM/SIGINT handlers: give pytest its own back
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main([*args, "--params", str(self.params), "--data-root", str(self.data),
                                 "--results-root", str(self.results)])
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
        return Completed(code, out.getvalue(), err.getvalue())

    def edit_params(self, change: Callable[[dict], None]) -> None:
        raw = yaml.safe_load(self.params.read_text())
        change(raw)
        self.params.write_text(yaml.safe_dump(raw))


@pytest.fixture
def workspace(tmp_path, tiny_data_root, monkeypatch) -> Workspace:
    """A copy of the tiny profile's params and data, W&B disabled."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(profile="tiny", wandb={**raw["wandb"], "mode": "disabled"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    shutil.copytree(tiny_data_root, tmp_path / "data")
    return Workspace(tmp_path, params, tmp_path / "data", tmp_path / "results", monkeypatch)


def _no_traceback(completed: Completed) -> None:
    assert "Traceback" not in completed.stderr, completed.stderr


# -- damaged data: `vgbench fetch` verifies every file against the manifest and rebuilds -------------------

def _delete_test_split(folder: Path) -> None:
    (folder / "test.pt").unlink()


def _truncate_train_split(folder: Path) -> None:
    data = (folder / "train.pt").read_bytes()
    (folder / "train.pt").write_bytes(data[:len(data) // 2])


def _truncate_manifest(folder: Path) -> None:
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[:len(text) // 2])


def _drop_settings_hash(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["settings_hash"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _made_by_other_code(folder: Path) -> None:
    """What a stored copy looks like to code whose data modules (or mnist1d version) changed since it was made."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["builder"] = "0123456789ab"
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    "a split deleted": (_delete_test_split, "test.pt is missing"),
    "a split cut short": (_truncate_train_split, "train.pt does not match its sha256"),
    "the manifest cut short": (_truncate_manifest, "manifest.json is not valid JSON"),
    "a manifest without settings_hash": (_drop_settings_hash, "lacks ['settings_hash']"),
    "made by other data-building code": (_made_by_other_code, "was made by other data-building code (builder "
                                                              "0123456789ab"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_data_is_refused_by_train_and_repaired_by_fetch(workspace, damage):
    fault, message = DAMAGE[damage]
    folder = workspace.data / "mnist1d"
    before = json.loads((folder / "manifest.json").read_text())["sha256"]
    fault(folder)
    train = workspace.run("train", "--only", "mlp-he_relu-mnist1d-d2")
    assert train.returncode == 1 and message in train.stderr and "run `vgbench fetch" in train.stderr
    _no_traceback(train)
    assert not list(workspace.results.glob("cells/*"))
    fetch = workspace.run("fetch", "mnist1d")
    assert fetch.returncode == 0, fetch.stderr
    assert "mnist1d: rebuilding: " in fetch.stdout and message in fetch.stdout
    after = json.loads((folder / "manifest.json").read_text())["sha256"]
    assert after == before  # the same bytes as before the damage (the build is deterministic)
    assert all(sha256(folder / name) == digest for name, digest in after.items())
    assert "up to date" in workspace.run("fetch", "mnist1d").stdout


def test_fetch_force_rebuilds_whatever_state_the_folder_is_in(workspace):
    folder = workspace.data / "mnist1d"
    before = json.loads((folder / "manifest.json").read_text())["sha256"]
    (folder / "manifest.json").write_bytes(b"\x00\xff garbage")
    (folder / "stats.pt").unlink()
    fetch = workspace.run("fetch", "--force", "mnist1d")
    assert fetch.returncode == 0, fetch.stderr
    assert "mnist1d: wrote" in fetch.stdout and "up to date" in workspace.run("fetch", "mnist1d").stdout
    after = json.loads((folder / "manifest.json").read_text())["sha256"]
    assert after == before  # the same bytes as before (the build is deterministic), each file checked
    assert all(sha256(folder / name) == digest for name, digest in after.items())


def test_a_file_torch_refuses_to_load_is_named_not_a_traceback(workspace):
    """The manifest's checksums match, but the file is not tensors (a pickle of something else)."""
    folder = workspace.data / "mnist1d"
    torch.save({"x": object.__new__(Workspace)}, folder / "stats.pt")  # not loadable with weights_only
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["stats.pt"] = sha256(folder / "stats.pt")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    train = workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2")
    assert train.returncode == 1, train.stdout + train.stderr
    errors = list(workspace.results.glob("cells/*/error.json"))
    assert len(errors) == 1
    assert "not a vgbench data file torch can load" in json.loads(errors[0].read_text())["error"]


# -- configuration found wrong before any work ------------------------------------------------------------

def _same_row_in_two_blocks(raw: dict) -> None:
    tiny = raw["profiles"]["tiny"]
    tiny["matrix"].append(dict(tiny["matrix"][0], remedies=["he_relu"], depths=[2]))


def _absurd_depth(raw: dict) -> None:
    raw["profiles"]["tiny"]["matrix"][0]["depths"] = [2, 100000]


CONFIG_FAULTS = {
    "the same row in two blocks": (_same_row_in_two_blocks, "both list family 'mlp', data set 'mnist1d', "
                                                            "remedy 'he_relu', depth 2"),
    "a depth far beyond any paper": (_absurd_depth, "depths [100000] exceed 2000 layers"),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS, ids=list(CONFIG_FAULTS))
def test_config_faults_exit_2_before_any_work(workspace, fault):
    change, message = CONFIG_FAULTS[fault]
    workspace.edit_params(change)
    for command in (["train"], ["cells"]):
        completed = workspace.run(*command)
        assert completed.returncode == 2 and message in completed.stderr, completed.stderr
        _no_traceback(completed)
    assert not workspace.results.exists()


@pytest.mark.parametrize("flags, message", [
    (["--jobs", "0"], "  - jobs = 0: Input should be greater than 0"),
    (["--jobs", "-1"], "  - jobs = -1: Input should be greater than 0"),
    (["--launcher", "kubernetes"], "  - name = 'kubernetes': unknown launcher 'kubernetes'; allowed: ['local', "),
    (["--jobs", "2", "--launcher", "serial"], "--jobs is for the local launcher; this launch uses 'serial'"),
    (["--detach"], "--detach is for the slurm launcher; this launch uses 'serial'"),
])
def test_command_line_overrides_are_checked_as_params_yaml_is(workspace, flags, message):
    """``--jobs 0`` once meant "the default" and ``--jobs -1`` trained nothing after writing a launch folder:
    the flags bypassed params.yaml's validation."""
    completed = workspace.run("train", *flags)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert message in completed.stderr
    if message.startswith("  - "):  # a value params.yaml's validation refuses, under the flags' name
        assert "vgbench train's --launcher/--jobs is not valid" in completed.stderr
    _no_traceback(completed)
    assert not workspace.results.exists()


def _no_copy_memory_block(raw: dict) -> None:
    tiny = raw["profiles"]["tiny"]
    tiny["matrix"] = [block for block in tiny["matrix"] if block["dataset"] != "copy_memory"]


@pytest.mark.parametrize("args, edit, message", [
    (["train", "--only", "mlp-he_reluu"], None, "--only 'mlp-he_reluu' matches no cell id of profile 'tiny'"),
    (["status", "--only", "mlp-he_reluu"], None, "--only 'mlp-he_reluu' matches no cell id of profile 'tiny'"),
    (["fetch", "copy_memory"], _no_copy_memory_block,
     "data set 'copy_memory' is stored per sequence length, and no matrix block of profile 'tiny' uses it"),
], ids=["train --only typo", "status --only typo", "fetch of a data set no block uses"])
def test_commands_that_would_do_nothing_say_why_and_exit_2(workspace, args, edit, message):
    """A misspelt --only trained nothing and said "all 0 cells done", exit 0; fetching a sequence data set
    no block uses wrote nothing, silently."""
    if edit is not None:
        workspace.edit_params(edit)
    completed = workspace.run(*args)
    assert completed.returncode == 2 and message in completed.stderr, completed.stdout + completed.stderr
    _no_traceback(completed)


def test_a_cell_on_several_devices_under_workers_pinned_to_one_gpu_each_is_refused(workspace):
    """The local launcher gives each worker one GPU of launcher.gpus: a DDP cell (trainer.devices 2) could
    never start there; it is refused before anything is written."""
    workspace.edit_params(lambda raw: raw["profiles"]["tiny"].update(
        launcher={"name": "local", "gpus": [0, 1]}, trainer={"devices": 2, "strategy": "ddp"}))
    completed = workspace.run("train")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "trainer.devices = 2, but the local launcher pins each worker to one GPU" in completed.stderr
    _no_traceback(completed)
    launches = workspace.results / "launch"
    assert not launches.exists() or not any(launches.iterdir())


def test_a_plan_of_zero_timed_steps_is_refused_by_the_parser(workspace, capsys):
    from vgbench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--steps", "0", "--params", str(workspace.params)])
    assert exit_.value.code == 2 and "argument --steps: 0 is not >= 1" in capsys.readouterr().err


def test_online_wandb_without_a_key_says_how_to_log_in(workspace, tmp_path):
    workspace.edit_params(lambda raw: raw["wandb"].update(mode="online"))
    env = {"HOME": str(tmp_path / "home"), "WANDB_MODE": None, "WANDB_API_KEY": None,
           "NETRC": str(tmp_path / "none")}
    completed = workspace.run("train", "--only", "mlp-he_relu-mnist1d-d2", env=env)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "wandb login" in completed.stderr and "mode: offline" in completed.stderr
    _no_traceback(completed)
    assert not list(workspace.results.glob("cells/*"))


# -- damaged results and outputs that cannot be written ------------------------------------------------------

def test_an_emptied_probe_file_makes_its_cell_stale_and_retrained(workspace):
    assert workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2").returncode == 0
    [folder] = list(workspace.results.glob("cells/*"))
    (folder / "grad_profile.json").write_text(json.dumps({"records": []}))
    cells = workspace.run("cells")
    assert f"stale    {folder.name}" in cells.stdout and "grad_profile.json is damaged" in cells.stdout
    again = workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2")
    assert again.returncode == 0 and "1 to train" in again.stdout
    assert json.loads((folder / "grad_profile.json").read_text())["records"]


def test_the_leaderboard_writes_all_of_its_outputs_or_none(workspace):
    assert workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2").returncode == 0
    assert workspace.run("leaderboard", "--no-wandb").returncode == 0
    before = {path: path.read_bytes() for path in workspace.results.glob("leaderboard.*")}
    figures = sorted(p.name for p in (workspace.results / "figures").iterdir())
    # One more cell, so a new build's tables would differ; then a build whose last output cannot be
    # written: plots/ is a file.
    assert workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d6").returncode == 0
    shutil.rmtree(workspace.results / "plots")
    (workspace.results / "plots").write_text("not a folder")
    failed = workspace.run("leaderboard", "--no-wandb")
    assert failed.returncode == 1 and "plots" in failed.stderr, failed.stderr
    _no_traceback(failed)
    assert {path: path.read_bytes() for path in workspace.results.glob("leaderboard.*")} == before
    assert sorted(p.name for p in (workspace.results / "figures").iterdir()) == figures
    assert not list(workspace.results.glob(".staged.*"))  # nothing half-written left behind


@contextlib.contextmanager
def _small_filesystem(path: Path, size_kib: int):
    """A real tmpfs of ``size_kib`` at ``path`` (root only: CI runs as root), unmounted afterwards. Skipped
    where it cannot be mounted, except under ``VGBENCH_REQUIRE_TMPFS=1`` (.ci/run), where that fails the test:
    CI must not pass with the real full-disk test left out."""
    import os
    import subprocess

    cannot = pytest.fail if os.environ.get("VGBENCH_REQUIRE_TMPFS") == "1" else pytest.skip
    if os.geteuid() != 0:
        cannot("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        cannot(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_mid_run_ends_in_a_message_and_leaves_only_whole_files(workspace):
    """Results on a real, nearly full filesystem (ENOSPC from the kernel, not a patched write): the
    check before training passes (a few KiB are free), a cell's outputs do not fit. The command says
    which file and what to do, exits 1, and every file left is whole (no temporary or cut-short JSON)."""
    with _small_filesystem(workspace.root / "small", 512) as small:
        workspace.results = small / "results"
        filler = small / "filler"
        with filler.open("wb") as handle:  # fill to within 16 KiB of the end
            handle.write(b"\0" * (512 - 16) * 1024)
        train = workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2")
        assert train.returncode == 1, train.stdout + train.stderr
        _no_traceback(train)
        assert "error: No space left on device (" in train.stderr and "/results/cells/" in train.stderr
        leftovers = [p for p in workspace.results.rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name.endswith(".tmp")], leftovers
        for path in leftovers:
            if path.suffix == ".json":
                json.loads(path.read_text())  # whole, or not there at all
        # With the space back, the same command finishes the cell.
        filler.unlink()
        again = workspace.run("train", "--launcher", "serial", "--only", "mlp-he_relu-mnist1d-d2")
        assert again.returncode == 0, again.stdout + again.stderr
        [metrics] = list(workspace.results.glob("cells/*/metrics.json"))
        assert json.loads(metrics.read_text())["cell_id"] == metrics.parent.name


def test_the_readme_catalogue_names_only_tests_that_exist():
    """README's reliability table is the index of this catalogue (cases that need a subprocess, a signal or
    a DVC run live in the modules named there): every test it names exists, so the index cannot go stale."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reliability: what a fault does", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", section)
    assert len(named) >= 14, named
    for module, test in named:
        source = (REPO / "tests" / module).read_text()
        assert f"def {test}(" in source, f"README names {module}::{test}, which does not exist"


def test_a_folder_replacement_that_fails_at_the_last_rename_leaves_the_old_folder(tmp_path, monkeypatch):
    """atomic.replace_dir moves the old folder aside, then the new one in: an error (or Ctrl-C) at that
    second rename deleted the new folder and left the old one aside, so the data set or RBM stack was gone."""
    from vgbench import atomic

    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.pt").write_text("old")
    real_replace = os.replace

    def interrupted_at_the_second_rename(source, target):
        if Path(source).name.startswith(".dataset.") and not Path(source).name.endswith(".old"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic.replace_dir(folder) as tmp:
            (tmp / "train.pt").write_text("new")
    monkeypatch.undo()
    assert (folder / "train.pt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_every_file_reaches_the_disk_before_it_is_renamed_into_place(workspace, tmp_path, monkeypatch):
    """A rename can reach the disk before the data it names: after a power cut, XFS or a network file system
    could show an empty metrics.json under its final name (a result that reads as damaged), an empty
    last.ckpt (every resume fails on it) or an empty claim (read as another host's, live forever). Each file
    renamed or linked into place, whoever wrote it (vgbench.atomic, savefig or torch.save into its staging
    folders, Lightning's checkpoint), is fsynced first: here a real training with a checkpoint every epoch."""
    from vgbench import atomic

    synced: set[int] = set()
    placed: list[str] = []
    unsynced: list[str] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    def check(source, target):
        if Path(source).is_file():
            files = [Path(source)]
            placed.append(Path(target).name)
        else:
            files = [path for path in Path(source).rglob("*") if path.is_file()]
            placed.extend(path.name for path in files)
        unsynced.extend(str(path) for path in files if path.stat().st_ino not in synced)

    def replace(source, target):
        check(source, target)
        real_replace(source, target)

    def link(source, target):
        check(source, target)
        real_link(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    atomic.write_json(tmp_path / "cells" / "metrics.json", {"test_metric": 0.5})
    with atomic.replace_dir(tmp_path / "dataset") as folder:
        (folder / "train.pt").write_bytes(b"x" * 1000)
    with atomic.staged(tmp_path / "board", whole_folders=("figures",)) as out:
        (out / "leaderboard.md").write_text("| a |")
        (out / "figures").mkdir()
        (out / "figures" / "depth.png").write_bytes(b"png")
    workspace.edit_params(lambda raw: raw["profiles"]["tiny"].setdefault("launcher", {}).update(
        name="serial", checkpoint_every=1))
    assert workspace.run("train", "--only", "mlp-he_relu-mnist1d-d2").returncode == 0
    monkeypatch.undo()
    assert unsynced == []
    assert {"metrics.json", "train.pt", "leaderboard.md", "grad_profile.json", "last.ckpt"} <= set(placed)
    assert any(name.endswith(".json") and name.startswith("mlp-he_relu") for name in placed)  # the claim
    assert json.loads((tmp_path / "cells" / "metrics.json").read_text()) == {"test_metric": 0.5}
    assert (tmp_path / "board" / "figures" / "depth.png").read_bytes() == b"png"
