"""The headline numbers: a small ``results/metrics.json`` that ``dvc metrics show`` and ``dvc metrics diff``
(and ``dvc exp show``) can print as a readable row.

``leaderboard.json`` holds every row, interval and claim (about 300 KB); declared as DVC's metrics file it
made ``dvc metrics show`` one table row thousands of columns wide. This file keeps what a comparison between
two runs or commits turns on, per (family, data set) block at its deepest depth: how many remedies train,
how many vanish, and which remedy leads with what test metric; and over the profile: cells, missing cells
and the published claims' verdicts. Every number is read from the same tables as the leaderboard.
"""

from __future__ import annotations

import pandas as pd

from vgbench.findings import ABSENT, FAILS, HOLDS, UNDETERMINED
from vgbench.report import at_deepest


def block_headline(rows: pd.DataFrame, ranked: pd.DataFrame) -> dict:
    """One (family, data set) block: its deepest depth, the remedies trainable there (by at least half their
    seeds), those whose gradient vanished there, and the rank-1 remedy with its test metric and its tie-aware
    rank range: "1–2" says another remedy's interval overlaps it, so "leader" is not a win over that one."""
    deepest, trained, vanished = at_deepest(rows)
    leader = ranked.sort_values("rank").iloc[0]
    return {
        "deepest": deepest,
        "remedies": int(rows[rows["depth"] == deepest]["remedy"].nunique()),
        "trainable_at_deepest": len(trained),
        "vanished_at_deepest": len(vanished),
        "leader": str(leader["remedy"]),
        "leader_rank": str(leader["rank_range"]),
        f"leader_test_{leader['metric']}": float(f"{leader['test_metric_at_deepest']:.4g}"),  # 4 significant digits
    }


def headline(profile: str, cells: int, missing: int, rows: pd.DataFrame, ranked: pd.DataFrame,
             claims: pd.DataFrame) -> dict:
    verdicts = claims["verdict"].value_counts() if len(claims) else pd.Series(dtype=int)
    summary = {
        "profile": profile, "cells": cells, "cells_missing": missing,
        "claims": {"holds": int(verdicts.get(HOLDS, 0)), "fails": int(verdicts.get(FAILS, 0)),
                   "undetermined": int(verdicts.get(UNDETERMINED, 0)), "not_in_profile": int(verdicts.get(ABSENT, 0))},
    }
    for (family, dataset), block in rows.groupby(["family", "dataset"], sort=False):
        block_ranked = ranked[(ranked["family"] == family) & (ranked["dataset"] == dataset)]
        summary[f"{family}/{dataset}"] = block_headline(block, block_ranked)
    return summary
