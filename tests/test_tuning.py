"""Learning-rate grids that grow at their edges (vgbench/tuning.py): the next rate, which rows get it,
and a real `vgbench train` that extends a row's grid and a leaderboard that ranks it past the edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.test_report import RATES, SEEDS, small_params, write_results
from vgbench.config import parse_params
from vgbench.matrix import expand
from vgbench.tuning import beyond, edge_extensions, matrix_cells, row_of


@pytest.mark.parametrize("edge, neighbour, expected", [
    (0.1, 0.03, 0.3), (0.01, 0.03, 0.003), (0.003, 0.001, 0.009), (0.0003, 0.001, 0.00009), (0.2, 0.1, 0.4),
    (0.1, 0.01, 1.0), (0.01, 0.1, 0.001)])
def test_the_next_rate_continues_the_grid_s_ratio(edge, neighbour, expected):
    assert beyond(edge, neighbour) == pytest.approx(expected)


def test_rows_chosen_at_an_edge_get_one_rate_beyond_it_for_every_seed(tmp_path):
    """The synthetic results of test_report (grid 0.01, 0.1): small_init d2/d6 and he_relu d6 choose 0.01
    (lower edge), he_relu d2 and grad_clip d2/d6 choose 0.1 (upper edge)."""
    cells = expand(parse_params(small_params(), source="test").active)
    write_results(tmp_path, cells)
    added = edge_extensions(cells, tmp_path)
    by_row: dict = {}
    for cell in added:
        by_row.setdefault(row_of(cell)[2:], set()).add((cell.learning_rate, cell.seed))
    lower, upper = {(0.001, s) for s in SEEDS}, {(1.0, s) for s in SEEDS}
    assert by_row == {("small_init", 2): lower, ("small_init", 6): lower, ("he_relu", 6): lower,
                      ("he_relu", 2): upper, ("grad_clip", 2): upper, ("grad_clip", 6): upper}
    # The added cells are the chosen rate's cells at the new rate: same config otherwise.
    template = next(c for c in cells if (c.remedy, c.depth, c.seed, c.learning_rate) == ("he_relu", 2, 1, 0.1))
    new = next(c for c in added if (c.remedy, c.depth, c.seed) == ("he_relu", 2, 1))
    assert new.training == template.training and new.recipe == template.recipe and new.cell_id != template.cell_id


def test_a_row_with_unfinished_cells_or_no_grid_is_not_extended(tmp_path):
    cells = expand(parse_params(small_params(), source="test").active)
    unfinished = next(c for c in cells if (c.remedy, c.depth) == ("he_relu", 2))
    write_results(tmp_path, cells, skip={unfinished.cell_id})
    assert not any(row_of(c) == row_of(unfinished) for c in edge_extensions(cells, tmp_path))
    one_rate = expand(parse_params(small_params(learning_rates=[0.1]), source="test").active)
    write_results(tmp_path / "one", one_rate)
    assert edge_extensions(one_rate, tmp_path / "one") == []  # 'only': there is no ratio to continue


def test_matrix_cells_is_expand_until_the_profile_asks_for_extension(tmp_path):
    params = parse_params(small_params(), source="test")
    write_results(tmp_path, expand(params.active))
    assert matrix_cells(params.active, tmp_path) == expand(params.active)
    extended = parse_params(small_params(tuning={"extend_edge_rates": 2}), source="test").active
    cells = matrix_cells(extended, tmp_path)
    # Round 1 adds 6 rows x 3 seeds; round 2 waits for them to be done.
    assert len(cells) == len(expand(extended)) + 6 * len(SEEDS) and len(RATES) == 2


def test_an_added_rate_stays_in_its_row_when_a_new_seed_leaves_the_row_unfinished(tmp_path):
    """Extended with seeds 0 and 1, then seed 2 added to the profile (its cells not yet trained): the rates
    added before stay in the matrix, now for seed 2 too, so `status --prune` keeps their results and the
    leaderboard still chooses among them."""
    two_seeds = parse_params(small_params(seeds=[0, 1], tuning={"extend_edge_rates": 1}), source="test").active
    write_results(tmp_path, expand(two_seeds))
    extension = matrix_cells(two_seeds, tmp_path)[len(expand(two_seeds)):]
    assert len(extension) == 6 * 2
    for cell in extension:  # trained (a result folder is what counts)
        (tmp_path / "cells" / cell.cell_id).mkdir(parents=True)
    three_seeds = parse_params(small_params(tuning={"extend_edge_rates": 1}), source="test").active
    cells = matrix_cells(three_seeds, tmp_path)
    added = {(c.remedy, c.depth, c.learning_rate, c.seed) for c in cells[len(expand(three_seeds)):]}
    assert added == {(c.remedy, c.depth, c.learning_rate, s) for c in extension for s in SEEDS}
    # Without those folders the unfinished rows add nothing: a row is extended once, when it is done.
    assert matrix_cells(three_seeds, tmp_path / "elsewhere") == expand(three_seeds)


def test_train_extends_an_edge_row_and_the_leaderboard_ranks_past_it(tiny_data_root, tmp_path):
    """A real run: the tiny MLP he_relu d2 row on a two-rate grid. A grid of two always chooses an edge, so
    train adds the rate beyond it (round 1), and again (round 2, the last allowed) if the new rate is
    chosen; the leaderboard reads every trained rate, chooses on validation, and marks an edge only
    where the chosen rate still is one."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(profile="tiny", wandb={**raw["wandb"], "mode": "disabled"})
    tiny = raw["profiles"]["tiny"]
    tiny.update(learning_rates=[0.001, 0.003], tuning={"extend_edge_rates": 2})
    tiny["launcher"] = {"name": "serial"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    common = ["--params", str(params), "--data-root", str(tiny_data_root), "--results-root", str(results)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    train = subprocess.run([sys.executable, "-m", "vgbench", "train", "--only", "mlp-he_relu-mnist1d-d2", *common],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "round 1" in train.stdout
    val = {json.loads(p.read_text())["cell"]["learning_rate"]: json.loads(p.read_text())["val_metric"]
           for p in results.glob("cells/*/metrics.json")}
    grid = sorted(val)
    assert len(grid) in (3, 4) and {0.001, 0.003} <= set(grid)
    first = beyond(0.003, 0.001) if val[0.003] > val[0.001] else beyond(0.001, 0.003)
    assert first in grid  # round 1 went past the edge that won
    assert ("round 2" in train.stdout) == (len(grid) == 4)
    board = subprocess.run([sys.executable, "-m", "vgbench", "leaderboard", "--no-wandb", *common],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert board.returncode == 0, board.stdout + board.stderr
    row = json.loads((results / "leaderboard.json").read_text())["rows"]["mlp/mnist1d/he_relu/d2"]
    best = max(grid, key=lambda rate: (round(val[rate], 12), -rate))  # ties go to the smaller rate
    assert row["learning_rate"] == pytest.approx(best)
    expected_edge = "upper" if best == grid[-1] else "lower" if best == grid[0] else ""
    assert row["lr_grid_edge"] == expected_edge
    if len(grid) == 3:
        assert expected_edge == ""  # no round 2: round 1's rate lost, the choice is inside the grid
