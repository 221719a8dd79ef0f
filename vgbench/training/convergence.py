"""Did a cell's training converge within its budget, or was it still improving when the epochs ran out?

A leaderboard that compares depth 2 with depth 20 after a fixed number of epochs partly measures speed:
a deep net still improving at the end is *undertrained*, not untrainable. So every cell records how much
its best validation metric improved over the last fifth of its epochs, in the task's direction:
accuracy points for accuracy tasks, a fraction of the baseline loss for loss tasks (MSE, cross-entropy),
so that one tolerance (``training.convergence_tolerance``, default 0.01) reads the same for both. A
cell converged when that late improvement is below the tolerance.
"""

from __future__ import annotations

import math

LATE_FRACTION = 0.2  # the last fifth of the epochs


def late_improvement(values: list[float], higher_is_better: bool, baseline: float) -> float:
    """How much the best-so-far of ``values`` (one validation metric per epoch) improved over the last
    fifth of the epochs (at least the last one); NaN with fewer than two epochs or no finite value."""
    if len(values) < 2:
        return math.nan
    split = min(len(values) - 1, max(1, math.floor(len(values) * (1 - LATE_FRACTION))))
    best = max if higher_is_better else min

    def best_of(part: list[float]) -> float:
        finite = [v for v in part if math.isfinite(v)]
        return best(finite) if finite else math.nan

    before, overall = best_of(values[:split]), best_of(values)
    if math.isnan(overall):
        return math.nan
    if math.isnan(before):
        return math.inf  # it only learned anything at the very end
    return overall - before if higher_is_better else (before - overall) / baseline


def converged(improvement: float, tolerance: float) -> bool | None:
    """True when the late improvement is below ``tolerance``; None when it is undefined (NaN)."""
    return None if math.isnan(improvement) else improvement < tolerance
