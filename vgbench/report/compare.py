"""Two runs of one profile side by side: which numbers and verdicts another machine kept, and which it moved.

A CPU result is bit for bit only on the same hardware and software; on another CPU (or with another torch
thread count) float rounding moves numbers within their intervals and, now and then, a verdict, firm ones
included (README, "Across machines"). So the README tells a reader to check a verdict that matters on a
second machine, and this module is that check (``vgbench compare``). Given two runs' ``leaderboard.json``
(or their results folders), it reports:

- each row's mean test metric against the *first* run's 95% interval: identical (mean and interval), within
  it, beyond it, or not comparable (no interval); and the rows whose validation chose another learning rate;
- each row's *outcome* (its trainable share and failure labels, what its seeds did), marked *soft* on a
  machine whose seeds disagree there (``seeds_disagree``) and *firm* where they agree, a flip of the
  trainable verdict (at least half the seeds) called out; the rows whose outcome is the same and firm on
  both machines are the ones a citation can lean on;
- rank ranges that moved (soft where the first run marks them level-sensitive, ``~``) and claims whose
  verdict changed;
- each cell's test metric (``leaderboard.json`` lists them, ``cell_metrics``): bit-identical, within its
  row's interval, or beyond, which tells a same-machine reproduction (every cell identical) from another
  machine's, against a results folder or a bare leaderboard such as the README's ``bench/reference/``.

``bench/thread_stability.py`` compares its threads-1 and threads-2 arms with the same functions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vgbench.report import MAJORITY, seeds_disagree

LEADERBOARD = "leaderboard.json"
KEYS = ("rows", "frontier", "claims", "provenance")  # what a leaderboard.json must hold to be compared
PLACES = ("identical", "within interval", "beyond interval", "not comparable")


class CompareError(ValueError):
    """A path given to ``vgbench compare`` is not a leaderboard (or a results folder holding one)."""


@dataclass(frozen=True)
class Run:
    """One side of a comparison: its leaderboard, under a label."""

    label: str
    board: dict

    @property
    def cells(self) -> dict[str, dict] | None:
        """Its cells' test metrics by cell id (the leaderboard's ``cell_metrics``; None for a leaderboard
        written before it listed them)."""
        return self.board.get("cell_metrics")


def read_run(path: Path) -> Run:
    """A results folder (its leaderboard.json) or a leaderboard.json alone: the leaderboard lists its cells,
    so a folder's other cells (another profile's, a stale run's) never enter the comparison."""
    file = path / LEADERBOARD if path.is_dir() else path
    try:
        board = json.loads(file.read_text())
    except FileNotFoundError:
        raise CompareError(f"{file}: no such file; give a leaderboard.json or the results folder that holds one "
                           f"(`vgbench leaderboard` writes it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompareError(f"{file}: not a readable leaderboard.json ({error})") from None
    missing = [key for key in KEYS if not isinstance(board, dict) or not isinstance(board.get(key), dict)]
    if missing:
        raise CompareError(f"{file}: not a vgbench leaderboard.json: it lacks {', '.join(missing)} (a leaderboard "
                           f"holds {', '.join(KEYS)})")
    return Run(str(path), board)


def number(value) -> float:
    """A leaderboard.json number: null is NaN, "inf" and "-inf" are the infinities JSON cannot spell."""
    return math.nan if value is None else float(value)


def placed(row: dict | None, value: float, before: float) -> str:
    """Where a cell's ``value`` in the second run lies against the first run: identical to its value there
    (``before``), else as ``against_interval`` says."""
    if value == before or (math.isnan(value) and math.isnan(before)):
        return "identical"
    return against_interval(row, value)


def against_interval(row: dict | None, value: float) -> str:
    """Within the first run's row's 95% interval, beyond it, or not comparable (no interval, NaN)."""
    low, high = (number(row.get(key)) if row else math.nan for key in ("test_metric_ci_low", "test_metric_ci_high"))
    if math.isnan(low) or math.isnan(value):
        return "not comparable"
    return "within interval" if low <= value <= high else "beyond interval"


def _tally() -> Counter:
    """Every place at 0, so that the report names each one even where none landed there."""
    return Counter(dict.fromkeys(PLACES, 0))


def _same_numbers(a: dict, b: dict) -> bool:
    def key(row):
        return tuple(number(row.get(k)) for k in ("test_metric_mean", "test_metric_ci_low", "test_metric_ci_high"))
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(key(a), key(b)))


def outcome(row: dict) -> str:
    """What a row's seeds did: the share that trained and the failure labels with their counts."""
    n = row.get("n")
    trained = f"trainable {round(row['trainable_rate'] * n)}/{n}" if n else f"trainable {row['trainable_rate']:.0%}"
    return ", ".join(filter(None, [trained, row.get("failures") or ""]))


@dataclass(frozen=True)
class Change:
    """One verdict that differs between the runs: the row, rank range or claim, what each run says, and
    whether each run's seeds agreed there (firm) or not (soft)."""

    key: str
    first: str
    second: str
    soft_in_first: bool
    soft_in_second: bool
    flips: bool = False  # a row whose trainable verdict (at least half its seeds) itself changed


@dataclass
class Comparison:
    first: Run
    second: Run
    shared_rows: list[str] = field(default_factory=list)
    only_first: list[str] = field(default_factory=list)
    only_second: list[str] = field(default_factory=list)
    row_means: Counter = field(default_factory=_tally)  # PLACES -> rows
    rates: list[tuple[str, object, object]] = field(default_factory=list)
    outcomes: list[Change] = field(default_factory=list)
    firm_and_same: list[str] = field(default_factory=list)
    ranks: list[Change] = field(default_factory=list)
    claims: list[Change] = field(default_factory=list)
    claims_compared: int = 0
    cells: Counter | None = None  # PLACES -> cells, where both leaderboards list their cells


def compare(first: Run, second: Run) -> Comparison:
    a_rows, b_rows = first.board["rows"], second.board["rows"]
    result = Comparison(first, second, shared_rows=[key for key in a_rows if key in b_rows],
                        only_first=[key for key in a_rows if key not in b_rows],
                        only_second=[key for key in b_rows if key not in a_rows])
    for key in result.shared_rows:
        a, b = a_rows[key], b_rows[key]
        # Identical only with the interval too: an equal mean over other seeds' values is a move within it.
        place = "identical" if _same_numbers(a, b) else against_interval(a, number(b["test_metric_mean"]))
        result.row_means[place] += 1
        if a.get("learning_rate") != b.get("learning_rate"):
            result.rates.append((key, a.get("learning_rate"), b.get("learning_rate")))
        soft = seeds_disagree(a), seeds_disagree(b)
        if outcome(a) != outcome(b):
            flips = (a["trainable_rate"] >= MAJORITY) != (b["trainable_rate"] >= MAJORITY)
            result.outcomes.append(Change(key, outcome(a), outcome(b), *soft, flips=flips))
        elif not any(soft):
            result.firm_and_same.append(key)
    a_ranks, b_ranks = first.board["frontier"], second.board["frontier"]
    for key in (key for key in a_ranks if key in b_ranks):
        a, b = a_ranks[key], b_ranks[key]
        if a.get("rank_range") != b.get("rank_range"):
            result.ranks.append(Change(key, str(a.get("rank_range")), str(b.get("rank_range")),
                                       bool(a.get("rank_level_sensitive")), bool(b.get("rank_level_sensitive"))))
    a_claims, b_claims = first.board["claims"], second.board["claims"]
    shared_claims = [key for key in a_claims if key in b_claims]
    result.claims_compared = len(shared_claims)
    for key in shared_claims:
        a, b = a_claims[key], b_claims[key]
        if a.get("verdict") != b.get("verdict"):
            result.claims.append(Change(key, str(a.get("verdict")), str(b.get("verdict")),
                                        bool(a.get("soft_rows")), bool(b.get("soft_rows"))))
    if first.cells is not None and second.cells is not None:
        seconds = _by_training(second.cells)
        result.cells = cell_moves((a_rows.get(a["row"]), number(b["test_metric"]), number(a["test_metric"]))
                                  for key, a in _by_training(first.cells).items()
                                  if (b := seconds.get(key)) is not None)
    return result


def _by_training(cells: dict[str, dict]) -> dict[tuple, dict]:
    """Cells by what they train (row, seed and learning rate), not by id: the id hashes the whole config, the
    torch thread count included, and two machines may run the profile with different counts."""
    return {(cell["row"], cell["seed"], cell["learning_rate"]): cell for cell in cells.values()}


def cell_moves(pairs) -> Counter:
    """How many cells' test metrics were identical, within or beyond their row's interval in the first run,
    from (first run's row, second value, first value) triples."""
    moves = _tally()
    for row, after, before in pairs:
        moves[placed(row, after, before)] += 1
    return moves


def _machine(board: dict) -> dict[str, str]:
    """A run's machine and software, from its provenance block (one entry per environment its cells saw)."""
    source = board["provenance"]
    environments = source.get("environments") or [{}]

    def each(describe) -> str:
        return "; ".join(sorted({text for env in environments if (text := describe(env))})) or "–"

    def kernels(env: dict) -> str:
        if not env.get("cpu_capability"):
            return ""
        isa, cap = env.get("onednn_isa"), env.get("onednn_max_cpu_isa")  # older results: the cap only
        onednn = f"{isa} (at most {cap})" if isa and cap else isa or (f"at most {cap}" if cap else "")
        return f"{env['cpu_capability']} kernels" + (f", oneDNN {onednn}" if onednn else "")

    git = source.get("git") or {}
    commit = (git.get("commit") or "–")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    return {"profile": str(source.get("profile") or board.get("profile")), "commit": commit,
            "training code": each(lambda env: env.get("code_fingerprint")), "CPU": each(lambda env: env.get("cpu_id")),
            "CPU kernels": each(kernels), "GPU": each(lambda env: env.get("gpu")),
            "torch": each(lambda env: env.get("torch")),
            "torch threads": each(lambda env: str(env.get("torch_threads") or "")),
            "cells": str(source.get("cells", "–"))}


def _mark(change: Change) -> str:
    return "/".join("soft" if soft else "firm" for soft in (change.soft_in_first, change.soft_in_second))


def markdown(result: Comparison) -> str:
    """The comparison as Markdown: machines, numbers, then every verdict that changed."""
    first, second = _machine(result.first.board), _machine(result.second.board)
    lines = [f"# {result.first.label} against {result.second.label}", "",
             "| | first | second |", "|---|---|---|"]
    lines += [f"| {what} | {first[what]} | {second[what]} |" for what in first]
    lines.append("")
    if first["profile"] != second["profile"]:
        lines += [f"The runs are of different profiles ({first['profile']}, {second['profile']}): only the rows "
                  f"both hold are compared.", ""]
    if first["training code"] != second["training code"]:
        lines += ["The training code differs (fingerprints above): what moved may be the code's doing, not the "
                  "machine's. Compare runs of one commit to see the machine's.", ""]
    shared = len(result.shared_rows)
    lines += ["## Numbers", "",
              f"{shared} rows in both runs ({len(result.only_first)} only in the first, {len(result.only_second)} "
              f"only in the second). Each row's mean test metric in the second run, against the first run's 95% "
              f"interval: " + _counts(result.row_means, "identical (mean and interval)") + "."]
    if result.cells is not None:
        lines += ["", f"{sum(result.cells.values())} cells in both runs (matched by row, seed and "
                      f"learning rate). Each one's test metric in the second run, against its row's 95% interval in "
                      f"the first: " + _counts(result.cells, "bit-identical") + "."]
    else:
        older = [run.label for run in (result.first, result.second) if run.cells is None]
        lines += ["", f"Cells not compared: {' and '.join(older)} list{'s' if len(older) == 1 else ''} no cell "
                      f"metrics (a leaderboard.json written before vgbench listed them; `vgbench leaderboard` on its "
                      f"results folder rebuilds it)."]
    lines += ["", f"Learning rates chosen differently: {len(result.rates)} of {shared} rows"
              + (": " + "; ".join(f"{key} {a} → {b}" for key, a, b in result.rates) if result.rates else "") + ".",
              "", "## Verdicts", "",
              f"Rows with the same outcome (trainable share and failure labels) on both: "
              f"{shared - len(result.outcomes)} of {shared}; the same and firm on both (every seed agrees, on each "
              f"machine): {len(result.firm_and_same)}. Flips of the trainable verdict (at least half the seeds): "
              f"{sum(c.flips for c in result.outcomes)}.", ""]
    if result.outcomes:
        lines += ["| row | first | second | seeds (first/second) |", "|---|---|---|---|"]
        lines += [f"| {c.key}{' (verdict flips)' if c.flips else ''} | {c.first} | {c.second} | {_mark(c)} |"
                  for c in result.outcomes]
        lines.append("")
    ranks = len(set(result.first.board["frontier"]) & set(result.second.board["frontier"]))
    lines.append(f"Rank ranges that moved: {len(result.ranks)} of {ranks}"
                 + ("" if not result.ranks else ": " + "; ".join(
                     f"{c.key} {c.first} → {c.second} ({'~' if c.soft_in_first else 'not level-sensitive'} in the "
                     f"first)" for c in result.ranks)) + ".")
    lines += ["", f"Claims whose verdict changed: {len(result.claims)} of {result.claims_compared}"
              + ("" if not result.claims else ": " + "; ".join(
                  f"{c.key} {c.first} → {c.second} (resting on rows whose seeds disagree: "
                  f"{'yes' if c.soft_in_first else 'no'} in the first, {'yes' if c.soft_in_second else 'no'} in "
                  f"the second)" for c in result.claims)) + "."]
    firm_changes = [c.key for c in result.outcomes if not (c.soft_in_first or c.soft_in_second)]
    if firm_changes:
        lines += ["", f"Firm on both machines and still changed: {', '.join(firm_changes)}. A firm verdict is "
                      "no promise that another machine agrees: cite these with the machine they came from."]
    return "\n".join(lines) + "\n"


def _counts(counts: Counter, identical: str) -> str:
    return ", ".join(f"{counts[place]} {identical if place == 'identical' else place}" for place in PLACES)
