"""Verdicts that survive another reduction order: one block of the default profile trained with torch
threads 1 and 2 (which reorders reductions as another CPU would) must agree on every row's verdict.
Slow (two trainings of the block); the whole profile's figures are in README.md, from
bench/thread_stability.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vgbench.config import load_params
from vgbench.matrix import expand

pytestmark = pytest.mark.slow


def test_threads_one_and_two_agree_on_the_verdicts(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "thread_stability.py"), "--only", "mlp-he_relu-", "--jobs", "2",
         "--out", str(tmp_path), "--data-root", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # Every row and cell of the block was compared (compare() skips what it cannot match), and none changed.
    block = [c for c in expand(load_params(REPO / "params.yaml").active) if "mlp-he_relu-" in c.cell_id]
    rows = {(c.family, c.dataset, c.remedy, c.depth) for c in block}
    head = re.search(r"^(\d+) rows compared; verdicts that changed with threads 1 -> 2: (\d+)$", completed.stdout,
                     re.MULTILINE)
    assert head and (int(head[1]), int(head[2])) == (len(rows), 0), completed.stdout
    cells = next(line for line in completed.stdout.splitlines() if line.startswith("cells' test metric"))
    counts = {how: int(n) for n, how in re.findall(r"(\d+) (identical|within interval|beyond interval|not comparable)",
                                                    cells)}
    assert sum(counts.values()) == len(block) and counts["not comparable"] == 0, cells
