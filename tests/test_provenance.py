"""The provenance block and the results card: read from real files (a real git checkout, params, dvc.lock,
data manifests, cell results), never guessed."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pandas as pd
from PIL import Image

from tests.test_report import cells, params, write_results  # noqa: F401 (fixtures)
from vgbench.report import build, provenance


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _committed_checkout(repo, files: dict[str, str]) -> str:
    """A real git checkout at ``repo`` with ``files`` committed; returns its HEAD."""
    repo.mkdir(exist_ok=True)
    _git(repo, "init", "-q")
    for name, text in files.items():
        (repo / name).write_text(text)
        _git(repo, "add", name)
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_git_commit_and_dirty_flag_come_from_a_real_checkout(tmp_path):
    repo = tmp_path / "repo"
    head = _committed_checkout(repo, {"params.yaml": "profile: default\n"})
    assert provenance._git(repo) == {"commit": head, "dirty": False, "changed": []}
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    _git(repo, "add", "dvc.lock")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # what `dvc repro` does mid-run
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance._git(repo)["dirty"] is False
    (repo / "params.yaml").write_text("profile: paper\n")
    block = provenance._git(repo)
    assert block["commit"] == head and block["dirty"] is True and block["changed"] == [" M params.yaml"]
    outside = provenance._git(tmp_path / "nowhere")
    assert outside["commit"] is None and outside["why"]


def test_every_output_carries_the_block_and_the_card_says_how_to_reproduce(tmp_path, tmp_path_factory, params, cells,
                                                                          monkeypatch):
    # The build reads git and dvc.lock from the params file's project (a checkout here), wherever it runs from.
    lock_text = "schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: results/cells\n      md5: 0123456789abcdef.dir\n"
    head = _committed_checkout(tmp_path, {"dvc.lock": lock_text})
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # not a checkout: it named no commit, no dvc.lock
    results, data = tmp_path / "results", tmp_path / "data"
    write_results(results, cells)
    (data / "mnist1d").mkdir(parents=True)
    (data / "mnist1d" / "manifest.json").write_text(json.dumps({"sha256": {"train.pt": "ab"}}))
    params_file = tmp_path / "params.yaml"  # linked in from a shared folder: still this checkout's
    shared = tmp_path_factory.mktemp("shared") / "params.yaml"
    shared.write_text("profile: synthetic\n")
    params_file.symlink_to(shared)
    build.build_leaderboard(params, results, log_to_wandb=False, params_path=params_file, data_root=data)

    block = json.loads((results / "leaderboard.json").read_text())["provenance"]
    digest = hashlib.sha256(params_file.read_bytes()).hexdigest()
    assert block["params_sha256"] == digest and block["cells"] == 36
    assert block["data_manifests_sha256"] == {
        "mnist1d": hashlib.sha256((data / "mnist1d" / "manifest.json").read_bytes()).hexdigest()}
    walls = [json.loads(p.read_text())["wall_seconds"] for p in results.glob("cells/*/metrics.json")]
    assert block["device_seconds"] == round(sum(walls), 1) and block["device_seconds_by_family"] == {"mlp": block["device_seconds"]}
    assert len(block["environments"]) == 1 and block["environments"][0]["torch"] == "x"
    assert block["git"] == {"commit": head, "dirty": False, "changed": []}  # results/, data/: untracked
    assert block["dvc_lock_cells_md5"] == "0123456789abcdef.dir"  # the line a reader finds in dvc.lock
    line = provenance.one_line(block)
    assert f"params.yaml sha256 {digest[:12]}" in line and "36 cells" in line
    assert (results / "leaderboard.md").read_text().rstrip().endswith("one page: CARD.md).")
    assert (results / "leaderboard.tex").read_text().startswith(f"% {line}\n")
    assert (results / "claims.tex").read_text().startswith(f"% {line}\n")
    assert f"Provenance: {line}." in (results / "claims.md").read_text()
    csv = pd.read_csv(results / "leaderboard.csv", keep_default_na=False)
    assert set(csv["provenance_params_sha256"]) == {digest} and len(csv) == 6
    assert (results / "references.bib").read_text().startswith(f"% {line}\n")
    for figure in (results / "figures").glob("*.png"):
        assert Image.open(figure).text["Description"] == line, figure
    card = (results / "CARD.md").read_text()
    assert card.startswith("# Results card: vgbench profile `synthetic`")
    assert f"params.yaml sha256 {digest}" in card and "dvc repro" in card and "36 trained cells" in card
    assert "- mlp on mnist1d: remedies" in card and "Published claims checked" in card
    # The instruction sets the CPU kernels ran (cpu_capability; oneDNN's in its words) and the cap asked for.
    assert "torch kernels AVX2, oneDNN's Intel AVX2 (capped at AVX2)" in card


def test_without_git_or_a_commit_the_block_says_why_in_one_line(tmp_path, monkeypatch):
    """No git on PATH (a compute node) is a reason, not a crash; git's several-line complaint about a checkout
    without a commit is cut to its first line, so the LaTeX header stays one comment line."""
    (tmp_path / "fresh").mkdir()
    _git(tmp_path / "fresh", "init", "-q")
    block = provenance._git(tmp_path / "fresh")
    assert block["commit"] is None and block["why"].startswith("fatal: ") and "\n" not in block["why"]
    line = provenance.one_line({"git": block, "params_sha256": None, "dvc_lock_cells_md5": None, "profile": "p",
                                "cells": 0, "device_seconds": 0.0})
    assert "\n" not in line and f"no commit ({block['why']})" in line
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    assert provenance._git(tmp_path / "fresh") == {"commit": None, "dirty": None,
                                                    "why": "git could not run (No such file or directory)"}


def test_device_time_per_family_counts_a_twin_cell_once_under_the_family_it_trained_as():
    table = pd.DataFrame([  # the DBN row's d20 small_init cell is the MLP cell (twins.py): one training
        {"family": "mlp", "cell_id": "mlp-small_init-mnist1d-d20-lr0.1-s0-aa", "wall_seconds": 10.0},
        {"family": "dbn", "cell_id": "mlp-small_init-mnist1d-d20-lr0.1-s0-aa", "wall_seconds": 10.0},
        {"family": "dbn", "cell_id": "dbn-pretrain-mnist1d-d20-lr0.1-s0-bb", "wall_seconds": 4.0},
    ])
    assert provenance._seconds_by_family(table) == {"mlp": 10.0, "dbn": 4.0}
