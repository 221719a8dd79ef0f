"""Verdicts that survive another reduction order: one block of the default profile trained with torch
threads 1 and 2 (which reorders reductions as another CPU would) must agree on every row's verdict.
Slow (two trainings of the block); the whole profile's figures are in README.md, from
bench/thread_stability.py. Its report is `vgbench compare`'s, whose soft/firm marking tests/test_compare.py
checks on synthetic runs."""

from __future__ import annotations

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
    # Every row and cell of the block was compared (cells are matched by what they train: the thread count is
    # part of a cell's id), and no outcome changed.
    block = [c for c in expand(load_params(REPO / "params.yaml").active) if "mlp-he_relu-" in c.cell_id]
    rows = {(c.family, c.dataset, c.remedy, c.depth) for c in block}
    assert f"{len(rows)} rows in both runs (0 only in the first, 0 only in the second)." in completed.stdout
    assert (f"Rows with the same outcome (trainable share and failure labels) on both: {len(rows)} of {len(rows)};"
            in completed.stdout) and "Rank ranges that moved: 0 of" in completed.stdout, completed.stdout
    cells = re.search(r"^(\d+) cells in both results folders .*: (\d+) bit-identical, (\d+) within interval, "
                      r"(\d+) beyond interval, (\d+) not comparable\.$", completed.stdout, re.MULTILINE)
    assert cells and int(cells[1]) == len(block) and int(cells[5]) == 0, completed.stdout
