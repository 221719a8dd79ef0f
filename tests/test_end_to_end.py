"""The whole pipeline as a user runs it: `dvc repro` on a fresh copy of the repository, tiny profile.

The copy holds what a clone would (tracked files plus files not yet committed
but not ignored; no data/, results/, wandb/ or dvc.lock) and runs its own
vgbench code (PYTHONPATH), so the code fingerprint and DVC's dependency hashes
see the files DVC tracks. W&B runs offline into a temporary WANDB_DIR.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.wandb_offline import read_run
from vgbench import wandb_names as names
from vgbench.config import load_params
from vgbench.matrix import expand
from vgbench.twins import unique_stored

# One pytest-xdist worker runs them all: they share module fixtures that run `dvc repro` (about a minute each).
pytestmark = pytest.mark.xdist_group("dvc_repro")

TIMEOUT = 600
STAGES = ("fetch", "train", "leaderboard")
LEFT_OUT = {"dvc.lock"}  # the copy must make its own


def _repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout
    return sorted({name for name in listed.split("\0") if name})


def _copy_repository(target: Path) -> None:
    for name in _repository_files():
        source = REPO / name
        if name in LEFT_OUT or not source.is_file():  # deleted in the working tree since it was listed
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _select_profile(params_file: Path, profile: str) -> None:
    text = params_file.read_text()
    text, count = re.subn(r"(?m)^profile:\s*\S+", f"profile: {profile}", text, count=1)
    assert count == 1, "params.yaml has no top-level `profile:` line"
    params_file.write_text(text)
    assert yaml.safe_load(text)["profile"] == profile


def _environment(home: Path) -> dict:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("WANDB_") or name.startswith("DVC_"):
            del env[name]
    # As on a user's machine: Python writes __pycache__/ into the package DVC hashes as a dependency.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        WANDB_DIR=str(home / "wandb-root"), WANDB_SILENT="true",
        DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        GIT_AUTHOR_NAME="vgbench test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="vgbench test", GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    return env


class Pipeline:
    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env

    def run(self, *args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def dvc(self, *args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A fresh copy of the repository on the tiny profile after one `dvc repro` (the result kept)."""
    home = tmp_path_factory.mktemp("end-to-end")
    root = home / "repo"
    root.mkdir()
    _copy_repository(root)
    assert (root / "dvc.yaml").is_file() and (root / ".dvc" / "config").is_file()
    assert not (root / "data").exists() and not (root / "results").exists()
    _select_profile(root / "params.yaml", "tiny")
    env = _environment(home)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    pipe = Pipeline(root, env)
    init = pipe.run("git", "init", "-q")
    assert init.returncode == 0, init.stderr
    pipe.first = pipe.dvc("repro", timeout=TIMEOUT)
    return pipe


def _report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def tiny_groups():
    params = load_params(REPO / "params.yaml", profile="tiny")
    cells = expand(params.active)
    groups = sorted({(c.family, c.dataset, c.remedy, c.depth) for c in cells})
    return cells, groups


def test_dvc_repro_runs_every_stage(pipeline):
    result = pipeline.first
    assert result.returncode == 0, _report(result)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout, _report(result)


def test_the_copy_ran_its_own_code(pipeline):
    check = pipeline.run(sys.executable, "-c", "import vgbench; print(vgbench.__file__)")
    assert Path(check.stdout.strip()).resolve() == (pipeline.root / "vgbench" / "__init__.py").resolve()


def test_leaderboard_files_have_one_row_per_remedy_and_depth(pipeline, tiny_groups):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    cells, groups = tiny_groups
    results = pipeline.root / "results"
    for suffix in ("json", "csv", "md", "tex"):
        assert (results / f"leaderboard.{suffix}").is_file(), suffix
    csv = pd.read_csv(results / "leaderboard.csv")
    assert sorted(zip(csv.family, csv.dataset, csv.remedy, csv.depth)) == groups
    board = json.loads((results / "leaderboard.json").read_text())
    assert board["profile"] == "tiny"
    assert board["cells"] == len(cells) and board["cells_missing"] == []
    assert sorted(board["rows"]) == sorted(f"{f}/{d}/{r}/d{depth}" for f, d, r, depth in groups)
    markdown = (results / "leaderboard.md").read_text()
    sections = {section.split("\n", 1)[0]: section for section in re.split(r"(?m)^## ", markdown)[1:]}
    pairs = sorted({(family, dataset) for family, dataset, _, _ in groups})
    assert sections.pop("Provenance").startswith("Provenance\n\nvgbench profile tiny, commit ")
    assert sorted(sections) == sorted(f"{family} on {dataset} (profile tiny)" for family, dataset in pairs)
    for family, dataset, remedy, depth in groups:
        section = sections[f"{family} on {dataset} (profile tiny)"]
        assert sum(line.startswith(f"| {remedy} | {depth} |") for line in section.splitlines()) == 1, \
            (family, dataset, remedy, depth)
    assert "Test mse, lower is better; baseline 0.167." in sections["rnn on adding (profile tiny)"]
    tex = (results / "leaderboard.tex").read_text()
    assert tex.count(r"\begin{table}") == len(pairs) and "profile tiny" in tex
    tables = {re.search(r"\\label\{(.*?)\}", table).group(1): table for table in tex.split(r"\begin{table}")[1:]}
    for family, dataset in pairs:
        remedies = sorted({r for f, d, r, _ in groups if (f, d) == (family, dataset)})
        table = tables[f"tab:vgbench-{family}-{dataset}".replace("_", "-")]
        escaped = dataset.replace("_", r"\_")
        assert rf"\caption{{{family} on {escaped}" in table  # the data set is named here, not in a column
        lines = table.splitlines()
        body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
        # A row's first cell: the remedy, with its citations small under it where it has any.
        names = [re.sub(r"^\\begin\{tabular\}\[t\]\{@\{\}l@\{\}\}(.*?)\\\\.*$", r"\1", line.split(" & ")[0])
                 for line in body]
        assert sorted(name.replace(r"\_", "_") for name in names) == remedies
    assert len(list((results / "cells").glob("*/metrics.json"))) == len(cells)
    profile = pd.read_csv(results / "plots" / "grad_profile.csv")
    for family, dataset in pairs:
        deepest = max(depth for f, d, _, depth in groups if (f, d) == (family, dataset))
        remedies = sorted({r for f, d, r, _ in groups if (f, d) == (family, dataset)})
        part = profile[(profile.family == family) & (profile.dataset == dataset)]
        assert set(part.depth) == {deepest} and sorted(part.remedy.unique()) == remedies
        assert (results / "figures" / f"grad_profile_{family}_{dataset}_d{deepest}.png").is_file()


def test_sequence_cells_are_scored_by_their_task(pipeline, tiny_groups):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    cells, _ = tiny_groups
    for cell in unique_stored(cells):  # a DBN cell without pretraining is stored as its MLP twin
        metrics = json.loads((pipeline.root / "results" / "cells" / cell.cell_id / "metrics.json").read_text())
        if cell.dataset == "adding":
            assert metrics["metric"] == "mse" and metrics["baseline_metric"] == pytest.approx(1 / 6)
            assert set(metrics["test"]) == {"loss", "mse"} and not metrics["higher_is_better"]
            # one probed state per time step, and the first/last ratio taken over them
            init = json.loads((pipeline.root / "results" / "cells" / cell.cell_id /
                               "grad_profile.json").read_text())["records"][0]
            assert len(init["dL_dh_norm"]) == cell.depth
        elif cell.dataset == "copy_memory":
            assert metrics["metric"] == "cross_entropy"
            assert set(metrics["test"]) == {"loss", "cross_entropy", "recall_accuracy"}
            assert metrics["baseline_metric"] == pytest.approx(10 * math.log(8) / (cell.depth + 20))
        else:
            assert metrics["metric"] == "accuracy" and metrics["baseline_metric"] == pytest.approx(0.1)
        assert metrics["test_metric"] == metrics["test"][metrics["metric"]]


def test_dvc_lock_records_the_three_stages(pipeline):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    lock = yaml.safe_load((pipeline.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    for stage in STAGES:
        assert lock["stages"][stage]["params"]["params.yaml"]["profile"] == "tiny"
    outs = {out["path"] for out in lock["stages"]["leaderboard"]["outs"]}
    assert {"results/leaderboard.json", "results/metrics.json", "results/leaderboard.csv",
            "results/plots/grad_profile.csv"} <= outs
    # The tables name the cells they were built from as the final dvc.lock does (built mid-repro).
    cells_md5 = next(out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == "results/cells")
    board = json.loads((pipeline.root / "results" / "leaderboard.json").read_text())
    assert board["provenance"]["dvc_lock_cells_md5"] == cells_md5 and cells_md5.endswith(".dir")


def _numbers(tree, prefix: str = "") -> dict:
    """{"a/b/c": number} for every int/float leaf (not bool) of a nested dict."""
    found = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(_numbers(value, path + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[path] = value
    return found


def test_dvc_metrics_show_returns_the_headline_numbers_of_the_leaderboard(pipeline):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    shown = pipeline.dvc("metrics", "show", "--json", timeout=120)
    assert shown.returncode == 0, _report(shown)
    metrics = json.loads(shown.stdout)
    [workspace] = metrics.values()
    [(path, entry)] = workspace["data"].items()  # one metrics file: the headline, not the whole leaderboard
    assert path == "results/metrics.json"
    data = entry["data"]
    # DVC shows the numeric leaves of a metrics file (strings, nulls and lists are left out).
    assert _numbers(data) == _numbers(json.loads((pipeline.root / path).read_text()))
    # The same numbers the leaderboard holds, per block at its deepest depth.
    board = json.loads((pipeline.root / "results" / "leaderboard.json").read_text())
    assert data["cells"] == board["cells"] and data["cells_missing"] == len(board["cells_missing"])
    blocks = {f"{r['family']}/{r['dataset']}" for r in board["rows"].values()}
    assert blocks <= set(data)
    for block in blocks:
        rows = [r for r in board["rows"].values() if f"{r['family']}/{r['dataset']}" == block]
        deepest = max(r["depth"] for r in rows)
        at_deepest = [r for r in rows if r["depth"] == deepest]
        assert data[block]["deepest"] == deepest
        assert data[block]["trainable_at_deepest"] == sum(r["trainable_rate"] >= 0.5 for r in at_deepest)
        [leader] = [r for r in board["frontier"].values()
                    if f"{r['family']}/{r['dataset']}" == block and r["rank"] == 1]
        assert data[block][f"leader_test_{leader['metric']}"] == pytest.approx(leader["test_metric_at_deepest"],
                                                                               rel=1e-3)
    # Readable as a table: the whole leaderboard as metrics printed a row of about 280,000 characters.
    plain = pipeline.dvc("metrics", "show", timeout=120)
    assert plain.returncode == 0 and "mlp/mnist1d.trainable_at_deepest" in plain.stdout and len(plain.stdout) < 5000


def test_dvc_diffs_read_a_past_commit_s_metrics_and_plots_from_the_cache(pipeline):
    """results/ is not in git, so a commit's metrics and plots come from the DVC cache (dvc.yaml caches
    them): `dvc metrics diff REV`, `dvc plots diff REV` (and `dvc exp show`) can compare runs. With
    `cache: false` the committed revision had nothing to read."""
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    for command in (("git", "add", "-A"), ("git", "commit", "-qm", "a run")):
        done = pipeline.run(*command)
        assert done.returncode == 0, _report(done)
    assert not pipeline.run("git", "ls-files", "results").stdout  # the results stay out of git
    diff = pipeline.dvc("metrics", "diff", "HEAD", "--all", "--json", timeout=120)
    assert diff.returncode == 0, _report(diff)
    compared = json.loads(diff.stdout)["results/metrics.json"]
    written = _numbers(json.loads((pipeline.root / "results" / "metrics.json").read_text()))
    numeric = {key: value for key, value in compared.items() if "diff" in value}
    assert len(numeric) == len(written)
    assert all(value["old"] is not None and value["old"] == value["new"] for value in numeric.values()), numeric
    # The gradient profile likewise: `dvc plots diff HEAD` draws the committed run beside the workspace's.
    plots = pipeline.dvc("plots", "diff", "HEAD", "--json", timeout=120)
    assert plots.returncode == 0, _report(plots)
    drawn = json.loads(plots.stdout)
    assert not drawn.get("errors"), drawn.get("errors")
    [plot] = drawn["data"]["results/plots/grad_profile.csv"]
    revisions = [value["rev"] for value in plot["content"]["data"]["values"]]
    assert revisions.count("HEAD") == revisions.count("workspace") > 0


def test_dvc_plots_show_renders_the_gradient_profile(pipeline, tmp_path):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    shown = pipeline.dvc("plots", "show", "--json", timeout=120)
    assert shown.returncode == 0, _report(shown)
    assert "grad_profile.csv" in shown.stdout
    plots = json.loads(shown.stdout)
    assert not plots.get("errors"), plots.get("errors")
    # The plot carries the CSV's every row, each value as written (not just the file's name).
    [plot] = plots["data"]["results/plots/grad_profile.csv"]
    plotted = plot["content"]["data"]["values"]
    csv = pd.read_csv(pipeline.root / "results" / "plots" / "grad_profile.csv")
    assert len(csv) > 0 and len(plotted) == len(csv)
    assert [float(v["log10_dL_dh_norm"]) for v in plotted] == pytest.approx(list(csv["log10_dL_dh_norm"]), rel=1e-12)
    rendered = pipeline.dvc("plots", "show", "-o", str(tmp_path / "plots"), timeout=120)
    assert rendered.returncode == 0, _report(rendered)
    assert "grad_profile" in (tmp_path / "plots" / "index.html").read_text()


def test_every_cell_and_the_leaderboard_logged_an_offline_wandb_run(pipeline, tiny_groups):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    cells, _ = tiny_groups
    wandb_dir = Path(pipeline.env["WANDB_DIR"])
    runs = [read_run(folder) for folder in sorted(wandb_dir.rglob("offline-run-*"))]
    cell_runs = [r for r in runs if r.run.job_type == names.CELL_JOB]
    assert sorted(r.run.display_name for r in cell_runs) == sorted(c.cell_id for c in unique_stored(cells))
    # Through `dvc repro` and the workers, every cell run is grouped <profile>/<family>.
    by_id = {c.cell_id: c for c in unique_stored(cells)}
    assert all(r.run.run_group == names.group("tiny", by_id[r.run.display_name].family) for r in cell_runs)
    assert [r.run.display_name for r in runs if r.run.job_type == names.LEADERBOARD_JOB] == ["leaderboard-tiny"]
    assert all(r.exit_code == 0 for r in runs)
    assert not (pipeline.root / "wandb").exists(), "runs ignored WANDB_DIR"


def test_dbn_pretraining_is_cached_and_logged(pipeline, tiny_groups):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    cells, _ = tiny_groups
    [pretrain] = [c for c in cells if c.family == "dbn" and c.remedy == "pretrain"]
    record = json.loads((pipeline.root / "results" / "cells" / pretrain.cell_id / "pretraining.json").read_text())
    assert (pipeline.root / "results" / "pretrained" / record["key"] / "stack.pt").is_file()
    [run] = [read_run(folder) for folder in Path(pipeline.env["WANDB_DIR"]).rglob("offline-run-*")
             if read_run(folder).run.display_name == pretrain.cell_id]
    rows = run.table_rows(names.PRETRAINING)
    epochs = pretrain.pretrain["epochs"]
    assert sorted((r["layer"], r["epoch"]) for r in rows) == [
        (layer, epoch) for layer in range(pretrain.depth) for epoch in range(epochs + 1)]
    last = [r["reconstruction_error_val"] for r in rows if r["epoch"] == epochs]
    assert last == pytest.approx([layer["epochs"][-1]["reconstruction_error_val"]
                                  for layer in record["stats"]["layers"]])


# .dvcignore leaves out __pycache__/: the .pyc files Python writes while the stages run must not
# change the train stage's `vgbench` dependency (it did once, and every repro reran train).
def test_second_repro_does_no_work(pipeline):
    assert pipeline.first.returncode == 0, _report(pipeline.first)
    lock_before = (pipeline.root / "dvc.lock").read_text()
    again = pipeline.dvc("repro", timeout=TIMEOUT)
    assert again.returncode == 0, _report(again)
    assert "Running stage" not in again.stdout, _report(again)
    assert "Data and pipelines are up to date" in again.stdout, _report(again)
    assert (pipeline.root / "dvc.lock").read_text() == lock_before
    status = pipeline.dvc("status", "--json", timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, _report(status)


def test_a_signal_during_dvc_repro_leaves_the_train_stage_unrecorded(tmp_path):
    """SIGTERM to the whole `dvc repro` process group (what `timeout`, SLURM and Kubernetes send) once a
    cell is done: dvc exits non-zero, dvc.lock does not record the train stage, `dvc status` says it
    changed, and the next `dvc repro` trains only what is left and records all three stages."""
    root = tmp_path / "repo"
    root.mkdir()
    _copy_repository(root)
    _select_profile(root / "params.yaml", "tiny")
    env = _environment(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    pipe = Pipeline(root, env)
    assert pipe.run("git", "init", "-q").returncode == 0
    log = open(tmp_path / "repro.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not list(root.glob("results/cells/*/metrics.json")):
        assert process.poll() is None, (tmp_path / "repro.log").read_text()
        assert time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) != 0
    for _ in range(240):  # dvc may exit before its `vgbench train` child has finished saying why it stopped
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    log.close()
    output = (tmp_path / "repro.log").read_text()
    assert "stopped by SIGTERM" in output and "run the same command again" in output, output[-3000:]
    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    assert "train" not in (lock or {}).get("stages", {}) and "leaderboard" not in (lock or {}).get("stages", {})
    status = pipe.dvc("status")
    assert "train" in status.stdout, status.stdout
    done_before = len(list(root.glob("results/cells/*/metrics.json")))
    again = pipe.dvc("repro")
    assert again.returncode == 0, _report(again)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert f"{done_before} done" in again.stdout  # the rerun kept what was done before the signal
    assert pipe.dvc("status").stdout.strip().endswith("up to date.")
