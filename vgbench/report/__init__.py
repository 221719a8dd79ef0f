"""Reports built from cell results alone: leaderboard tables, W&B tables, figures."""

# A row's verdict is the verdict of at least half of its seeds: the trainability frontier, the claims
# (vgbench/findings.py) and the W&B Report's summaries all read "trainable" (or "vanished") this way.
MAJORITY = 0.5


def row_key(family: str, dataset: str, remedy: str, depth) -> str:
    """A leaderboard row's key in leaderboard.json ("mlp/mnist1d/he_relu/d20"): build.py writes it, and
    compare.py finds a cell's row by it."""
    return f"{family}/{dataset}/{remedy}/d{depth}"


def seeds_disagree(row) -> bool:
    """Do a leaderboard row's seeds differ in outcome: some trainable and some not, or a failure label that
    some seeds have and others not (its ``rate_<label>`` shares)? Such a row's verdicts are *soft*: another
    reduction order or another CPU moves them most often (README, "Across machines")."""
    shares = [row["trainable_rate"], *(value for key, value in row.items() if str(key).startswith("rate_"))]
    return any(0 < share < 1 for share in shares)


class NoResultsError(RuntimeError):
    """The active profile has no finished cell to aggregate. (Here, not in build.py: the command line catches
    it, and importing build.py's pandas, SciPy and matplotlib would cost every command ~3 s.)"""


def at_deepest(rows) -> tuple[int, list[str], list[str]]:
    """One (family, data set)'s leaderboard rows at their deepest depth: (that depth, the remedies trainable
    there, the remedies whose gradient vanished there), each by the verdict of at least half its seeds."""
    deepest = rows[rows["depth"] == rows["depth"].max()]
    trained = deepest[deepest["trainable_rate"] >= MAJORITY]["remedy"].tolist()
    vanished = deepest[deepest.get("rate_vanished", 0) >= MAJORITY]["remedy"].tolist()
    return int(deepest["depth"].max()), trained, vanished
