"""Cells that would train another family's very network are trained once, under that cell's id.

A DBN stack without pretraining is the MLP family's network (the same builder, hyperparameters and
base recipe), so the DBN block's ``small_init``, ``batchnorm`` and ``residual`` rows would train the MLP
rows' networks a second time and get identical numbers. A family says so with ``Family.trains_as``; a
cell of it whose remedy gives the same recipe in that family (and that does not pretrain) is *stored
as* its twin there: it is trained as the twin cell, its state and result are the twin's, and the
leaderboard shows that one result in both families' tables. A remedy that means something else in the
other family (DBN ``xavier`` keeps sigmoid units, MLP ``xavier`` is tanh) is not a twin.
"""

from __future__ import annotations

import dataclasses

from vgbench.matrix import CellSpec
from vgbench.models import FAMILIES
from vgbench.remedies import REMEDIES


def stored_as(cell: CellSpec) -> CellSpec:
    """The cell whose training and result stand for ``cell``: its twin in ``Family.trains_as``, or itself."""
    target = FAMILIES.get(cell.family).trains_as
    remedy = REMEDIES.get(cell.remedy)
    if target is None or cell.pretrain is not None or target not in remedy.families:
        return cell
    if remedy.recipe(target).as_dict() != cell.recipe:
        return cell
    return dataclasses.replace(cell, family=target)


def unique_stored(cells: list[CellSpec]) -> list[CellSpec]:
    """The cells to train for ``cells``: each one's stored cell, once, in order."""
    seen, out = set(), []
    for cell in map(stored_as, cells):
        if cell.cell_id not in seen:
            seen.add(cell.cell_id)
            out.append(cell)
    return out
