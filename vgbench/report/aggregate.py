"""Aggregate cell results into leaderboard rows; reads metrics.json files only.

The fair learning-rate protocol: every (family, remedy, data set, depth) is
trained at every rate of the profile's grid for every seed. For each such
group, the rate with the highest mean final-epoch *validation* accuracy over
seeds is chosen (a diverged seed counts as 0; ties go to the smaller rate),
and only that rate's *test* results are reported, aggregated over seeds with
their spread. No test number ever influences the choice.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vgbench import results
from vgbench.config import Profile
from vgbench.matrix import CellSpec
from vgbench.probes.failure import FAILURE_LABELS

GROUP = ["family", "dataset", "remedy", "depth"]


def cell_table(cells: list[CellSpec], results_root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished cell of ``cells``; also the ids of cells without a result."""
    rows, missing = [], []
    for cell in cells:
        metrics = results.read_metrics(results_root, cell.cell_id)
        if metrics is None:
            missing.append(cell.cell_id)
            continue
        rows.append({
            "cell_id": cell.cell_id, "family": cell.family, "dataset": cell.dataset, "remedy": cell.remedy,
            "depth": cell.depth, "seed": cell.seed, "learning_rate": cell.learning_rate,
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "trainable": bool(metrics["trainable"]), "failure": metrics["failure"],
            "init_log10_dL_dh_first_last": metrics["init_log10_dL_dh_first_last"],
            "init_log10_weight_grad_first_last": metrics["init_log10_weight_grad_first_last"],
            "epochs_to_target": metrics["epochs_to_target"], "final_train_loss": metrics["final_train_loss"],
            "wall_seconds": metrics["wall_seconds"], "chance_accuracy": metrics["chance_accuracy"],
        })
    return pd.DataFrame(rows), missing


def choose_learning_rates(cells: pd.DataFrame) -> pd.DataFrame:
    """(group..., learning_rate, mean validation accuracy) of the chosen rate per group."""
    scored = cells.assign(selection_score=cells["val_accuracy"].fillna(0.0))
    means = scored.groupby(GROUP + ["learning_rate"], as_index=False)["selection_score"].mean()
    # Means of equal accuracies summed in another order differ in the last bit; keep such ties ties.
    means["selection_score"] = means["selection_score"].round(12)
    means = means.sort_values(GROUP + ["selection_score", "learning_rate"],
                              ascending=[True] * len(GROUP) + [False, True])
    return means.groupby(GROUP, as_index=False).head(1).rename(
        columns={"selection_score": "selection_val_accuracy"})


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _finite_mean(values: pd.Series) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite:
        return sum(finite) / len(finite)
    return float("-inf") if any(v == float("-inf") for v in values) else float("nan")


def leaderboard_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, data set, remedy, depth) at its chosen learning rate."""
    chosen = choose_learning_rates(cells)
    picked = cells.merge(chosen, on=GROUP + ["learning_rate"])
    rows = []
    for key, group in picked.groupby(GROUP, sort=True):
        test = group["test_accuracy"].fillna(0.0)
        reached = group["epochs_to_target"].dropna()
        row = dict(zip(GROUP, key))
        row.update({
            "learning_rate": group["learning_rate"].iloc[0],
            "selection_val_accuracy": group["selection_val_accuracy"].iloc[0],
            "n": len(group),
            "test_accuracy_mean": float(test.mean()), "test_accuracy_std": _std(test),
            "trainable_rate": float(group["trainable"].mean()),
            "init_log10_dL_dh_first_last": _finite_mean(group["init_log10_dL_dh_first_last"]),
            "init_log10_weight_grad_first_last": _finite_mean(group["init_log10_weight_grad_first_last"]),
            "epochs_to_target": float(reached.median()) if len(reached) else float("nan"),
            "reached_target_rate": len(reached) / len(group),
            "final_train_loss_mean": _finite_mean(group["final_train_loss"]),
            "wall_seconds_mean": float(group["wall_seconds"].mean()),
            "chance_accuracy": group["chance_accuracy"].iloc[0],
        })
        for label in FAILURE_LABELS:
            row[f"rate_{label}"] = float((group["failure"] == label).mean())
        row["failures"] = failure_summary(group["failure"])
        rows.append(row)
    return pd.DataFrame(rows)


def failure_summary(labels: pd.Series) -> str:
    """'vanished 2/2' style text; '' when every seed trained."""
    counts = labels.dropna().value_counts()
    return ", ".join(f"{label} {count}/{len(labels)}" for label, count in counts.items())


def frontier(rows: pd.DataFrame, majority: float = 0.5) -> pd.DataFrame:
    """Per (family, data set, remedy): the deepest depth at which at least half the seeds train."""
    out = []
    for (family, dataset, remedy), group in rows.groupby(["family", "dataset", "remedy"], sort=True):
        trained = group[group["trainable_rate"] >= majority]
        deepest = group.loc[group["depth"].idxmax()]
        out.append({"family": family, "dataset": dataset, "remedy": remedy,
                    "deepest_trainable_depth": int(trained["depth"].max()) if len(trained) else 0,
                    "deepest_depth": int(deepest["depth"]),
                    "test_accuracy_at_deepest": deepest["test_accuracy_mean"],
                    "test_accuracy_std_at_deepest": deepest["test_accuracy_std"]})
    return pd.DataFrame(out)


def ranking(front: pd.DataFrame) -> pd.DataFrame:
    """Remedies ranked within each (family, data set): by frontier, then accuracy at the deepest depth."""
    ordered = front.sort_values(["family", "dataset", "deepest_trainable_depth", "test_accuracy_at_deepest"],
                                ascending=[True, True, False, False])
    ordered = ordered.assign(rank=ordered.groupby(["family", "dataset"]).cumcount() + 1)
    return ordered.reset_index(drop=True)


def in_matrix_order(rows: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Sort rows as params.yaml lists them (baseline first), not alphabetically."""
    order = {}
    for block in profile.matrix:
        for remedy in block.remedies:
            order.setdefault((block.family, block.dataset, remedy), len(order))
    key = rows.apply(lambda r: order.get((r["family"], r["dataset"], r["remedy"]), len(order)), axis=1)
    return rows.assign(_order=key).sort_values(["_order", "depth"]).drop(columns="_order").reset_index(drop=True)
