"""`vgbench compare`: two runs of one profile side by side, as a reader checks a verdict on a second machine.

The two runs are synthetic results (tests/test_report.py's scenario) built into real leaderboards; the
"second machine" moves some of them the way another CPU's rounding does: a mean within the first run's
interval, one beyond it with every seed's verdict flipped, one seed's label, one row's chosen rate.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_report import SCENARIO, SEEDS, outcome, write_cell
from vgbench.cli import main
from vgbench.config import parse_params
from vgbench.groups import group
from vgbench.matrix import expand
from vgbench.report import build
from vgbench.report.compare import Change, Run, compare, markdown
from tests.test_report import small_params

# (remedy, depth, learning rate) -> the second machine's seeds, where they differ from the first's.
MOVED = {
    # within the first run's interval (0.65, 0.70, 0.75: mean 0.70, t interval about ±0.12)
    ("he_relu", 2, 0.1): [outcome(0.7, 0.66, log10=0.1), outcome(0.7, 0.70, log10=0.2),
                          outcome(0.7, 0.75, log10=0.3)],
    # far beyond (0.40, 0.42, 0.44) and every seed now weak: a firm verdict that flips
    ("small_init", 2, 0.01): [outcome(0.50, 0.60, failure="weak"), outcome(0.52, 0.62, failure="weak"),
                              outcome(0.54, 0.64, failure="weak")],
    # one seed of three weak (its gradient ratio no longer underflowed): the outcome changes, the verdict (at
    # least half trainable) does not
    ("he_relu", 6, 0.01): [outcome(0.62, 0.6, log10=-0.5), outcome(0.62, 0.6, failure="weak", log10=-0.6),
                           outcome(0.62, 0.6, log10=-0.7)],
    # validation now prefers 0.01 (0.6 > 0.55): another chosen rate, the same (identical) test metrics
    ("grad_clip", 2, 0.01): [outcome(0.6, 0.5), outcome(0.6, 0.5), outcome(0.6, 0.5)],
}


def _run(root, cells, params, scenario) -> None:
    """Results for ``cells`` from ``scenario``, and their leaderboard."""
    for cell_group in group(cells):
        for cell in cell_group:
            write_cell(root, cell, scenario[(cell.remedy, cell.depth, cell.learning_rate)][SEEDS.index(cell.seed)],
                       cell_group)
    build.build_leaderboard(params, root, log_to_wandb=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    params = parse_params(small_params(), source="test")
    cells = expand(params.active)
    # The second machine runs the profile with 2 torch threads: its cells have other ids (the thread count is
    # part of a cell's config), and are still compared with the first's by what they train.
    other = parse_params(small_params(trainer={"threads": 2}), source="test")
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    _run(first, cells, params, SCENARIO)
    _run(second, expand(other.active), other, {**SCENARIO, **MOVED})
    return first, second


def test_a_second_machines_run_is_placed_against_the_first_row_by_row_and_cell_by_cell(runs, capsys):
    first, second = runs
    assert main(["compare", str(first), str(second)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# {first} against {second}\n")
    # 6 rows: small_init d2 beyond; he_relu d2 within, and grad_clip d2, whose other rate's seeds (0.5 each) lie
    # within the first run's (0.5, 0.6, 0.7); the other three identical.
    assert ("6 rows in both runs (0 only in the first, 0 only in the second). Each row's mean test metric in the "
            "second run, against the first run's 95% interval: 3 identical (mean and interval), 2 within interval, "
            "1 beyond interval, 0 not comparable.") in text
    # 36 cells: 3 of small_init d2 lr 0.01 beyond their row's interval; 1 of he_relu d2 lr 0.1 within; the rest
    # (he_relu d6's relabelled seed and grad_clip's validation-only change included) bit-identical.
    assert ("36 cells in both runs (matched by row, seed and learning rate). Each one's test metric in "
            "the second run, against its row's 95% interval in the first: 32 bit-identical, 1 within interval, "
            "3 beyond interval, 0 not comparable.") in text
    assert "Learning rates chosen differently: 1 of 6 rows: mlp/mnist1d/grad_clip/d2 0.1 → 0.01." in text
    assert ("Rows with the same outcome (trainable share and failure labels) on both: 4 of 6; the same and firm on "
            "both (every seed agrees, on each machine): 3. Flips of the trainable verdict (at least half the "
            "seeds): 1.") in text
    assert "| mlp/mnist1d/small_init/d2 (verdict flips) | trainable 3/3 | trainable 0/3, weak 3/3 | firm/firm |" in text
    assert "| mlp/mnist1d/he_relu/d6 | trainable 3/3 | trainable 2/3, weak 1/3 | firm/soft |" in text
    assert "Firm on both machines and still changed: mlp/mnist1d/small_init/d2." in text
    # The real claims, checked on each leaderboard: He et al.'s reads he_relu d6, whose relabelled seed also lost
    # its underflowed (-inf) gradient ratio, so the row's ratio is finite now, and its seeds disagree.
    claims = json.loads((first / "leaderboard.json").read_text())["claims"]
    assert (f"Claims whose verdict changed: 1 of {len(claims)}: he2015_relu_he_init fails → holds (resting on rows "
            f"whose seeds disagree: no in the first, yes in the second).") in text


def test_a_run_against_itself_is_identical_everywhere_and_out_writes_the_same_report(runs, tmp_path, capsys):
    """A bare leaderboard.json (as bench/reference/ keeps one) against its results folder: its cells' metrics
    travel in it, so the cell-by-cell count needs no results folder; a folder's cells that its leaderboard
    does not list (another profile's) are not counted."""
    first, _ = runs
    folder = tmp_path / "first"
    shutil.copytree(first, folder)
    result = json.loads(next((folder / "cells").glob("*/metrics.json")).read_text())
    stray = folder / "cells" / "mlp-another-profile" / "metrics.json"  # same row, seed and rate, another number
    stray.parent.mkdir()
    stray.write_text(json.dumps({**result, "cell_id": "mlp-another-profile", "test_metric": 0.0123}))
    out = tmp_path / "compare.md"
    assert main(["compare", str(first / "leaderboard.json"), str(folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    text = out.read_text()
    assert "against the first run's 95% interval: 6 identical (mean and interval), 0 within" in text
    assert ("36 cells in both runs (matched by row, seed and learning rate). Each one's test metric in the second "
            "run, against its row's 95% interval in the first: 36 bit-identical, 0 within interval, 0 beyond "
            "interval, 0 not comparable.") in text
    assert "Rows with the same outcome (trainable share and failure labels) on both: 6 of 6" in text
    assert "Rank ranges that moved: 0 of 3." in text and "Firm on both machines and still changed" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.md", "first"]  # no temporary file beside it


def _board(rows: dict, ranks: dict, claims: dict, environment: dict) -> dict:
    """rows: key -> (trainable share, failures text, {label: share}); ranks: key -> (range, level-sensitive);
    claims: name -> (verdict, soft rows)."""
    return {
        "rows": {key: {"n": 3, "trainable_rate": share, "failures": failures, "learning_rate": 0.1,
                       **{f"rate_{label}": s for label, s in labels.items()},
                       "test_metric_mean": 0.5, "test_metric_ci_low": 0.4, "test_metric_ci_high": 0.6}
                 for key, (share, failures, labels) in rows.items()},
        "frontier": {key: {"rank_range": text, "rank_level_sensitive": soft} for key, (text, soft) in ranks.items()},
        "claims": {name: {"verdict": verdict, "soft_rows": soft} for name, (verdict, soft) in claims.items()},
        "provenance": {"profile": "default", "git": {"commit": "abc", "dirty": False}, "cells": 9,
                       "environments": [environment]},
    }


def test_rank_ranges_and_claims_that_moved_are_named_with_what_each_run_rested_on():
    zen = {"cpu_id": "AuthenticAMD family 23 model 1 stepping 2", "cpu_capability": "AVX2", "torch": "2.14.1",
           "code_fingerprint": "838ff92aa7b2"}
    intel = {**zen, "cpu_id": "GenuineIntel family 6 model 167 stepping 1", "cpu_capability": "AVX512",
             "onednn_isa": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
             "onednn_max_cpu_isa": "AVX512_CORE", "code_fingerprint": "0123456789ab"}
    first = Run("zen", _board({"r": (1.0, "", {})}, {"a": ("1–5", True), "b": ("2", False), "c": ("3", False)},
                              {"batchnorm": ("holds", ""), "he": ("holds", ""), "gone": ("fails", "")}, zen))
    second = Run("intel", _board({"r": (1.0, "", {}), "new": (1.0, "", {})},
                                 {"a": ("1–4", True), "b": ("3", False), "c": ("3", False)},
                                 {"batchnorm": ("fails", "mlp batchnorm d20"), "he": ("holds", "")}, intel))
    result = compare(first, second)
    assert result.ranks == [Change("a", "1–5", "1–4", True, True), Change("b", "2", "3", False, False)]
    assert result.claims == [Change("batchnorm", "holds", "fails", False, True)] and result.claims_compared == 2
    assert result.only_second == ["new"] and result.cells is None  # leaderboards that list no cells
    text = markdown(result)
    assert ("Cells not compared: zen and intel list no cell metrics (a leaderboard.json written before vgbench "
            "listed them; `vgbench leaderboard` on its results folder rebuilds it).") in text
    assert "| CPU | AuthenticAMD family 23 model 1 stepping 2 | GenuineIntel family 6 model 167 stepping 1 |" in text
    assert ("| CPU kernels | AVX2 kernels | AVX512 kernels, oneDNN Intel AVX-512 with AVX512BW, AVX512VL, and "
            "AVX512DQ extensions (at most AVX512_CORE) |") in text
    assert "The training code differs (fingerprints above)" in text
    assert ("Rank ranges that moved: 2 of 3: a 1–5 → 1–4 (~ in the first); b 2 → 3 (not level-sensitive in the "
            "first).") in text
    assert ("Claims whose verdict changed: 1 of 2: batchnorm holds → fails (resting on rows whose seeds disagree: "
            "no in the first, yes in the second).") in text


def test_a_row_whose_mean_is_equal_but_whose_interval_moved_is_not_identical():
    """Test accuracy on 1000 samples comes in steps of 0.001, so two machines' seeds can average to the same
    mean with another spread: that row moved within the first run's interval, it is not identical."""
    first = _board({"same": (1.0, "", {}), "narrower": (1.0, "", {})}, {}, {}, {})
    second = json.loads(json.dumps(first))
    second["rows"]["narrower"].update(test_metric_ci_low=0.45, test_metric_ci_high=0.55)
    result = compare(Run("a", first), Run("b", second))
    assert dict(result.row_means) == {"identical": 1, "within interval": 1, "beyond interval": 0,
                                      "not comparable": 0}


@pytest.mark.parametrize("content, says", [
    (None, "no such file; give a leaderboard.json or the results folder that holds one"),
    ("{not json", "not a readable leaderboard.json"),
    (json.dumps({"rows": {}, "frontier": {}}), "not a vgbench leaderboard.json: it lacks claims, provenance"),
    (json.dumps([1, 2]), "it lacks rows, frontier, claims, provenance"),
])
def test_a_path_that_is_not_a_leaderboard_is_named_with_what_it_lacks(tmp_path, runs, capsys, content, says):
    bad = tmp_path / "leaderboard.json"
    if content is not None:
        bad.write_text(content)
    assert main(["compare", str(runs[0]), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and says in err and "Traceback" not in err
