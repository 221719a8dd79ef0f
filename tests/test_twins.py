"""A DBN cell without pretraining trains the MLP family's very network: it is trained once, as the MLP
cell, and shown in both tables (vgbench/twins.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from vgbench.config import load_params
from vgbench.matrix import expand
from vgbench.twins import stored_as, unique_stored


def test_unpretrained_dbn_cells_are_the_mlp_cells_of_the_same_config():
    cells = expand(load_params(REPO / "params.yaml", profile="default").active)
    ids = {cell.cell_id for cell in cells}
    twins = {cell.cell_id: stored_as(cell) for cell in cells if stored_as(cell) is not cell}
    assert {(c.family, c.remedy) for c in twins.values()} == {("mlp", r) for r in ("small_init", "batchnorm", "residual")}
    # At depth 20 the MLP block has the same cells (27 = 3 remedies x 3 seeds x 3 rates): trained once.
    at_20 = [twin for twin in twins.values() if twin.depth == 20]
    assert len(at_20) == 27 and all(twin.cell_id in ids for twin in at_20)
    # Not twins: pretraining, and a remedy that means another recipe in the MLP family (DBN xavier keeps sigmoid).
    for cell in cells:
        if cell.family == "dbn" and cell.remedy in ("pretrain", "xavier"):
            assert stored_as(cell) is cell
    assert len(unique_stored(cells)) == len(cells) - 27
    # The twin is the same config but for the family name: same recipe, model, data, training, seed, rate.
    dbn = next(c for c in cells if c.family == "dbn" and c.remedy == "batchnorm" and c.depth == 20)
    twin = stored_as(dbn)
    assert {k: v for k, v in twin.as_dict().items() if k != "family"} == \
        {k: v for k, v in dbn.as_dict().items() if k != "family"}


def test_a_dbn_twin_trains_as_its_mlp_cell_and_shows_in_the_dbn_table(tiny_data_root, tmp_path):
    common = ["--profile", "tiny", "--params", str(REPO / "params.yaml"), "--data-root", str(tiny_data_root),
              "--results-root", str(tmp_path / "results")]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    train = subprocess.run([sys.executable, "-m", "vgbench", "train", "--launcher", "serial", "--only",
                            "dbn-small_init", *common], capture_output=True, text=True, timeout=300, env=env,
                           cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "1 cells, 0 done" in train.stdout and "1 to train" in train.stdout
    folders = sorted(p.name for p in (tmp_path / "results" / "cells").iterdir())
    assert len(folders) == 1 and folders[0].startswith("mlp-small_init-mnist1d-d3-")  # stored as the MLP cell
    again = subprocess.run([sys.executable, "-m", "vgbench", "train", "--launcher", "serial", "--only",
                            "dbn-small_init", *common], capture_output=True, text=True, timeout=300, env=env,
                           cwd=tmp_path)
    assert "1 cells, 1 done" in again.stdout and "0 to train" in again.stdout
    board = subprocess.run([sys.executable, "-m", "vgbench", "leaderboard", "--no-wandb", *common],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert board.returncode == 0, board.stdout + board.stderr
    rows = json.loads((tmp_path / "results" / "leaderboard.json").read_text())["rows"]
    metrics = json.loads((tmp_path / "results" / "cells" / folders[0] / "metrics.json").read_text())
    assert rows["dbn/mnist1d/small_init/d3"]["test_metric_mean"] == metrics["test_metric"]
