"""Verdicts that survive another reduction order: one block of the default profile trained with torch
threads 1 and 2 (which reorders reductions as another CPU would) must agree on every row's verdict.
Slow (two trainings of the block); the whole profile's figures are in README.md, from
bench/thread_stability.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_threads_one_and_two_agree_on_the_verdicts(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "thread_stability.py"), "--only", "mlp-he_relu-", "--jobs", "2",
         "--out", str(tmp_path), "--data-root", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "verdicts that changed with threads 1 -> 2: 0" in completed.stdout, completed.stdout
    cells = next(line for line in completed.stdout.splitlines() if line.startswith("cells' test metric"))
    assert cells.endswith(", 0 not comparable"), cells
