"""Why a cell failed to learn, from its probes and its accuracy.

Labels (``None`` for a cell that trained):
- ``diverged``: the loss became NaN/inf; training stopped there.
- ``vanished``: no learning, and at initialization log10(||dL/dh_first|| /
  ||dL/dh_last||) was below ``vanished_log10_ratio``.
- ``exploded``: no learning, and that ratio was above ``exploded_log10_ratio``
  or a gradient norm was not finite.
- ``dead_units``: no learning, and at the last probe more than
  ``dead_fraction`` of some layer's rectifier units were off for every sample.
- ``no_learning``: no learning and none of the above explains it.
"""

from __future__ import annotations

import math

FAILURE_LABELS = ("diverged", "vanished", "exploded", "dead_units", "no_learning")


def log10_ratio(ratio: float) -> float:
    """log10 of a first/last ratio; -inf when the first-layer gradient underflowed to 0."""
    if ratio == 0:
        return float("-inf")
    return math.log10(ratio) if ratio > 0 and math.isfinite(ratio) else float("nan")


def failure_label(*, diverged: bool, trainable: bool, init_record: dict, last_record: dict,
                  vanished_log10_ratio: float, exploded_log10_ratio: float, dead_fraction: float) -> str | None:
    if diverged:
        return "diverged"
    if trainable:
        return None
    ratio = log10_ratio(init_record["dL_dh_first_last_ratio"])
    if ratio < vanished_log10_ratio:  # nan compares False: no verdict from the ratio
        return "vanished"
    norms = [init_record["grad_total_norm"], last_record["grad_total_norm"]]
    if ratio > exploded_log10_ratio or not all(map(math.isfinite, norms)):
        return "exploded"
    if last_record.get("dead_fraction") and max(last_record["dead_fraction"]) > dead_fraction:
        return "dead_units"
    return "no_learning"
