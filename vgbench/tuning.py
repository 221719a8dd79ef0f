"""Learning-rate grids that grow at their edges: no row is ranked at an edge it could have crossed.

The fair protocol chooses each row's rate on validation from its block's grid. When the chosen rate is
the grid's largest (or smallest), a rate beyond it might have done better, so with
``tuning.extend_edge_rates: N`` the row gets one more rate beyond that edge, for every seed, and is
chosen again; at most N times. The next rate continues the grid's ratio at that edge (0.03, 0.1 → 0.3),
rounded to one significant digit where that stays beyond the edge.

The added cells are a pure function of the results on disk (``matrix_cells``): the launcher, its
workers, ``status`` and the leaderboard all compute the same set, and a row is extended only once all
of its cells are done, so a worker that looks while others train sees the launcher's cells or more.
A rate once added stays in its row's grid while any of its cells has a result folder, for every seed,
even when the row is unfinished again (a seed added to the profile) or its choice has moved inside:
the leaderboard keeps choosing among all of the row's rates, and ``status --prune`` never removes
current results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vgbench import results
from vgbench.config import Profile
from vgbench.matrix import CellSpec, expand
from vgbench.twins import stored_as

ROW = ("family", "dataset", "remedy", "depth")


def row_of(cell: CellSpec) -> tuple:
    return tuple(getattr(cell, key) for key in ROW)


def beyond(edge: float, neighbour: float) -> float:
    """The next rate past ``edge``, away from ``neighbour``, at the same ratio."""
    exact = edge * (edge / neighbour)
    for digits in (1, 2):
        rounded = float(f"{exact:.{digits}g}")
        if (rounded > edge) == (exact > edge) and rounded != edge:
            return rounded
    return exact


def edge_extensions(cells: list[CellSpec], results_root: Path) -> list[CellSpec]:
    """The cells one round of extension adds to ``cells``: for each row whose cells are all done and
    whose chosen rate sits on the upper or lower edge of its grid, every seed at the rate beyond it; and
    for any row, every seed at a rate beyond an edge where one of them has a result folder already."""
    from vgbench.report import aggregate  # pandas: only when extending

    table, missing = aggregate.cell_table(cells, results_root)
    missing = set(missing)
    unfinished = {row_of(cell) for cell in cells if stored_as(cell).cell_id in missing}
    chosen = {} if table.empty else {tuple(getattr(row, k) for k in ROW): row.lr_grid_edge
                                     for row in aggregate.choose_learning_rates(table).itertuples()}
    rows: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        rows.setdefault(row_of(cell), []).append(cell)
    known = {cell.cell_id for cell in cells}
    added = []
    for key, members in rows.items():
        grid = sorted({cell.learning_rate for cell in members})
        if len(grid) < 2:
            continue
        for edge, neighbour, side in ((grid[-1], grid[-2], "upper"), (grid[0], grid[1], "lower")):
            new = [dataclasses.replace(cell, learning_rate=beyond(edge, neighbour))
                   for cell in members if cell.learning_rate == edge]
            chosen_here = key not in unfinished and chosen.get(key) == side
            if chosen_here or any(results.cell_dir(results_root, stored_as(cell).cell_id).is_dir() for cell in new):
                added += [cell for cell in new if cell.cell_id not in known]
    return added


def matrix_cells(profile: Profile, results_root: Path) -> list[CellSpec]:
    """The profile's cells (``expand``) and the edge extensions its results call for, in a stable order."""
    cells = expand(profile)
    for _ in range(profile.tuning.extend_edge_rates):
        added = edge_extensions(cells, results_root)
        if not added:
            break
        cells = cells + added
    return cells
