"""Aggregate cell results into leaderboard rows; reads metrics.json files only.

The fair learning-rate protocol: every (family, remedy, data set, depth) is
trained at every rate of its block's grid for every seed. For each such group,
the rate with the best mean final-epoch *validation* metric over seeds is
chosen (the task's metric: accuracy, MSE or cross-entropy, in its direction; a
diverged seed counts as the worst value, accuracy 0 or loss +inf; ties go to
the smaller rate), and only that rate's *test* results are reported,
aggregated over seeds with their spread and a 95% t interval, clipped to the metric's range
(statistics.py).
No test number ever influences the choice. A rate chosen at the edge of its
grid is marked (``lr_grid_edge``): a wider grid might have done better there.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vgbench import results
from vgbench.config import Profile
from vgbench.matrix import CellSpec
from vgbench.probes.failure import FAILURE_LABELS
from vgbench.report import MAJORITY
from vgbench.report.statistics import level_sensitive, rank_ranges, rank_text, t_interval
from vgbench.tasks import TASKS
from vgbench.tuning import ROW
from vgbench.twins import stored_as

GROUP = list(ROW)  # a leaderboard row: the cells that differ only in seed (and rate, before the choice)


def cell_table(cells: list[CellSpec], results_root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per *done* cell of ``cells`` (a current, readable ``CellResult`` with its probe file);
    also the ids of the cells left out (``not_in_table`` says why)."""
    rows, missing, seen = [], [], set()
    for cell in cells:
        trained_as = stored_as(cell)  # a DBN twin reads its MLP cell's result (twins.py)
        stored = trained_as.cell_id
        if results.cell_state(results_root, stored).state != "done":
            if stored not in seen:
                seen.add(stored)
                missing.append(stored)  # not trained, failed, or stale: never averaged in
            continue
        result = results.read_result(results_root, stored)
        rows.append({
            "cell_id": stored, "family": cell.family, "dataset": cell.dataset, "remedy": cell.remedy,
            "depth": cell.depth, "seed": cell.seed, "learning_rate": cell.learning_rate,
            "task": result.task, "metric": result.metric, "higher_is_better": result.higher_is_better,
            "baseline_metric": result.baseline_metric,
            "val_metric": result.val_metric, "test_metric": result.test_metric,
            "trainable": result.trainable, "failure": result.failure, "converged": result.converged,
            "init_log10_dL_dh_first_last": result.init_log10_dL_dh_first_last,
            "theory_log10_dL_dh_first_last": result.theory_log10_dL_dh_first_last, "theory": result.theory,
            "init_log10_weight_grad_first_last": result.init_log10_weight_grad_first_last,
            "epochs_to_target": result.epochs_to_target, "final_train_loss": result.final_train_loss,
            "wall_seconds": result.wall_seconds,
            # The W&B run its training logged (None: W&B was off), under the family it trained as.
            "trained_as": trained_as.family, "wandb_run_id": (result.wandb or {}).get("run_id"),
        })
    return pd.DataFrame(rows), missing


def not_in_table(missing: list[str], results_root: Path) -> dict[str, list[str]]:
    """The cells a table leaves out, by why: ``failed`` (with the error), ``stale`` (a result from other
    training code, or a damaged one, with the reason) or ``missing`` (not trained yet, or training now)."""
    left_out: dict[str, list[str]] = {"failed": [], "stale": [], "missing": []}
    for cell_id in missing:
        state = results.cell_state(results_root, cell_id)
        if state.state in ("failed", "stale"):
            left_out[state.state].append(f"{cell_id}: {state.detail}")
        else:
            left_out["missing"].append(cell_id)
    return left_out


def _worst_if_missing(values: pd.Series, higher_is_better: pd.Series) -> pd.Series:
    """NaN (a diverged seed) becomes the worst value: accuracy 0, a loss +inf."""
    return values.where(values.notna(), higher_is_better.map({True: 0.0, False: math.inf}))


def seeds_every_rate_has(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells of the seeds that finished under every rate of their row, so that the rates are compared on
    the same seeds (a crashed cell leaves one rate a seed short: its mean would come from other draws). A row
    where no seed finished under every rate keeps all its cells; its crashed cells are listed under the
    tables either way."""
    rates_in_row = cells.groupby(GROUP)["learning_rate"].transform("nunique")
    rates_of_seed = cells.groupby(GROUP + ["seed"])["learning_rate"].transform("nunique")
    complete = rates_of_seed == rates_in_row
    row_has_one = complete.groupby([cells[column] for column in GROUP]).transform("any")
    return cells[complete | ~row_has_one]


def choose_learning_rates(cells: pd.DataFrame) -> pd.DataFrame:
    """(group..., learning_rate, selection_val_metric, lr_grid_edge): the chosen rate per group, its mean
    validation metric over the seeds every rate of the group has (``seeds_every_rate_has``), and where it sits
    in the group's grid: "upper" or "lower" at an edge, "only" for a grid of one rate, "" inside."""
    cells = seeds_every_rate_has(cells)
    val = _worst_if_missing(cells["val_metric"], cells["higher_is_better"])
    # One score where higher is better for every task (a loss is negated).
    scored = cells.assign(selection_score=val.where(cells["higher_is_better"], -val))
    means = scored.groupby(GROUP + ["learning_rate", "higher_is_better"], as_index=False)["selection_score"].mean()
    # Means of equal values summed in another order differ in the last bit; keep such ties ties.
    means["selection_score"] = means["selection_score"].round(12)
    means = means.sort_values(GROUP + ["selection_score", "learning_rate"],
                              ascending=[True] * len(GROUP) + [False, True])
    chosen = means.groupby(GROUP, as_index=False).head(1)
    value = chosen["selection_score"].where(chosen["higher_is_better"], -chosen["selection_score"])
    grid = means.groupby(GROUP)["learning_rate"].agg(["min", "max", "count"]).reset_index()
    chosen = chosen.merge(grid, on=GROUP)
    edge = [("only" if count == 1 else "upper" if rate == high else "lower" if rate == low else "")
            for rate, low, high, count in zip(chosen["learning_rate"], chosen["min"], chosen["max"], chosen["count"])]
    return chosen.assign(selection_val_metric=value.values, lr_grid_edge=edge)[
        GROUP + ["learning_rate", "selection_val_metric", "lr_grid_edge"]]


def _std(values: pd.Series) -> float:
    """The sample standard deviation; NaN (shown "–") where it is undefined: one seed, or a non-finite value."""
    if len(values) < 2 or not all(map(math.isfinite, values)):
        return float("nan")
    return float(values.std(ddof=1))


def _mean_of_measured(values: pd.Series) -> float:
    """The mean over the seeds where the value was measured (NaN, not measured, is left out). A log10 ratio
    of -inf, a first-layer gradient that underflowed to exactly 0, is the most vanished seed of all and
    counts: it makes the mean -inf (the geometric mean of ratios one of which is 0), never drops out."""
    measured = [v for v in values if v is not None and not math.isnan(v)]
    return sum(measured) / len(measured) if measured else float("nan")


def _gain(values: pd.Series, baseline: pd.Series, higher_is_better: pd.Series) -> pd.Series:
    """How far each value is from the task's baseline (chance, or the baseline loss), positive = better."""
    return (values - baseline).where(higher_is_better.astype(bool), baseline - values)


def shallow_reference_gain(picked: pd.DataFrame) -> pd.Series:
    """Per (family, data set): the best mean gain over the baseline among its shallowest depth's remedies
    (at their chosen rates): what a net of this family learns on this task when depth is no obstacle."""
    gains = picked.assign(_gain=_gain(_worst_if_missing(picked["test_metric"], picked["higher_is_better"]),
                                      picked["baseline_metric"], picked["higher_is_better"]))
    shallowest = gains[gains["depth"] == gains.groupby(["family", "dataset"])["depth"].transform("min")]
    return shallowest.groupby(["family", "dataset", "remedy"])["_gain"].mean().groupby(["family", "dataset"]).max()


def relatively_trainable(picked: pd.DataFrame, fraction_of_shallow: float) -> pd.Series:
    """Each cell's verdict in the tables: trainable by its own absolute bar (the probes' settings) *and*
    gaining at least ``fraction_of_shallow`` of its (family, data set)'s shallow reference gain."""
    reference = shallow_reference_gain(picked)
    bar = fraction_of_shallow * pd.Series([reference.get((f, d), math.nan) for f, d in
                                           zip(picked["family"], picked["dataset"])], index=picked.index)
    gain = _gain(picked["test_metric"], picked["baseline_metric"], picked["higher_is_better"])
    return picked["trainable"].astype(bool) & (gain >= bar)


def leaderboard_rows(cells: pd.DataFrame, fraction_of_shallow: float = 0.5) -> pd.DataFrame:
    """One row per (family, data set, remedy, depth) at its chosen learning rate.

    ``trainable_rate`` counts the seeds that pass ``relatively_trainable``; a seed that passes the
    absolute bar only is labelled ``weak`` among the failures."""
    chosen = choose_learning_rates(cells)
    picked = cells.merge(chosen, on=GROUP + ["learning_rate"])
    trainable = relatively_trainable(picked, fraction_of_shallow)
    weak = picked["trainable"].astype(bool) & ~trainable
    picked = picked.assign(trainable=trainable, failure=picked["failure"].where(~weak, "weak"))
    rows = []
    for key, group in picked.groupby(GROUP, sort=True):
        test = _worst_if_missing(group["test_metric"], group["higher_is_better"])
        reached = group["epochs_to_target"].dropna()
        row = dict(zip(GROUP, key))
        row.update({
            "learning_rate": group["learning_rate"].iloc[0],
            "lr_grid_edge": group["lr_grid_edge"].iloc[0],
            "metric": group["metric"].iloc[0],
            "higher_is_better": bool(group["higher_is_better"].iloc[0]),
            "baseline_metric": group["baseline_metric"].iloc[0],
            "selection_val_metric": group["selection_val_metric"].iloc[0],
            "n": len(group),
            "test_metric_mean": float(test.mean()), "test_metric_std": _std(test),
            **dict(zip(("test_metric_ci_low", "test_metric_ci_high"),
                       t_interval(test, TASKS.get(group["task"].iloc[0]).metric_range))),
            "trainable_rate": float(group["trainable"].mean()),
            "converged_rate": float((group["converged"] == True).mean()),  # noqa: E712 (None: not converged)
            "init_log10_dL_dh_first_last": _mean_of_measured(group["init_log10_dL_dh_first_last"]),
            "theory_log10_dL_dh_first_last": _mean_of_measured(group["theory_log10_dL_dh_first_last"]),
            "theory": "; ".join(sorted(set(group["theory"]))),
            "init_log10_weight_grad_first_last": _mean_of_measured(group["init_log10_weight_grad_first_last"]),
            "epochs_to_target": float(reached.median()) if len(reached) else float("nan"),
            "reached_target_rate": len(reached) / len(group),
            # A diverged seed's loss (NaN) counts as +inf, the worst, as its test metric does: a row whose
            # seeds diverged must not look trained by the mean of the others.
            "final_train_loss_mean": float(group["final_train_loss"].fillna(math.inf).mean()),
            "wall_seconds_mean": float(group["wall_seconds"].mean()),
        })
        for label in (*FAILURE_LABELS, "weak"):
            row[f"rate_{label}"] = float((group["failure"] == label).mean())
        row["failures"] = failure_summary(group["failure"])
        rows.append(row)
    return pd.DataFrame(rows)


def failure_summary(labels: pd.Series) -> str:
    """'vanished 2/2' style text; '' when every seed trained."""
    counts = labels.dropna().value_counts()
    return ", ".join(f"{label} {count}/{len(labels)}" for label, count in counts.items())


def frontier(rows: pd.DataFrame, majority: float = MAJORITY) -> pd.DataFrame:
    """Per (family, data set, remedy): the deepest depth at which at least half the seeds train, and the test
    metric at the block's deepest depth. A remedy with no row there yet (its cells missing or failed, as in
    the tables of a profile still training) has none: NaN, which no interval beats or is beaten by, so its
    rank is the widest range left, never a shallower depth's score compared with the others' deepest."""
    out = []
    block_deepest = rows.groupby(["family", "dataset"])["depth"].max()
    for (family, dataset, remedy), group in rows.groupby(["family", "dataset", "remedy"], sort=True):
        trained = group[group["trainable_rate"] >= majority]
        depth = int(block_deepest[(family, dataset)])
        at = group[group["depth"] == depth]
        deepest = at.iloc[0] if len(at) else None
        value = (lambda key: deepest[key]) if deepest is not None else (lambda key: math.nan)
        out.append({"family": family, "dataset": dataset, "remedy": remedy,
                    "metric": group["metric"].iloc[0], "higher_is_better": group["higher_is_better"].iloc[0],
                    "deepest_trainable_depth": int(trained["depth"].max()) if len(trained) else 0,
                    "deepest_depth": depth,
                    "test_metric_at_deepest": value("test_metric_mean"),
                    "test_metric_std_at_deepest": value("test_metric_std"),
                    "n_at_deepest": int(deepest["n"]) if deepest is not None else 0,
                    "test_metric_ci_low_at_deepest": value("test_metric_ci_low"),
                    "test_metric_ci_high_at_deepest": value("test_metric_ci_high")})
    return pd.DataFrame(out)


def ranking(front: pd.DataFrame) -> pd.DataFrame:
    """Remedies ranked within each (family, data set): ordered by frontier, then the mean metric at the
    deepest depth (``rank``, the position); ``rank_best``/``rank_worst``/``rank_range`` are the tie-aware
    ranks of statistics.py (remedies whose intervals overlap share a range), and ``rank_level_sensitive``
    says whether a 90% or 99% interval would change the range (its edges may move on another CPU)."""
    metric = front["test_metric_at_deepest"]
    goodness = metric.where(front["higher_is_better"].astype(bool), -metric)
    ordered = front.assign(_goodness=goodness).sort_values(
        ["family", "dataset", "deepest_trainable_depth", "_goodness"], ascending=[True, True, False, False])
    ordered = ordered.assign(rank=ordered.groupby(["family", "dataset"]).cumcount() + 1)
    parts = []
    for _, part in ordered.groupby(["family", "dataset"], sort=False):
        best, worst = rank_ranges(part)
        parts.append(part.assign(rank_best=best, rank_worst=worst,
                                 rank_range=[rank_text(b, w) for b, w in zip(best, worst)],
                                 rank_level_sensitive=level_sensitive(part, best, worst)))
    ordered = (pd.concat(parts) if parts else
               ordered.assign(rank_best=[], rank_worst=[], rank_range=[], rank_level_sensitive=[]))
    return ordered.drop(columns="_goodness").reset_index(drop=True)


def in_matrix_order(rows: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Sort rows as params.yaml lists them (baseline first), not alphabetically."""
    order = {}
    for block in profile.matrix:
        for remedy in block.remedies:
            order.setdefault((block.family, block.dataset, remedy), len(order))
    key = rows.apply(lambda r: order.get((r["family"], r["dataset"], r["remedy"]), len(order)), axis=1)
    return rows.assign(_order=key).sort_values(["_order", "depth"]).drop(columns="_order").reset_index(drop=True)
