"""The leaderboard stage on synthetic cell results (no training).

Cell results are written in tmp_path with the same schema ``run_group`` writes
(``metrics.json`` and ``grad_profile.json`` per cell id, each cell in the group
of its row's seeds and rates as the worker trains them, JSON written by
``vgbench.atomic.write_json`` so -inf/NaN round-trip as they do for real), for
the cells that ``vgbench.matrix.expand`` produces from a small params dict.

The formatters are checked against golden files in tests/golden/. After an
intended change to the output, regenerate them with

    VGBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py

and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from vgbench.cell_result import SCHEMA_VERSION
from vgbench import atomic, results
from vgbench.config import parse_params
from vgbench.groups import group, group_id
from vgbench.matrix import CellSpec, expand
from vgbench.probes.failure import FAILURE_LABELS
from vgbench.probes.theory import SOURCE
from vgbench.report import aggregate, build, formats, statistics

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("VGBENCH_UPDATE_GOLDEN") == "1"

NAN = float("nan")
NEG_INF = float("-inf")

SEEDS = [0, 1, 2]
RATES = [0.01, 0.1]
REMEDIES = ["small_init", "he_relu", "grad_clip"]
DEPTHS = [2, 6]


def small_params(**overrides) -> dict:
    profile = {
        "description": "synthetic results for the report tests",
        "datasets": {"mnist1d": {}},
        "matrix": [{"family": "mlp", "dataset": "mnist1d", "remedies": REMEDIES, "depths": DEPTHS,
                    "model": {"width": 8}}],
        "seeds": SEEDS,
        "learning_rates": RATES,
        "training": {"max_epochs": 4, "batch_size": 50, "optimizer": "sgd", "momentum": 0.9,
                     "target_accuracy": 0.3},
        "probes": {"interval_steps": 2, "init_batch_size": 32},
    }
    profile.update(overrides)
    return {"profile": "synthetic", "wandb": {"mode": "disabled"}, "profiles": {"synthetic": profile}}


def outcome(val, test, *, failure=None, log10=-1.0, epochs=2, wall=1.0, loss=1.5, trainable=None):
    """One seed's result; ``trainable`` defaults to 'no failure label'."""
    return {"val": val, "test": test, "failure": failure, "log10": log10, "epochs": epochs,
            "wall": wall, "loss": loss, "trainable": failure is None if trainable is None else trainable}


def vanished(val=0.1, test=0.1):
    return outcome(val, test, failure="vanished", log10=NEG_INF, epochs=None, loss=2.3)


def diverged():
    return outcome(NAN, NAN, failure="diverged", log10=NAN, epochs=None, loss=NAN)


# (remedy, depth, learning rate) -> one outcome per seed (SEEDS order).
SCENARIO = {
    # Validation picks 0.01 (mean 0.52 > 0.50) although 0.1 has far better test accuracy.
    ("small_init", 2, 0.01): [outcome(0.50, 0.40, log10=-1.0, epochs=2, wall=1.0),
                            outcome(0.52, 0.42, log10=-1.2, epochs=None, wall=2.0),
                            outcome(0.54, 0.44, log10=-1.4, epochs=5, wall=3.0)],
    ("small_init", 2, 0.1): [outcome(0.48, 0.90), outcome(0.50, 0.91), outcome(0.52, 0.92)],
    # Every seed vanished at both rates; equal validation means: the smaller rate wins.
    ("small_init", 6, 0.01): [vanished(), vanished(), vanished()],
    ("small_init", 6, 0.1): [vanished(test=0.2), vanished(test=0.2), vanished(test=0.2)],
    # Validation picks 0.1.
    ("he_relu", 2, 0.01): [outcome(0.6, 0.9), outcome(0.6, 0.9), outcome(0.6, 0.9)],
    ("he_relu", 2, 0.1): [outcome(0.7, 0.65, log10=0.1), outcome(0.7, 0.70, log10=0.2),
                          outcome(0.7, 0.75, log10=0.3)],
    # 0.1 has mean validation 0.6 with the diverged seed as 0 (0.9 if it were skipped): 0.01 (0.62) wins.
    ("he_relu", 6, 0.01): [outcome(0.62, 0.6, log10=-0.5), outcome(0.62, 0.6, log10=NEG_INF),
                           outcome(0.62, 0.6, log10=-0.7)],
    ("he_relu", 6, 0.1): [outcome(0.9, 0.95), outcome(0.9, 0.95), diverged()],
    ("grad_clip", 2, 0.01): [outcome(0.5, 0.5), outcome(0.5, 0.5), outcome(0.5, 0.5)],
    ("grad_clip", 2, 0.1): [outcome(0.55, 0.5), outcome(0.55, 0.6), outcome(0.55, 0.7)],
    # 0.1 wins (0.8 + 0.8 + 0) / 3 > 0.3 with a diverged seed among the reported ones.
    ("grad_clip", 6, 0.01): [outcome(0.3, 0.3), outcome(0.3, 0.3), outcome(0.3, 0.3)],
    ("grad_clip", 6, 0.1): [outcome(0.8, 0.7, log10=-0.2), outcome(0.8, 0.8, log10=-0.4), diverged()],
}


def init_norms(cell: CellSpec) -> list[float]:
    """||dL/dh_l|| at initialization: depends on remedy, depth and seed, never on the learning rate."""
    slope = {"small_init": 1.0, "he_relu": 0.0, "grad_clip": 0.5}[cell.remedy]
    norms = [10.0 ** (-slope * (cell.depth - layer) + 0.1 * cell.seed) for layer in range(1, cell.depth + 1)]
    if cell.remedy == "small_init" and cell.depth == max(DEPTHS):
        norms[0] = 0.0  # underflowed: log10 is -inf
    return norms


def probe_record(cell: CellSpec, norms: list[float], phase: str, step: int) -> dict:
    return {
        "activation_variance": [0.1] * cell.depth, "dL_dh_first_last_ratio": norms[0] / norms[-1],
        "dL_dh_norm": norms, "dead_fraction": None, "epoch": 0 if phase == "init" else 1,
        "grad_total_norm": 0.4, "grad_total_norm_clipped": None, "loss": 2.3, "phase": phase,
        "saturated_fraction": [0.0] * cell.depth, "step": step,
        "weight_grad_first_last_ratio": norms[0] / norms[-1], "weight_grad_norm": norms,
        "weight_grad_norm_clipped": None,
    }


def write_cell(root: Path, cell: CellSpec, result: dict, cell_group: list[CellSpec] | None = None) -> None:
    """metrics.json and grad_profile.json as run_group writes them for ``cell`` trained in ``cell_group``
    (default: a group of one)."""
    cell_group = cell_group or [cell]
    folder = results.cell_dir(root, cell.cell_id)
    norms = init_norms(cell)
    records = [probe_record(cell, norms, "init", 0), probe_record(cell, [n * 2 for n in norms], "train", 4)]
    history = [{"epoch": e, "train_loss": 2.0, "val_accuracy": 0.1, "val_loss": 2.0} for e in range(3)]
    history.append({"epoch": 3, "train_loss": result["loss"], "val_accuracy": result["val"], "val_loss": 1.0})
    diverged_cell = result["failure"] == "diverged"
    metrics = {
        "schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "cell": cell.as_dict(),
        "status": "diverged" if diverged_cell else "completed",
        "failure": result["failure"], "diverged_at_step": 7 if diverged_cell else None,
        "trainable": result["trainable"], "task": "classification", "metric": "accuracy",
        "higher_is_better": True, "baseline_metric": 0.1, "test_metric": result["test"],
        "test": {"accuracy": result["test"], "loss": NAN if diverged_cell else 1.0},
        "val_metric": result["val"], "best_val_metric": result["val"],
        "final_train_loss": result["loss"], "epochs_to_target": result["epochs"],
        "late_val_improvement": 0.0, "converged": not diverged_cell,
        "target_metric": cell.training["target_accuracy"], "pretraining": None,
        "init_log10_dL_dh_first_last": result["log10"], "init_log10_weight_grad_first_last": result["log10"],
        "theory_log10_dL_dh_first_last": result["log10"] - 0.05 if cell.remedy == "small_init" else NAN,
        "theory": SOURCE if cell.remedy == "small_init" else "not predicted: test",
        "final_log10_dL_dh_first_last": result["log10"], "history": history, "world_size": 1,
        "num_parameters": 1000, "steps": 16, "fit_seconds": result["wall"] * 0.8,
        "wall_seconds": result["wall"], "probe_seconds": 0.01, "probe_overhead_fraction": 0.0125,
        "environment": {"python": "3.11", "platform": "test", "torch": "x", "lightning": "x", "vgbench": "x",
                        "code_fingerprint": results.code_fingerprint(), "cuda": None, "cudnn": None,
                        "cpu_capability": "AVX2", "onednn_isa": "Intel AVX2", "onednn_max_cpu_isa": "AVX2"},
        "group": {"id": group_id(cell_group), "size": len(cell_group), "index": cell_group.index(cell),
                  "cells": [member.cell_id for member in cell_group]},
        # The W&B run a training would have logged (the report's run sets list them); none for W&B off.
        "wandb": {"run_id": f"{cell.cell_id}-run", "run_dir": f"wandb/offline-run-{cell.cell_id}"},
    }
    atomic.write_json(folder / "grad_profile.json", {"cell_id": cell.cell_id, "records": records})
    atomic.write_json(folder / "metrics.json", metrics)


def write_results(root: Path, cells: list[CellSpec], skip: set[str] = frozenset()) -> None:
    for cell_group in group(cells):  # a row's seeds x rates, as the worker groups them
        for cell in cell_group:
            if cell.cell_id not in skip:
                write_cell(root, cell, SCENARIO[(cell.remedy, cell.depth, cell.learning_rate)][SEEDS.index(cell.seed)],
                           cell_group)


@pytest.fixture(scope="module")
def params():
    return parse_params(small_params(), source="test")


@pytest.fixture(scope="module")
def cells(params):
    return expand(params.active)


@pytest.fixture(scope="module")
def results_root(tmp_path_factory, cells):
    root = tmp_path_factory.mktemp("results")
    write_results(root, cells)
    return root


@pytest.fixture(scope="module")
def table(cells, results_root):
    frame, missing = aggregate.cell_table(cells, results_root)
    assert missing == []
    return frame


@pytest.fixture(scope="module")
def rows(table):
    return aggregate.leaderboard_rows(table).set_index(["remedy", "depth"])


# 1. learning-rate protocol --------------------------------------------------------------------------------------

def test_matrix_is_the_full_grid(cells, table):
    assert len(cells) == len(REMEDIES) * len(DEPTHS) * len(RATES) * len(SEEDS) == len(table) == 36


def test_rate_chosen_on_mean_validation_metric(table):
    chosen = aggregate.choose_learning_rates(table)
    assert list(chosen.columns) == aggregate.GROUP + ["learning_rate", "selection_val_metric", "lr_grid_edge"]
    picked = {(r.remedy, r.depth): r.learning_rate for r in chosen.itertuples()}
    # A grid of two rates: every choice is at an edge, the lower (0.01) or the upper (0.1).
    assert {(r.remedy, r.depth): r.lr_grid_edge for r in chosen.itertuples()} == {
        key: "lower" if rate == 0.01 else "upper" for key, rate in picked.items()}
    assert picked == {
        ("small_init", 2): 0.01,   # best validation although 0.1 has the best test accuracy
        ("small_init", 6): 0.01,   # a tie goes to the smaller rate
        ("he_relu", 2): 0.1,
        ("he_relu", 6): 0.01,    # the diverged seed of 0.1 counts as 0
        ("grad_clip", 2): 0.1,
        ("grad_clip", 6): 0.1,
    }
    score = {(r.remedy, r.depth): r.selection_val_metric for r in chosen.itertuples()}
    assert score[("small_init", 2)] == pytest.approx(0.52)
    assert score[("he_relu", 6)] == pytest.approx(0.62)
    assert score[("grad_clip", 6)] == pytest.approx((0.8 + 0.8 + 0.0) / 3)


def test_rate_choice_ignores_test_accuracy(table):
    """Swapping every test accuracy between the rates changes nothing about the choice."""
    swapped = table.assign(test_metric=table["test_metric"].sample(frac=1.0, random_state=0).to_numpy())
    pd.testing.assert_frame_equal(aggregate.choose_learning_rates(table).reset_index(drop=True),
                                  aggregate.choose_learning_rates(swapped).reset_index(drop=True))


def test_tie_breaks_to_smaller_rate_whatever_the_order():
    frame = pd.DataFrame({"family": "mlp", "dataset": "d", "remedy": "r", "depth": 3,
                          "learning_rate": [0.3, 0.1, 0.03, 0.3, 0.1, 0.03, 1.0, 1.0], "seed": [0, 0, 0, 1, 1, 1, 0, 1],
                          "val_metric": [0.25, 0.5, 0.375, 0.75, 0.5, 0.625, 0.1, 0.2], "higher_is_better": True})
    chosen = aggregate.choose_learning_rates(frame)
    assert chosen["learning_rate"].tolist() == [0.03]  # 0.03, 0.1 and 0.3 all average exactly 0.5
    assert chosen["selection_val_metric"].tolist() == [0.5]


def test_a_rate_inside_its_grid_is_not_marked_and_one_rate_is_marked_only():
    frame = pd.DataFrame({"family": "mlp", "dataset": "d", "remedy": ["a"] * 3 + ["b"], "depth": 3,
                          "learning_rate": [0.01, 0.03, 0.1, 0.1], "val_metric": [0.5, 0.7, 0.6, 0.2],
                          "seed": 0, "higher_is_better": True})
    chosen = aggregate.choose_learning_rates(frame).set_index("remedy")
    assert chosen.loc["a", "learning_rate"] == 0.03 and chosen.loc["a", "lr_grid_edge"] == ""
    assert chosen.loc["b", "lr_grid_edge"] == "only"


def test_tie_despite_float_rounding_of_the_means():
    """Accuracies are multiples of 1/N: (0.4 + 0.8) / 2 and (0.6 + 0.6) / 2 differ only in the last bit."""
    assert (0.4 + 0.8) / 2 != (0.6 + 0.6) / 2
    frame = pd.DataFrame({"family": "mlp", "dataset": "d", "remedy": "r", "depth": 3,
                          "learning_rate": [0.01, 0.01, 0.1, 0.1], "val_metric": [0.6, 0.6, 0.4, 0.8],
                          "seed": [0, 1, 0, 1], "higher_is_better": True})
    chosen = aggregate.choose_learning_rates(frame)
    assert chosen["learning_rate"].tolist() == [0.01]
    assert chosen["selection_val_metric"].tolist() == pytest.approx([0.6])


def test_loss_metrics_choose_the_lowest_and_count_divergence_as_worst():
    frame = pd.DataFrame({"family": "rnn", "dataset": "adding", "remedy": "r", "depth": 50,
                          "learning_rate": [0.001, 0.001, 0.01, 0.01, 0.1, 0.1], "seed": [0, 1] * 3,
                          "val_metric": [0.10, 0.12, 0.02, 0.04, 0.001, NAN], "higher_is_better": False})
    chosen = aggregate.choose_learning_rates(frame)
    assert chosen["learning_rate"].tolist() == [0.01]  # 0.1 has the lowest finite MSE, but one seed diverged
    assert chosen["selection_val_metric"].tolist() == pytest.approx([0.03])


def test_rates_are_compared_on_the_seeds_every_rate_finished():
    """Seed 2 of rate 0.1 crashed (no result). Over the seeds each rate has, 0.1 (seeds 0, 1: 0.7) beat 0.01
    (seeds 0, 1, 2: 0.6, where seed 2 drew a poor 0.3); on the same seeds 0 and 1, 0.01 averages 0.75 and wins.
    A row where no seed finished under every rate is compared on what it has."""
    frame = pd.DataFrame({"family": "mlp", "dataset": "d", "remedy": "r", "depth": 3,
                          "learning_rate": [0.01, 0.01, 0.01, 0.1, 0.1], "seed": [0, 1, 2, 0, 1],
                          "val_metric": [0.7, 0.8, 0.3, 0.7, 0.7], "higher_is_better": True})
    assert frame.groupby("learning_rate")["val_metric"].mean().idxmax() == 0.1
    chosen = aggregate.choose_learning_rates(frame)
    assert chosen["learning_rate"].tolist() == [0.01]
    assert chosen["selection_val_metric"].tolist() == pytest.approx([0.75])
    disjoint = frame.iloc[[0, 4]].assign(val_metric=[0.7, 0.9])  # 0.01 has seed 0 only, 0.1 seed 1 only
    chosen = aggregate.choose_learning_rates(disjoint)
    assert chosen["learning_rate"].tolist() == [0.1] and chosen["selection_val_metric"].tolist() == [0.9]


# 2. leaderboard rows --------------------------------------------------------------------------------------------

def test_rows_report_test_accuracy_at_the_chosen_rate_only(rows):
    assert len(rows) == len(REMEDIES) * len(DEPTHS)
    row = rows.loc[("small_init", 2)]
    assert row["learning_rate"] == 0.01
    assert row["n"] == 3
    assert row["test_metric_mean"] == pytest.approx(0.42)
    assert row["test_metric_std"] == pytest.approx(0.02)  # sample std (ddof=1) of 0.40, 0.42, 0.44
    assert row["selection_val_metric"] == pytest.approx(0.52)
    assert row["wall_seconds_mean"] == pytest.approx(2.0)
    assert row["final_train_loss_mean"] == pytest.approx(1.5)
    assert row["baseline_metric"] == 0.1 and row["metric"] == "accuracy" and row["higher_is_better"]
    he = rows.loc[("he_relu", 2)]
    assert he["learning_rate"] == 0.1
    assert he["test_metric_mean"] == pytest.approx(0.70)
    assert he["test_metric_std"] == pytest.approx(0.05)


def test_diverged_seed_counts_as_zero_test_accuracy(rows):
    row = rows.loc[("grad_clip", 6)]
    assert row["learning_rate"] == 0.1 and row["n"] == 3
    assert row["test_metric_mean"] == pytest.approx(0.5)  # (0.7 + 0.8 + 0) / 3
    assert row["test_metric_std"] == pytest.approx(math.sqrt((0.2 ** 2 + 0.3 ** 2 + 0.5 ** 2) / 2))
    assert row["trainable_rate"] == pytest.approx(2 / 3)
    assert row["rate_diverged"] == pytest.approx(1 / 3)
    assert row["failures"] == "diverged 1/3"
    assert row["init_log10_dL_dh_first_last"] == pytest.approx(-0.3)  # NaN of the diverged seed left out
    # The diverged seed's training loss counts as +inf, as its test accuracy counts as 0: a mean over the
    # two that trained (1.5) would let a row whose seeds diverge pass for trained (findings.py reads it).
    assert row["final_train_loss_mean"] == math.inf


def test_failure_rates_and_summary(rows):
    vanished_row = rows.loc[("small_init", 6)]
    assert vanished_row["failures"] == "vanished 3/3"
    assert vanished_row["rate_vanished"] == 1.0
    assert vanished_row["trainable_rate"] == 0.0
    assert vanished_row["test_metric_mean"] == pytest.approx(0.1)  # the chosen (smaller) rate's, not 0.2
    for label in FAILURE_LABELS:
        assert rows.loc[("he_relu", 2)][f"rate_{label}"] == 0.0
        if label != "vanished":
            assert vanished_row[f"rate_{label}"] == 0.0
    assert rows.loc[("he_relu", 2)]["failures"] == ""
    assert rows.loc[("he_relu", 2)]["trainable_rate"] == 1.0
    labels = pd.Series(["vanished", "vanished"])
    assert aggregate.failure_summary(labels) == "vanished 2/2"
    assert aggregate.failure_summary(pd.Series([None, "dead_units", "dead_units", None])) == "dead_units 2/4"
    assert aggregate.failure_summary(pd.Series([None, None])) == ""


def test_epochs_to_target_is_the_median_over_seeds_that_reached_it(rows):
    row = rows.loc[("small_init", 2)]
    assert row["epochs_to_target"] == pytest.approx(3.5)  # seeds reached at 2 and 5; seed 1 never did
    assert row["reached_target_rate"] == pytest.approx(2 / 3)
    never = rows.loc[("small_init", 6)]
    assert math.isnan(never["epochs_to_target"])
    assert never["reached_target_rate"] == 0.0


def test_log10_ratio_with_infinities(rows):
    assert rows.loc[("small_init", 2)]["init_log10_dL_dh_first_last"] == pytest.approx(-1.2)
    # one seed at -inf (its first-layer gradient underflowed to 0, the most vanished seed): the mean of
    # the logs is -inf; leaving that seed out would call the row healthier than any of its seeds shows
    assert rows.loc[("he_relu", 6)]["init_log10_dL_dh_first_last"] == NEG_INF
    # every seed at -inf: -inf
    assert rows.loc[("small_init", 6)]["init_log10_dL_dh_first_last"] == NEG_INF
    assert rows.loc[("small_init", 6)]["init_log10_weight_grad_first_last"] == NEG_INF
    assert math.isnan(aggregate._mean_of_measured(pd.Series([NAN, NAN])))  # never measured: not a number
    assert aggregate._mean_of_measured(pd.Series([NAN, -1.0, -2.0])) == pytest.approx(-1.5)


# 3. frontier and ranking ----------------------------------------------------------------------------------------

def test_frontier_and_ranking_from_results(table):
    rows = aggregate.leaderboard_rows(table)
    front = aggregate.frontier(rows).set_index("remedy")
    assert front["deepest_trainable_depth"].to_dict() == {"small_init": 2, "grad_clip": 6, "he_relu": 6}
    assert front["deepest_depth"].to_dict() == {"small_init": 6, "grad_clip": 6, "he_relu": 6}
    assert front.loc["he_relu", "test_metric_at_deepest"] == pytest.approx(0.6)
    ranked = aggregate.ranking(aggregate.frontier(rows))
    # he_relu and grad_clip both train at depth 6; he_relu has the better test accuracy there
    assert ranked["remedy"].tolist() == ["he_relu", "grad_clip", "small_init"]
    assert ranked["rank"].tolist() == [1, 2, 3]


def _row(remedy, depth, trainable_rate, accuracy, dataset="d", std=0.01, half_width=0.02, n=3):
    return {"family": "mlp", "dataset": dataset, "remedy": remedy, "depth": depth, "metric": "accuracy",
            "higher_is_better": True, "trainable_rate": trainable_rate, "test_metric_mean": accuracy,
            "test_metric_std": std, "n": n, "test_metric_ci_low": accuracy - half_width,
            "test_metric_ci_high": accuracy + half_width}


def test_a_rank_range_resting_on_intervals_that_nearly_touch_is_marked_level_sensitive():
    """3 seeds, std 0.01: the 95% half-width is 0.0248, the 90% one 0.0169, the 99% one 0.0573. a and b,
    0.05 apart, clear each other at 95% by 0.0004 (the MLP's modern/leaky_relu case of the threads 1 vs 2
    run) and overlap at 99%; c is far below both at every level."""
    half = statistics.t_half_width(0.01, 3)
    assert half == pytest.approx(0.0248, abs=1e-4)
    rows = pd.DataFrame([_row(name, 20, 1.0, mean, half_width=half) for name, mean in
                         (("a", 0.80), ("b", 0.75), ("c", 0.50))])
    ranked = aggregate.ranking(aggregate.frontier(rows)).set_index("remedy")
    assert ranked["rank_range"].to_dict() == {"a": "1", "b": "2", "c": "3"}
    assert ranked["rank_level_sensitive"].to_dict() == {"a": True, "b": True, "c": False}
    # 0.15 apart (b and c too), they clear each other at 99% as well: nothing rests on a near touch.
    rows.loc[1, ["test_metric_mean", "test_metric_ci_low", "test_metric_ci_high"]] = [0.65, 0.65 - half, 0.65 + half]
    assert not aggregate.ranking(aggregate.frontier(rows))["rank_level_sensitive"].any()


def test_frontier_threshold_and_ranking_order():
    rows = pd.DataFrame([
        _row("a", 2, 1.0, 0.9), _row("a", 10, 0.5, 0.6), _row("a", 20, 0.4, 0.3),  # exactly half trains
        _row("b", 2, 1.0, 0.9), _row("b", 10, 0.4, 0.2), _row("b", 20, 0.6, 0.5),  # a deeper one trains again
        _row("c", 2, 0.0, 0.1), _row("c", 20, 0.0, 0.1),                          # never trains
        _row("e", 2, 1.0, 0.9), _row("e", 10, 1.0, 0.8), _row("e", 20, 0.2, 0.4),  # same frontier as a
        _row("a", 2, 1.0, 0.9, dataset="other"), _row("b", 2, 0.0, 0.1, dataset="other"),
    ])
    front = aggregate.frontier(rows)
    depth = {(r.dataset, r.remedy): r.deepest_trainable_depth for r in front.itertuples()}
    assert depth == {("d", "a"): 10, ("d", "b"): 20, ("d", "c"): 0, ("d", "e"): 10,
                     ("other", "a"): 2, ("other", "b"): 0}
    assert front.set_index(["dataset", "remedy"]).loc[("d", "a"), "test_metric_at_deepest"] == 0.3
    assert aggregate.frontier(rows, majority=0.6).set_index(["dataset", "remedy"]).loc[
        ("d", "a"), "deepest_trainable_depth"] == 2
    ranked = aggregate.ranking(front)
    assert [(r.dataset, r.remedy, r.rank) for r in ranked.itertuples()] == [
        ("d", "b", 1), ("d", "e", 2), ("d", "a", 3), ("d", "c", 4),  # e beats a on accuracy at depth 20
        ("other", "a", 1), ("other", "b", 2),
    ]
    # Every interval here is disjoint from the next, so no two remedies share a rank.
    assert ranked["rank_range"].tolist() == ["1", "2", "3", "4", "1", "2"]


def test_remedies_whose_intervals_overlap_share_a_rank_range():
    rows = pd.DataFrame([  # a-d train at depth 10 only; the block's deepest depth, 20, is where they compare
        _row("deep", 20, 1.0, 0.50, half_width=0.30),   # the only one that trains at 20: first, however wide
        _row("a", 20, 0.0, 0.80, half_width=0.05), _row("a", 10, 1.0, 0.90),
        _row("b", 20, 0.0, 0.75, half_width=0.04), _row("b", 10, 1.0, 0.90),  # overlaps a: [0.71, 0.79]
        _row("c", 20, 0.0, 0.60, half_width=0.01), _row("c", 10, 1.0, 0.90),  # below both
        _row("d", 20, 0.0, 0.59, half_width=0.0), _row("d", 10, 1.0, 0.90),   # overlaps c only
    ])
    front = aggregate.frontier(rows)
    ranked = aggregate.ranking(front).set_index("remedy")
    assert ranked["rank"].to_dict() == {"deep": 1, "a": 2, "b": 3, "c": 4, "d": 5}
    assert ranked["rank_range"].to_dict() == {"deep": "1", "a": "2–3", "b": "2–3", "c": "4–5", "d": "4–5"}
    assert ranked.loc["c", "rank_best"] == 4 and ranked.loc["c", "rank_worst"] == 5


def test_a_remedy_without_results_at_the_deepest_depth_is_not_ranked_on_a_shallower_one():
    """Tables of a profile still training: c has no depth-20 row yet. Its depth-2 accuracy (0.9) must not be
    compared with the others' depth-20 ones (it ranked first): it has no number there ("–" in the tables), and
    ranks by what is known, its trainability frontier so far (depth 2, below a and b at 20)."""
    rows = pd.DataFrame([
        _row("a", 2, 1.0, 0.6), _row("a", 20, 1.0, 0.4),
        _row("b", 2, 1.0, 0.6), _row("b", 20, 1.0, 0.2),
        _row("c", 2, 1.0, 0.9),
    ])
    front = aggregate.frontier(rows).set_index("remedy")
    assert front["deepest_depth"].tolist() == [20, 20, 20]
    assert math.isnan(front.loc["c", "test_metric_at_deepest"]) and front.loc["c", "n_at_deepest"] == 0
    ranked = aggregate.ranking(aggregate.frontier(rows))
    assert ranked["remedy"].tolist() == ["a", "b", "c"]
    assert ranked.set_index("remedy")["rank_range"].to_dict() == {"a": "1", "b": "2", "c": "3"}
    from vgbench.report.headline import block_headline

    assert block_headline(rows.assign(rate_vanished=0.0), ranked)["leader"] == "a"


def test_in_matrix_order_follows_params(table, params):
    ordered = aggregate.in_matrix_order(aggregate.leaderboard_rows(table), params.active)
    assert list(zip(ordered["remedy"], ordered["depth"])) == [(r, d) for r in REMEDIES for d in DEPTHS]


# 4. missing cells -----------------------------------------------------------------------------------------------

def test_cell_table_reports_missing_cells(tmp_path, cells):
    skip = {cells[0].cell_id, cells[7].cell_id, cells[-1].cell_id}
    write_results(tmp_path, cells, skip=skip)
    # a folder with only a probe file (interrupted cell) is not a result either
    (results.cell_dir(tmp_path, cells[-1].cell_id)).mkdir(parents=True)
    (results.cell_dir(tmp_path, cells[-1].cell_id) / "grad_profile.json").write_text('{"records": []}')
    frame, missing = aggregate.cell_table(cells, tmp_path)
    assert missing == [c.cell_id for c in cells if c.cell_id in skip]  # in matrix order
    assert len(frame) == len(cells) - 3
    assert not set(frame["cell_id"]) & skip
    first = frame.iloc[0]
    assert first["cell_id"] == cells[1].cell_id
    assert (first["family"], first["dataset"], first["remedy"], first["depth"], first["seed"],
            first["learning_rate"]) == ("mlp", "mnist1d", "small_init", 2, 1, 0.01)
    assert first["val_metric"] == 0.52 and first["test_metric"] == 0.42 and first["metric"] == "accuracy"


def test_cell_table_of_an_empty_root(tmp_path, cells):
    frame, missing = aggregate.cell_table(cells, tmp_path)
    assert frame.empty
    assert missing == [c.cell_id for c in cells]


# 5. formatters against golden files -----------------------------------------------------------------------------

def test_a_metric_too_small_for_three_decimals_keeps_two_significant_digits():
    """The adding problem's best MSE (0.0004 +- 0.00005) printed as 0.000 +- 0.000, in the tables a paper
    copies; and a log ratio of -0.04 as "-0.0"."""
    from vgbench.report.formats import _interval, _num, _pm, _tex_number

    assert _pm(0.000414, 0.0000486) == "4.1e-04 ± 4.9e-05" and _interval(0.0003, 0.00042) == "[3.0e-04, 4.2e-04]"
    assert _tex_number(0.000414, 3) == r"4.1 \times 10^{-4}" and _tex_number(0.167, 3) == "0.167"
    assert [_num(v, 3) for v in (0.003, 0.0, 0.167, -0.0004)] == ["0.003", "0.000", "0.167", "-4.0e-04"]
    assert [_num(v, 1) for v in (-0.04, -0.0, -0.4, 0.04)] == ["0.0", "0.0", "-0.4", "0.0"]



def test_a_latex_mean_with_a_tiny_spread_takes_the_spreads_decimals_not_powers_of_ten():
    """In LaTeX, 0.169 +- 4.4e-4 printed as 0.169 \\pm 4.4 \\times 10^{-4}: with three such rows, the default
    profile's RNN table was 70 pt wider than a plain article's text width. Mean, spread and interval now
    take as many decimals as the spread's first significant digit needs; three where it needs fewer."""
    from vgbench.report.formats import _tex_mean_and_interval

    def texts(*values):
        return re.findall(r"\$([^$]*)\$", _tex_mean_and_interval(*values))

    assert texts(0.1690, 0.00044, 0.16802, 0.17007) == [r"0.1690 \pm 0.0004", "[0.1680, 0.1701]"]
    assert texts(0.000414, 0.0000486, 0.00029, 0.00053) == [r"0.00041 \pm 0.00005", "[0.00029, 0.00053]"]
    assert texts(0.465, 0.032, 0.385, 0.546) == [r"0.465 \pm 0.032", "[0.385, 0.546]"]  # as before
    assert texts(0.1, 0.0, 0.1, 0.1) == [r"0.100 \pm 0.000", "[0.100, 0.100]"]  # equal seeds
    # Near 0 the mean and the interval keep the spread's decimals too (not 4.0 x 10^{-7}), never "-0.00000".
    assert texts(6e-5, 2.4e-5, -1e-6, 1.2e-4) == [r"0.00006 \pm 0.00002", "[0.00000, 0.00012]"]
    assert texts(3e-9, 1e-9, 1e-9, 5e-9) == [r"3.0 \times 10^{-9} \pm 1.0 \times 10^{-9}",
                                             r"[1.0 \times 10^{-9}, 5.0 \times 10^{-9}]"]  # past 6 decimals

def golden_rows() -> pd.DataFrame:
    base = {"family": "mlp", "n": 3, "wall_seconds_mean": 1.25, "metric": "accuracy", "higher_is_better": True,
            "baseline_metric": 0.1, "final_train_loss_mean": 1.5, "lr_grid_edge": "", "converged_rate": 1.0,
            "theory_log10_dL_dh_first_last": NAN}
    return pd.DataFrame([
        {**base, "dataset": "mnist1d", "remedy": "small_init", "depth": 2, "learning_rate": 0.01,
         "test_metric_mean": 0.42, "test_metric_std": 0.02, "trainable_rate": 1.0,
         "init_log10_dL_dh_first_last": -1.23, "epochs_to_target": 3.5, "failures": "", "lr_grid_edge": "lower",
         "theory_log10_dL_dh_first_last": -1.25,
         "test_metric_ci_low": 0.37, "test_metric_ci_high": 0.47},
        {**base, "dataset": "mnist1d", "remedy": "small_init", "depth": 20, "learning_rate": 0.1,
         "test_metric_mean": 0.1, "test_metric_std": 0.0, "trainable_rate": 0.0,
         "init_log10_dL_dh_first_last": NEG_INF, "epochs_to_target": NAN, "failures": "vanished 3/3",
         "theory_log10_dL_dh_first_last": -32.29,
         "lr_grid_edge": "upper", "test_metric_ci_low": 0.1, "test_metric_ci_high": 0.1},
        {**base, "dataset": "mnist1d", "remedy": "he_relu", "depth": 2, "learning_rate": 0.1,
         "test_metric_mean": 0.7, "test_metric_std": 0.05, "trainable_rate": 1.0,
         "init_log10_dL_dh_first_last": 0.04, "epochs_to_target": 1.0, "failures": "",
         "test_metric_ci_low": 0.5758, "test_metric_ci_high": 0.8242},
        {**base, "dataset": "mnist1d", "remedy": "he_relu", "depth": 20, "learning_rate": 0.003,
         "test_metric_mean": 0.5, "test_metric_std": 0.40825, "trainable_rate": 2 / 3, "converged_rate": 1 / 3,
         "init_log10_dL_dh_first_last": NAN, "epochs_to_target": 7.0, "failures": "diverged 1/3",
         "test_metric_ci_low": -0.5141, "test_metric_ci_high": 1.5141},
        {**base, "dataset": "mnist1d", "remedy": "grad_clip", "depth": 2, "learning_rate": 0.03,
         "test_metric_mean": 0.5678, "test_metric_std": 0.0123, "trainable_rate": 1.0,
         "init_log10_dL_dh_first_last": -0.96, "epochs_to_target": 2.0, "failures": "", "lr_grid_edge": "only",
         "test_metric_ci_low": NAN, "test_metric_ci_high": NAN},
    ])


def golden_ranked() -> pd.DataFrame:
    return pd.DataFrame([
        {"rank": 1, "rank_range": "1", "family": "mlp", "dataset": "mnist1d", "remedy": "he_relu",
         "deepest_trainable_depth": 20, "test_metric_at_deepest": 0.5, "test_metric_std_at_deepest": 0.40825,
         "test_metric_ci_low_at_deepest": -0.5141, "test_metric_ci_high_at_deepest": 1.5141},
        {"rank": 2, "rank_range": "2–3", "family": "mlp", "dataset": "mnist1d", "remedy": "grad_clip",
         "deepest_trainable_depth": 2, "test_metric_at_deepest": NAN, "test_metric_std_at_deepest": NAN,
         "test_metric_ci_low_at_deepest": NAN, "test_metric_ci_high_at_deepest": NAN},
        {"rank": 3, "rank_range": "2–3", "family": "mlp", "dataset": "mnist1d", "remedy": "small_init",
         "deepest_trainable_depth": 2, "test_metric_at_deepest": 0.1, "test_metric_std_at_deepest": 0.0,
         "test_metric_ci_low_at_deepest": 0.1, "test_metric_ci_high_at_deepest": 0.1},
    ])


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:  # never a pass: the new file is to be read (git diff) before it is committed
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.skip(f"{path} written; review it with `git diff` before committing")
    assert path.exists(), (f"{path} is missing: run `VGBENCH_UPDATE_GOLDEN=1 python -m pytest "
                           f"tests/test_report.py` to create it")
    assert text == path.read_text(), (f"output differs from {path}; if the change is intended, run "
                                      f"`VGBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py`")


def test_leaderboard_markdown_golden():
    text = formats.leaderboard_markdown(golden_rows(), golden_ranked(), "mlp on mnist1d (profile golden)")
    check_golden("leaderboard.md", text)
    lines = text.splitlines()
    assert lines[0] == "## mlp on mnist1d (profile golden)"
    assert lines[2].startswith("Test accuracy, higher is better; chance 0.100. lr: the rate chosen")
    assert "| remedy | depth | lr | test acc (mean ± std) | 95% CI | n | trainable | converged |" in lines[4]
    assert ("| small_init | 2 | 0.01 ↓ | 0.420 ± 0.020 | [0.370, 0.470] | 3 | 100% | 100% | -1.2 | -1.2 | 1.500 | 3.5 | – "
            "| 1.2 |" in lines)
    assert ("| small_init | 20 | 0.1 ↑ | 0.100 ± 0.000 | [0.100, 0.100] | 3 | 0% | 100% | -inf | -32.3 | 1.500 | – "
            "| vanished 3/3 | 1.2 |" in lines)
    assert ("| he_relu | 20 | 0.003 | 0.500 ± 0.408 | [-0.514, 1.514] | 3 | 67% | 33% | – | – | 1.500 | 7.0 | diverged 1/3 "
            "| 1.2 |" in lines)
    assert ("| grad_clip | 2 | 0.03 · | 0.568 ± 0.012 | – | 3 | 100% | 100% | -1.0 | – | 1.500 | 2.0 | – | 1.2 |"
            in lines)
    assert "| 1 | he_relu | 20 | 0.500 ± 0.408 | [-0.514, 1.514] |" in lines
    assert "| 2–3 | grad_clip | 2 | – ± – | – |" in lines
    assert text.endswith("|\n")


def test_loss_metric_tables_name_their_metric_and_baseline():
    rows = golden_rows().assign(metric="mse", higher_is_better=False, baseline_metric=1 / 6, family="rnn",
                                dataset="adding")
    text = formats.leaderboard_markdown(rows, golden_ranked().iloc[:0], "rnn on adding")
    assert "Test mse, lower is better; baseline 0.167." in text
    assert "| remedy | depth | lr | test MSE (mean ± std) |" in text
    assert r"test MSE & $\log_{10}\frac{g_1}{g_L}$" in formats.leaderboard_latex(rows, caption="c")
    assert "dL/dh: the gradient of" not in text  # the adding task's probe follows its training loss


def test_copy_memory_tables_say_whose_gradient_the_ratio_is():
    rows = golden_rows().assign(metric="cross_entropy", higher_is_better=False, baseline_metric=2.2, family="rnn",
                                dataset="copy_memory")
    text = formats.leaderboard_markdown(rows, golden_ranked().iloc[:0], "rnn on copy_memory")
    assert ("dL/dh: the gradient of the recall: the cross-entropy of the last 10 steps (the training loss scores "
            "every step).") in text.splitlines()[2]


def test_leaderboard_latex_golden():
    text = formats.leaderboard_latex(golden_rows(), caption=r"mean $\pm$ std", label="tab:golden")
    check_golden("leaderboard.tex", text)
    lines = text.splitlines()
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    assert r"\begin{tabular}{lrrrr}" in lines  # one data set: named in the caption, not in a column
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert lines.count(rule) == 1
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert r"\cmidrule(lr){2-3}\cmidrule(lr){4-5}" in lines

    def over(main: str, under: str, align: str = "r") -> str:  # the interval, prediction or citation small, under
        return rf"\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}{main}\\{{\scriptsize {under}}}\end{{tabular}}"

    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert body == [
        over(r"small\_init", r"\cite{hochreiter1991untersuchungen,bengio1994learning,hinton2010practical}", "l") + " & "
        + over(r"$0.420 \pm 0.020$", "$[0.370, 0.470]$") + " & " + over("$-1.2$", "($-1.2$)") + " & "
        + over(r"$0.100 \pm 0.000$", "$[0.100, 0.100]$") + " & " + over(r"$-\infty$", "($-32.3$)") + r" \\",
        over(r"he\_relu", r"\cite{glorot2011deep,he2015delving}", "l") + " & " + over(r"$0.700 \pm 0.050$", "$[0.576, 0.824]$")
        + " & $0.0$ & " + over(r"$0.500 \pm 0.408$", "$[-0.514, 1.514]$") + r" & -- \\",
        over(r"grad\_clip", r"\cite{pascanu2013difficulty}", "l") + r" & $0.568 \pm 0.012$ & $-1.0$ & -- & -- \\",
    ]
    assert "he_relu" not in text and "grad_clip" not in text  # underscores escaped
    assert "±" not in text and "–" not in text  # ASCII LaTeX only
    assert r"\caption{mean $\pm$ std}" in lines and r"\label{tab:golden}" in lines


def test_the_latex_table_carries_the_tie_aware_rank_with_its_level_sensitive_mark():
    ranked = golden_ranked().assign(rank_level_sensitive=[True, False, False])
    lines = formats.leaderboard_latex(golden_rows(), caption="c", ranked=ranked).splitlines()
    assert r"\begin{tabular}{lrrrrc}" in lines
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert [row.removesuffix(r" \\").rsplit(" & ", 1)[1] for row in body] == ["2--3", r"1$^\sim$", "2--3"]
    header = lines[lines.index(r"\midrule") - 1]
    assert header.endswith(r"& rank \\") and header.count("&") == body[0].count("&")
    # A remedy the ranking lacks (none trained at its depths, say) gets a dash, not a shifted row.
    lines = formats.leaderboard_latex(golden_rows(), caption="c", ranked=ranked.iloc[:1]).splitlines()
    assert lines[lines.index(r"\midrule") + 1].endswith(r"& -- \\")


def test_latex_escapes_names():
    """Names from the data are escaped, the data set's too where a table spans several (then in a column)."""
    row = golden_rows().iloc[:1]
    rows = pd.concat([row.assign(dataset="a&b", remedy=r"50%_x\y"), row.assign(dataset="c", remedy="d")])
    lines = formats.leaderboard_latex(rows, caption="c").splitlines()
    assert r"\begin{tabular}{llrr}" in lines and r"data & remedy & test acc. & $\log_{10}\frac{g_1}{g_L}$ \\" in lines
    assert any(line.startswith(r"a\&b & 50\%\_x\textbackslash{}y & ") for line in lines)
    assert any(line.startswith("c & d & ") for line in lines)
    # Every character LaTeX reads as a command, in one pass (the braces of \textbackslash{} stay braces).
    assert formats.tex_escape(r"#$~^{}\ ") == r"\#\$\textasciitilde{}\textasciicircum{}\{\}\textbackslash{} "


# 6. the whole stage ---------------------------------------------------------------------------------------------

def _strict_json(text: str):
    def reject(constant):
        raise ValueError(f"not valid JSON: {constant}")
    return json.loads(text, parse_constant=reject)


def test_build_leaderboard(tmp_path, params, cells):
    write_results(tmp_path, cells)
    written = build.build_leaderboard(params, tmp_path, log_to_wandb=False)

    for name in ("leaderboard.json", "metrics.json", "leaderboard.csv", "leaderboard.md", "leaderboard.tex"):
        assert tmp_path / name in written and (tmp_path / name).stat().st_size > 0
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["depth_mlp_mnist1d.png", "grad_profile_mlp_mnist1d_d6.png"]
    for figure in figures:
        assert figure in written
        data = figure.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    summary = _strict_json((tmp_path / "leaderboard.json").read_text())
    assert summary["profile"] == "synthetic"
    assert summary["cells"] == 36 and summary["cells_missing"] == []
    assert set(summary["rows"]) == {f"mlp/mnist1d/{r}/d{d}" for r in REMEDIES for d in DEPTHS}
    row = summary["rows"]["mlp/mnist1d/small_init/d2"]
    assert row["learning_rate"] == 0.01 and row["depth"] == 2 and row["n"] == 3
    assert row["test_metric_mean"] == pytest.approx(0.42)
    assert row["test_metric_std"] == pytest.approx(0.02)
    assert row["epochs_to_target"] == pytest.approx(3.5)
    assert row.pop("higher_is_better") is True and row["metric"] == "accuracy"
    for value in row.values():
        assert isinstance(value, (int, float, str)) and not isinstance(value, bool) or value is None
    vanished_row = summary["rows"]["mlp/mnist1d/small_init/d6"]
    assert vanished_row["init_log10_dL_dh_first_last"] == "-inf"  # encoded, float() reads it back
    assert float(vanished_row["init_log10_dL_dh_first_last"]) == NEG_INF
    assert vanished_row["epochs_to_target"] is None  # NaN
    assert vanished_row["failures"] == "vanished 3/3"
    # write_json sorts keys, so the ranking order is in the "rank" values
    assert sorted((v["rank"], k, v["deepest_trainable_depth"]) for k, v in summary["frontier"].items()) == [
        (1, "mlp/mnist1d/he_relu", 6), (2, "mlp/mnist1d/grad_clip", 6), (3, "mlp/mnist1d/small_init", 2)]

    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(zip(csv["remedy"], csv["depth"])) == [(r, d) for r in REMEDIES for d in DEPTHS]
    assert csv["test_metric_mean"].tolist() == pytest.approx([0.42, 0.1, 0.7, 0.6, 0.6, 0.5])

    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("## mlp on mnist1d (profile synthetic)\n")
    assert ("| grad_clip | 6 | 0.1 ↑ | 0.500 ± 0.436 | [0.000, 1.000] | 3 | 67% | 67% | -0.3 | – | inf | 2.0 "
            "| diverged 1/3 |" in md)
    # he_relu (0.6 at every seed) and grad_clip (0.5 ± 0.44, its t interval [-0.58, 1.58] clipped to accuracy's range)
    # both train at depth 6: their intervals overlap.
    assert "| 1–2 | he_relu | 6 | 0.600 ± 0.000 | [0.600, 0.600] |" in md
    assert "| 1–2 | grad_clip | 6 | 0.500 ± 0.436 | [0.000, 1.000] |" in md and "| 3 | small_init | 2 |" in md
    tex = (tmp_path / "leaderboard.tex").read_text()
    assert (r"he\_relu\\{\scriptsize \cite{glorot2011deep,he2015delving}}\end{tabular} & "
            r"\begin{tabular}[t]{@{}r@{}}$0.700 \pm 0.050$\\"
            r"{\scriptsize $[0.576, 0.824]$}\end{tabular} & $0.2$ & \begin{tabular}[t]{@{}r@{}}$0.600 \pm 0.000$\\"
            r"{\scriptsize $[0.600, 0.600]$}\end{tabular} & $-\infty$ & 1--2 \\") in tex  # ranked as in the .md
    assert r"\label{tab:vgbench-mlp-mnist1d}" in tex and "over 3 seeds" in tex and "rank: tie-aware" in tex
    assert r"mlp on mnist1d~\cite{greydanus2020scaling}: " in tex  # the data set's source, in the caption
    # Published claims checked against these rows: he_relu trains at depth 6 (all 3 seeds), but one seed's
    # first-layer gradient is exactly 0 at init, so the row's mean log10 ratio is -inf, not flat: fails (the
    # finite seeds alone, -0.6, would have let it hold). Clipping changes the small-init ratio (-0.3 vs -inf):
    # that one fails too.
    claims = (tmp_path / "claims.md").read_text()
    assert claims.startswith("## Published claims (profile synthetic): 2 fails, 8 not in this profile\n")
    he_relu = summary["claims"]["he2015_relu_he_init"]
    assert "| `he2015_relu_he_init` |" in claims and he_relu["verdict"] == "fails"
    assert "he_relu d6: log10 dL/dh first/last -inf" in he_relu["evidence"]
    assert summary["claims"]["srivastava2015_highway_trains_deep"]["verdict"] == "not in this profile"
    assert summary["claims"]["pascanu2013_clipping_not_vanishing"]["verdict"] == "fails"
    # DVC's metrics file: the headline of the same tables, one short row (vgbench/report/headline.py).
    verdicts = [claim["verdict"] for claim in summary["claims"].values()]
    assert _strict_json((tmp_path / "metrics.json").read_text()) == {
        "profile": "synthetic", "cells": 36, "cells_missing": 0,
        "claims": {"holds": verdicts.count("holds"), "fails": verdicts.count("fails"),
                   "undetermined": verdicts.count("undetermined"), "not_in_profile": verdicts.count("not in this profile")},
        # At depth 6: he_relu and grad_clip train (3/3 and 2/3 seeds), small_init vanished (3/3); he_relu leads.
        "mlp/mnist1d": {"deepest": 6, "remedies": 3, "trainable_at_deepest": 2, "vanished_at_deepest": 1,
                        "leader": "he_relu", "leader_rank": "1–2", "leader_test_accuracy": 0.6}}
    assert verdicts.count("fails") == 2 and verdicts.count("not in this profile") == len(verdicts) - 2
    assert r"\label{tab:vgbench-claims}" in (tmp_path / "claims.tex").read_text()
    assert tmp_path / "references.bib" in written  # every key the tables cite, beside them
    cited = {key for group in re.findall(r"\\cite\{([^}]*)\}", tex) for key in group.split(",")}
    assert cited and cited <= set(re.findall(r"^@\w+\{([\w:-]+),", (tmp_path / "references.bib").read_text(), re.M))

    profile = pd.read_csv(tmp_path / "plots" / "grad_profile.csv")
    assert tmp_path / "plots" / "grad_profile.csv" in written
    assert list(profile.columns) == ["family", "dataset", "depth", "remedy", "layer", "log10_dL_dh_norm"]
    deepest = max(DEPTHS)
    assert set(profile["depth"]) == {deepest}
    assert len(profile) == len(REMEDIES) * deepest
    for remedy in REMEDIES:
        got = profile[profile["remedy"] == remedy].sort_values("layer")
        assert got["layer"].tolist() == list(range(1, deepest + 1))
        expected = []
        for layer in range(deepest):
            logs = [math.log10(n) if n > 0 else NEG_INF
                    for n in (init_norms(c)[layer] for c in cells
                              if c.remedy == remedy and c.depth == deepest and c.learning_rate == RATES[0])]
            expected.append(sum(logs) / len(logs))
        assert got["log10_dL_dh_norm"].tolist() == pytest.approx(expected)
    baseline = profile[profile["remedy"] == "small_init"].sort_values("layer")["log10_dL_dh_norm"].tolist()
    assert baseline[0] == NEG_INF  # the underflowed first layer
    assert baseline[-1] == pytest.approx(0.1)  # last layer: 10**(0.1 * seed), mean over seeds 0, 1, 2


def test_build_leaderboard_with_missing_cells(tmp_path, params, cells):
    skip = {c.cell_id for c in cells if c.remedy == "grad_clip" and c.depth == 6 and c.seed == 2}
    write_results(tmp_path, cells, skip=skip)
    build.build_leaderboard(params, tmp_path, log_to_wandb=False)
    summary = _strict_json((tmp_path / "leaderboard.json").read_text())
    assert sorted(summary["cells_missing"]) == sorted(skip)
    row = summary["rows"]["mlp/mnist1d/grad_clip/d6"]
    assert row["n"] == 2 and row["test_metric_mean"] == pytest.approx(0.75)
    assert row["failures"] == ""


def test_stale_and_damaged_results_are_left_out_and_named(tmp_path, params, cells):
    """A result from other training code, a cut-short metrics.json, a missing probe file, a metrics.json
    that is not text and one copied from another cell's folder are never averaged in: the rows have
    fewer seeds and leaderboard.md names each cell with the reason."""
    write_results(tmp_path, cells)
    rows = [c for c in cells if c.remedy == "he_relu" and c.learning_rate == 0.1][:5]
    other_code, cut_short, no_profile, not_text, copied = (results.cell_dir(tmp_path, c.cell_id) for c in rows)
    record = json.loads((other_code / "metrics.json").read_text())
    record["environment"]["code_fingerprint"] = "0123456789ab"
    (other_code / "metrics.json").write_text(json.dumps(record))
    (cut_short / "metrics.json").write_text((cut_short / "metrics.json").read_text()[:200])
    (no_profile / "grad_profile.json").unlink()
    (not_text / "metrics.json").write_bytes(b"\x80\x81 damaged")
    (copied / "metrics.json").write_text((other_code.parent / cells[0].cell_id / "metrics.json").read_text())
    frame, missing = aggregate.cell_table(cells, tmp_path)
    assert sorted(missing) == sorted(c.cell_id for c in rows) and len(frame) == len(cells) - 5
    states = [results.cell_state(tmp_path, c.cell_id).state for c in rows]
    assert states == ["stale"] * 5
    # A train retraining one of them (its live claim) makes it running, where it runs.
    from vgbench.claims import Claim

    claim = Claim(rows[0].cell_id, "token", "somehost", 4321, None, None, "local", 0.0)
    assert results.cell_state(tmp_path, rows[0].cell_id, claim) == results.CellState(rows[0].cell_id, "running",
                                                                                     claim.where)
    build.build_leaderboard(params, tmp_path, log_to_wandb=False)
    summary = _strict_json((tmp_path / "leaderboard.json").read_text())
    stale = dict(entry.split(": ", 1) for entry in summary["cells_left_out"]["stale"])
    assert sorted(stale) == sorted(c.cell_id for c in rows)
    assert "other vgbench training code" in stale[rows[0].cell_id] and "not valid JSON" in stale[rows[1].cell_id]
    assert "grad_profile.json is missing" in stale[rows[2].cell_id] and "not text" in stale[rows[3].cell_id]
    assert f"holds the result of cell {cells[0].cell_id}, not of {rows[4].cell_id}" in stale[rows[4].cell_id]
    text = (tmp_path / "leaderboard.md").read_text()
    assert "## Cells not in these tables (5 of" in text and "Stale (5):" in text
    assert all(c.cell_id in text for c in rows)


@pytest.mark.parametrize("damage", [b"\x80\x81", b"null", b'{"error": "no attempt"}', b'{"attempt": 2'])
def test_a_damaged_error_record_is_named_and_counted_as_a_first_attempt(tmp_path, damage):
    folder = results.cell_dir(tmp_path, "some-cell")
    folder.mkdir(parents=True)
    (folder / "error.json").write_bytes(damage)
    record = results.read_error(tmp_path, "some-cell")
    assert record["attempt"] == 1 and record["error"] == f"{folder / 'error.json'} is damaged"
    assert results.cell_state(tmp_path, "some-cell").state == "pending"


def test_build_leaderboard_without_results(tmp_path, params):
    with pytest.raises(build.NoResultsError, match="no cell results"):
        build.build_leaderboard(params, tmp_path, log_to_wandb=False)
    assert not (tmp_path / "leaderboard.json").exists()


def test_results_record_their_group_and_an_older_schema_is_stale(tmp_path, params, cells):
    """Each cell records the group it trained in (its row's seeds x rates); a result of schema 2 (before
    cell groups) is not read: it is stale, left out of the tables, and the cell is trained again."""
    write_results(tmp_path, cells)
    first = results.read_result(tmp_path, cells[0].cell_id)
    row = [c.cell_id for c in cells if (c.remedy, c.depth) == (cells[0].remedy, cells[0].depth)]
    assert first.schema_version == SCHEMA_VERSION == 5
    assert first.group.size == len(SEEDS) * len(RATES) == len(row) and first.group.cells == row
    assert first.group.index == 0 and first.group.id == group_id([c for c in cells if c.cell_id in row])
    folder = results.cell_dir(tmp_path, cells[0].cell_id)
    record = json.loads((folder / "metrics.json").read_text())
    del record["group"]
    record["schema_version"] = 2
    (folder / "metrics.json").write_text(json.dumps(record))
    state = results.cell_state(tmp_path, cells[0].cell_id)
    assert state.state == "stale" and "schema 2" in state.detail
    frame, missing = aggregate.cell_table(cells, tmp_path)
    assert missing == [cells[0].cell_id] and len(frame) == len(cells) - 1


def test_t_interval_of_seeds():
    from vgbench.report.statistics import t_interval

    low, high = t_interval(pd.Series([0.5, 0.6, 0.7]))  # mean 0.6, s 0.1, t(0.975, 2) = 4.3027
    assert (low, high) == pytest.approx((0.6 - 4.3027 * 0.1 / math.sqrt(3), 0.6 + 4.3027 * 0.1 / math.sqrt(3)),
                                        abs=1e-4)
    assert all(map(math.isnan, t_interval(pd.Series([0.5]))))              # one seed: no interval
    assert all(map(math.isnan, t_interval(pd.Series([0.1, math.inf]))))    # a diverged loss: none either


def test_an_interval_is_clipped_to_the_values_its_metric_can_take():
    """Seeds that split (one trains, two stay at chance) give a t interval past both ends of the accuracy
    range; a loss near 0 one below 0. The row reports the part a metric can reach, and the rank rule, which
    compares intervals, reads the clipped ends."""
    from vgbench.report.statistics import t_interval

    split = pd.Series([0.1, 0.1, 0.9])
    raw_low, raw_high = t_interval(split)
    assert raw_low < 0 and raw_high > 1                                  # the arithmetic of t(0.975, 2) = 4.30
    assert t_interval(split, (0.0, 1.0)) == (0.0, 1.0)
    losses = pd.Series([0.001, 0.002, 0.05])
    assert t_interval(losses, (0.0, math.inf)) == (0.0, pytest.approx(t_interval(losses)[1]))
    assert t_interval(pd.Series([0.5, 0.6, 0.7]), (0.0, 1.0)) == t_interval(pd.Series([0.5, 0.6, 0.7]))

    base = {"family": "rnn", "dataset": "d", "remedy": "r", "depth": 10, "learning_rate": 0.1, "val_metric": 0.5,
            "failure": None, "converged": True, "trainable": True, "init_log10_dL_dh_first_last": 0.0,
            "init_log10_weight_grad_first_last": 0.0, "epochs_to_target": None, "final_train_loss": 1.0,
            "theory_log10_dL_dh_first_last": math.nan, "theory": "not predicted: test", "wall_seconds": 1.0}
    accuracy = {**base, "task": "classification", "metric": "accuracy", "higher_is_better": True,
                "baseline_metric": 0.1}
    mse = {**base, "task": "regression", "metric": "mse", "higher_is_better": False, "baseline_metric": 0.167,
           "dataset": "adding"}
    frame = pd.DataFrame([{**accuracy, "seed": k, "test_metric": v} for k, v in enumerate(split)]
                         + [{**mse, "seed": k, "test_metric": v} for k, v in enumerate(losses)])
    rows = aggregate.leaderboard_rows(frame).set_index("dataset")
    assert (rows.loc["d", "test_metric_ci_low"], rows.loc["d", "test_metric_ci_high"]) == (0.0, 1.0)
    assert rows.loc["adding", "test_metric_ci_low"] == 0.0
    assert rows.loc["adding", "test_metric_ci_high"] == pytest.approx(t_interval(losses)[1])


def test_rows_carry_their_interval(rows, table):
    from scipy import stats

    row = rows.loc[("he_relu", 2)]
    seeds = table[(table["remedy"] == "he_relu") & (table["depth"] == 2)
                  & (table["learning_rate"] == row["learning_rate"])]["test_metric"]
    assert row["n"] == len(seeds) == 3 and seeds.std() > 0  # three distinct seeds: a real interval
    half = stats.t.ppf(0.975, 2) * seeds.std(ddof=1) / math.sqrt(3)
    assert (row["test_metric_ci_low"], row["test_metric_ci_high"]) == pytest.approx(
        (seeds.mean() - half, seeds.mean() + half), rel=1e-12)


def test_trainable_is_relative_to_the_best_shallow_row():
    """Best shallow gain over chance: remedy b at depth 2, 0.9 - 0.1 = 0.8; half of it is 0.4, so a deep
    cell needs accuracy 0.5. A cell at 0.35 passes the absolute bar (chance + 0.1) but is 'weak'."""
    base = {"family": "mlp", "dataset": "d", "task": "classification", "metric": "accuracy", "higher_is_better": True,
            "baseline_metric": 0.1,
            "seed": 0, "learning_rate": 0.1, "val_metric": 0.5, "failure": None, "converged": True,
            "init_log10_dL_dh_first_last": 0.0, "init_log10_weight_grad_first_last": 0.0, "epochs_to_target": None,
            "theory_log10_dL_dh_first_last": math.nan, "theory": "not predicted: test",
            "final_train_loss": 1.0, "wall_seconds": 1.0, "trainable": True}
    frame = pd.DataFrame([
        {**base, "remedy": "a", "depth": 2, "test_metric": 0.6},
        {**base, "remedy": "b", "depth": 2, "test_metric": 0.9},
        {**base, "remedy": "a", "depth": 20, "test_metric": 0.35},
        {**base, "remedy": "b", "depth": 20, "test_metric": 0.55},
    ])
    assert aggregate.shallow_reference_gain(frame).to_dict() == {("mlp", "d"): pytest.approx(0.8)}
    rows = aggregate.leaderboard_rows(frame).set_index(["remedy", "depth"])
    assert rows["trainable_rate"].to_dict() == {("a", 2): 1.0, ("b", 2): 1.0, ("a", 20): 0.0, ("b", 20): 1.0}
    assert rows.loc[("a", 20), "failures"] == "weak 1/1" and rows.loc[("a", 20), "rate_weak"] == 1.0
    # The fraction is a setting: at 0.25 the bar is 0.3 and 0.35 passes.
    assert aggregate.leaderboard_rows(frame, 0.25).set_index(["remedy", "depth"]).loc[("a", 20), "trainable_rate"] == 1
