"""Verdicts that survive another reduction order: one block of the default profile trained with torch
threads 1 and 2 (which reorders reductions as another CPU would) must agree on every row's verdict.
Slow (two trainings of the block); the whole profile's figures are in README.md, from
bench/thread_stability.py, whose soft/firm marking is checked here on hand-made leaderboards."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vgbench.config import load_params
from vgbench.matrix import expand



@pytest.mark.slow
def test_threads_one_and_two_agree_on_the_verdicts(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "thread_stability.py"), "--only", "mlp-he_relu-", "--jobs", "2",
         "--out", str(tmp_path), "--data-root", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # Every row and cell of the block was compared (compare() skips what it cannot match), and none changed.
    block = [c for c in expand(load_params(REPO / "params.yaml").active) if "mlp-he_relu-" in c.cell_id]
    rows = {(c.family, c.dataset, c.remedy, c.depth) for c in block}
    head = re.search(r"^(\d+) rows compared; verdicts that changed with threads 1 -> 2: (\d+), of them firm in "
                     r"the threads-1 tables: (\d+)$", completed.stdout, re.MULTILINE)
    assert head and (int(head[1]), int(head[2]), int(head[3])) == (len(rows), 0, 0), completed.stdout
    cells = next(line for line in completed.stdout.splitlines() if line.startswith("cells' test metric"))
    counts = {how: int(n) for n, how in re.findall(r"(\d+) (identical|within interval|beyond interval|not comparable)",
                                                    cells)}
    assert sum(counts.values()) == len(block) and counts["not comparable"] == 0, cells


def _leaderboard(root, rows: dict, ranks: dict):
    """rows: key -> (trainable share, {failure label: share of the seeds}); ranks: key -> (range, soft)."""
    root.mkdir()
    (root / "leaderboard.json").write_text(json.dumps({
        "rows": {key: {"n": 3, "trainable_rate": trainable, "learning_rate": 0.1,
                       "failures": ", ".join(f"{label} {round(3 * share)}/3" for label, share in labels.items()),
                       **{f"rate_{label}": share for label, share in labels.items()},
                       "test_metric_mean": 0.5, "test_metric_ci_low": 0.4, "test_metric_ci_high": 0.6}
                 for key, (trainable, labels) in rows.items()},
        "frontier": {key: {"rank_range": text, "rank_level_sensitive": soft} for key, (text, soft) in ranks.items()}}))
    return root


def test_a_changed_verdict_is_soft_where_the_first_tables_showed_it_resting_on_little(tmp_path):
    spec = importlib.util.spec_from_file_location("thread_stability", REPO / "bench" / "thread_stability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = _leaderboard(tmp_path / "one", {"mixed": (2 / 3, {"weak": 1 / 3}), "unanimous": (0.0, {"vanished": 1.0}),
                                          "clean": (1.0, {})},
                       {"near": ("1–5", True), "clear": ("2", False)})
    two = _leaderboard(tmp_path / "two", {"mixed": (2 / 3, {}), "unanimous": (0.0, {"vanished": 2 / 3, "weak": 1 / 3}),
                                          "clean": (1 / 3, {"weak": 2 / 3})},
                       {"near": ("1–4", True), "clear": ("3", False)})
    report = module.compare(one, two)
    assert sorted(report["verdict_changes"]) == [
        ("clean: failures  -> weak 2/3", "firm"), ("clean: trainable True -> False", "firm"),
        ("clear: rank 2 -> 3", "firm"), ("mixed: failures weak 1/3 -> ", "soft"),
        ("near: rank 1–5 -> 1–4", "soft"), ("unanimous: failures vanished 3/3 -> vanished 2/3, weak 1/3", "firm")]
    assert report["soft_in_threads_1"] == {"rows with seeds that disagree": 1, "level-sensitive rank ranges": 1}
