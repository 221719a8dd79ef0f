"""Why a cell failed to learn, from its training outcome and its probes.

Labels (``None`` for a cell that trained), in the order they are tested:
- ``diverged``: the loss became NaN/inf; training stopped there.
- ``undertrained``: not trainable, but its best validation metric was still improving by at least
  ``training.convergence_tolerance`` over the last fifth of the epochs (training/convergence.py): the
  budget stopped it, not the gradient.
- ``vanished``: no learning, and log10(||dL/dh_first|| / ||dL/dh_last||) was below
  ``vanished_log10_ratio`` at initialization *and* still at the last probe: the gradient never
  reached the first layers during training (a net whose gradient recovered is not "vanished").
- ``exploded``: no learning, and that ratio was above ``exploded_log10_ratio`` at initialization
  or a gradient norm was not finite.
- ``dead_units``: no learning, and at the last probe more than ``dead_fraction`` of some layer's
  ReLU units were off for every sample (leaky ReLU, ELU and SELU units keep a gradient below 0).
- ``no_learning``: no learning and none of the above explains it.
"""

from __future__ import annotations

import math

FAILURE_LABELS = ("diverged", "undertrained", "vanished", "exploded", "dead_units", "no_learning")


def log10_ratio(ratio: float) -> float:
    """log10 of a first/last ratio; -inf when the first-layer gradient underflowed to 0."""
    if ratio == 0:
        return float("-inf")
    return math.log10(ratio) if ratio > 0 and math.isfinite(ratio) else float("nan")


def failure_label(*, diverged: bool, trainable: bool, converged: bool | None, init_record: dict,
                  last_record: dict, vanished_log10_ratio: float, exploded_log10_ratio: float,
                  dead_fraction: float) -> str | None:
    if diverged:
        return "diverged"
    if trainable:
        return None
    if converged is False:
        return "undertrained"
    ratio = log10_ratio(init_record["dL_dh_first_last_ratio"])
    last_ratio = log10_ratio(last_record["dL_dh_first_last_ratio"])
    # nan compares False: no verdict from a ratio that is not a number
    if ratio < vanished_log10_ratio and last_ratio < vanished_log10_ratio:
        return "vanished"
    norms = [init_record["grad_total_norm"], last_record["grad_total_norm"]]
    if ratio > exploded_log10_ratio or not all(map(math.isfinite, norms)):
        return "exploded"
    if last_record.get("dead_fraction") and max(last_record["dead_fraction"]) > dead_fraction:
        return "dead_units"
    return "no_learning"
