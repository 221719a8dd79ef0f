"""Intervals over seeds and tie-aware ranks: what a leaderboard may claim from a handful of seeds.

A row's 95% confidence interval is Student's t interval of its seeds' mean, mean ± t(0.975, n−1) · s / √n,
clipped to the values its metric can take (accuracy in [0, 1], a loss at least 0): with 3 to 5 seeds a
bootstrap over seeds has too few distinct resamples to be trusted, and t is what benchmark papers report.
It is undefined (NaN) for one seed or a non-finite value (a loss of +inf from a diverged seed), and the
table shows "–".

Ranks are ranges, as in benchmark papers that rank with intervals (e.g. Chatbot Arena): remedy i is
*beaten* by j when j trains deeper (a deeper trainability frontier), or trains as deep and j's interval
at the deepest depth lies wholly on the better side of i's. Then i's best possible rank is 1 + the
number of remedies that beat it, and its worst is the number of remedies it does not beat; remedies
whose intervals overlap share a range such as "1–3".

A range is *level-sensitive* when a 90% or a 99% interval would give another one: its edges rest on
intervals that nearly touch (or nearly clear each other), so the rounding of another CPU, which acts on
a long SGD run like a fresh draw, can move them. Measured with 1 vs 2 torch threads over the default
profile (bench/thread_stability.py): every rank range that moved was level-sensitive in the first run.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

LEVEL = 0.95
OTHER_LEVELS = (0.90, 0.99)  # the levels a level-sensitive rank range is checked at


def t_half_width(std: float, n: int, level: float = LEVEL) -> float:
    """Half the width of the t interval of a mean of ``n`` values with standard deviation ``std``."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n) if n >= 2 else math.nan


def t_interval(values: pd.Series, within: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """(low, high) of the 95% t interval of the mean of ``values``, clipped to ``within`` (the metric's
    range, ``Task.metric_range``); (nan, nan) when undefined.

    With three seeds t(0.975, 2) = 4.3, so a row whose seeds split (one trains, two stay at chance) gets an
    accuracy interval such as [-0.69, 1.34]: arithmetic, not a possible outcome, and a reader copying it
    into a paper would print an accuracy below 0. Clipping keeps the interval's coverage (the true mean lies
    in the range, so the clipped interval holds it whenever the t interval does) and never changes a rank:
    every mean lies inside the range, so an interval that clears another's clears it clipped too, and one
    that overlaps still does."""
    n = len(values)
    if n < 2 or not all(map(math.isfinite, values)):
        return math.nan, math.nan
    mean, half = float(values.mean()), t_half_width(float(values.std(ddof=1)), n)
    low, high = within
    return max(mean - half, low), min(mean + half, high)


def _bounds(row: pd.Series) -> tuple[float, float]:
    """The interval a remedy is compared with: its t interval, or its mean alone where that is undefined."""
    low, high = row["test_metric_ci_low_at_deepest"], row["test_metric_ci_high_at_deepest"]
    if math.isnan(low) or math.isnan(high):
        return row["test_metric_at_deepest"], row["test_metric_at_deepest"]
    return low, high


def _beats(j: pd.Series, i: pd.Series) -> bool:
    """Does remedy j rank above remedy i whatever the seeds' noise (see the module docstring)?"""
    if j["deepest_trainable_depth"] != i["deepest_trainable_depth"]:
        return j["deepest_trainable_depth"] > i["deepest_trainable_depth"]
    (j_low, j_high), (i_low, i_high) = _bounds(j), _bounds(i)
    return j_low > i_high if i["higher_is_better"] else j_high < i_low


def rank_ranges(front: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Best and worst rank of each row of one (family, data set)'s frontier, in its row order."""
    rows = [row for _, row in front.iterrows()]
    best = [1 + sum(_beats(j, i) for j in rows) for i in rows]
    worst = [len(rows) - sum(_beats(i, j) for j in rows) for i in rows]
    return best, worst


def rank_text(best: int, worst: int) -> str:
    return str(best) if best == worst else f"{best}–{worst}"


def level_sensitive(front: pd.DataFrame, best: list[int], worst: list[int]) -> list[bool]:
    """For each row of one (family, data set)'s frontier, ranked ``best``–``worst`` at ``LEVEL``: would its
    rank range differ with the interval at one of ``OTHER_LEVELS``? (The frontier carries each remedy's
    mean, std and n at its deepest depth.)"""
    ranges = list(zip(best, worst))
    sensitive = [False] * len(front)
    for level in OTHER_LEVELS:
        half = [t_half_width(std, int(n), level) for std, n in
                zip(front["test_metric_std_at_deepest"], front["n_at_deepest"])]
        other = front.assign(test_metric_ci_low_at_deepest=front["test_metric_at_deepest"] - half,
                             test_metric_ci_high_at_deepest=front["test_metric_at_deepest"] + half)
        sensitive = [s or a != b for s, a, b in zip(sensitive, ranges, zip(*rank_ranges(other)))]
    return sensitive
