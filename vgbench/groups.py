"""Cell groups: the cells of one leaderboard row that train together as one stacked network.

Two cells belong to the same row when their configs differ only in seed and
learning rate (same family, remedy, data set, depth, model, training, trainer
and probe settings): exactly what a stacked network can hold, since every
model reads the same shapes and runs the same code (vgbench/models/stacked.py,
vgbench/training/stacked_optim.py). ``group`` splits the cells it is given
into such groups, in the order it meets them, at most ``max_size`` cells each
(one for cells whose precision's loss scaler would tie the models' steps together).

Which cells share a group changes nothing in any cell's result (the models
never touch each other's slices; tests/test_stacking.py checks it bit for
bit), so the split is free to follow whatever is left to train: a rerun after
an interruption groups the pending cells of a row, whatever ran before.
"""

from __future__ import annotations

import hashlib
import json

from vgbench.matrix import CellSpec

VARIES_WITHIN_A_GROUP = ("seed", "learning_rate")


def row_key(cell: CellSpec) -> str:
    """The cell's config without seed and learning rate: equal for every cell of its row."""
    config = {key: value for key, value in cell.as_dict().items() if key not in VARIES_WITHIN_A_GROUP}
    return json.dumps(config, sort_keys=True)


# Float16 mixed precision scales the loss, and its scaler skips the optimizer step when any gradient
# overflowed: in a stacked group, one model's overflow (or a diverged model's NaN) would skip every model's
# step. So such cells train one per group (bf16-mixed has no scaler and stacks).
ONE_PER_GROUP_PRECISIONS = ("16-mixed",)


def trains_alone(cell: CellSpec) -> bool:
    return cell.trainer.get("precision") in ONE_PER_GROUP_PRECISIONS


def group(cells: list[CellSpec], max_size: int | None = None) -> list[list[CellSpec]]:
    """Cells of one row together (first-met order), split into groups of at most ``max_size`` (one for a cell
    that ``trains_alone``)."""
    rows: dict[str, list[CellSpec]] = {}
    for cell in cells:
        rows.setdefault(row_key(cell), []).append(cell)
    size = max_size or max((len(row) for row in rows.values()), default=1)
    groups = []
    for row in rows.values():
        step = 1 if trains_alone(row[0]) else size
        groups += [row[start:start + step] for start in range(0, len(row), step)]
    return groups


def group_id(cells: list[CellSpec]) -> str:
    """Names a group by its members (a checkpoint is only resumed by the same group)."""
    digest = hashlib.sha256("\n".join(sorted(cell.cell_id for cell in cells)).encode()).hexdigest()[:10]
    first = cells[0]
    return f"{first.family}-{first.remedy}-{first.dataset}-d{first.depth}-k{len(cells)}-{digest}"
