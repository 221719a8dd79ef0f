"""Do the leaderboard's verdicts survive another reduction order? Threads 1 vs 2, same everything else.

A CPU result is bit-for-bit reproducible only on the same hardware and software: another CPU, or another
torch thread count, changes the order of floating-point reductions and with it the numbers. Changing the
thread count is the other-CPU experiment one machine can run. This script trains the profile (or the
cells matching ``--only``) with ``trainer.threads`` 1 and 2 into two results folders (``--reuse`` takes an
existing one for threads 1, e.g. ``results/`` after ``dvc repro``), builds both leaderboards, and reports:

- rows whose verdict differs: trainable (at least half the seeds) or not, failure labels, rank range,
  each marked soft (the threads-1 tables already showed it resting on seeds that disagree, or a rank
  range marked level-sensitive) or firm; and the chosen learning rates that differ;
- cells whose metric moved: bit-identical, within the threads-1 row's 95% interval, or beyond it.

    python bench/thread_stability.py --reuse results --jobs 2      # the default profile (~45 min more)
    python bench/thread_stability.py --only mlp- --out /tmp/ts     # one block
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from vgbench.report import MAJORITY, seeds_disagree

REPO = Path(__file__).resolve().parents[1]


def train(params: dict, threads: int, out: Path, data_root: Path, only: str, jobs: int) -> Path:
    """Fetch (if missing), train and aggregate the profile with ``threads`` torch threads per worker into
    ``out``."""
    params = json.loads(json.dumps(params))
    profile = params["profiles"][params["profile"]]
    profile.setdefault("trainer", {})["threads"] = threads
    profile.setdefault("launcher", {}).update(name="local", jobs=jobs)
    params["wandb"] = {**params.get("wandb", {}), "mode": "disabled"}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    common = ["--params", str(path), "--data-root", str(data_root), "--results-root", str(out)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for command in (["fetch"], ["train", *(["--only", only] if only else [])], ["leaderboard", "--no-wandb"]):
        subprocess.run([sys.executable, "-m", "vgbench", *command, *common], check=True, env=env)
    return out


def compare(one: Path, two: Path) -> dict:
    """What changed between the two leaderboards (threads 1 in ``one``, threads 2 in ``two``). Each verdict
    that changed is marked *soft* where the threads-1 tables already showed it resting on little: seeds
    that disagree (a trainable rate or failure labels short of unanimous) or a rank range marked
    level-sensitive (``~``); *firm* otherwise. A chosen learning rate is a choice, not a verdict: listed,
    not marked."""
    first, second = (json.loads((root / "leaderboard.json").read_text()) for root in (one, two))
    rows = sorted(set(first["rows"]) & set(second["rows"]))
    verdicts = []  # (text, "soft" | "firm" | "")
    for key in rows:
        a, b = first["rows"][key], second["rows"][key]
        mixed = "soft" if seeds_disagree(a) else "firm"
        for what, get, kind in (("trainable", lambda r: r["trainable_rate"] >= MAJORITY, mixed),
                                ("failures", lambda r: r["failures"], mixed),
                                ("learning rate", lambda r: r["learning_rate"], "")):
            if get(a) != get(b):
                verdicts.append((f"{key}: {what} {get(a)} -> {get(b)}", kind))
    rows_moved = {"identical": 0, "within interval": 0, "beyond interval": 0, "not comparable": 0}
    for key in rows:  # a row's mean under threads 2 against the threads-1 row's 95% interval
        rows_moved[_placed(first["rows"][key], float(second["rows"][key]["test_metric_mean"]))] += 1
    for key in sorted(set(first["frontier"]) & set(second["frontier"])):
        a, b = first["frontier"][key], second["frontier"][key]
        if a["rank_range"] != b["rank_range"]:
            verdicts.append((f"{key}: rank {a['rank_range']} -> {b['rank_range']}",
                             "soft" if a["rank_level_sensitive"] else "firm"))
    moved = {"identical": 0, "within interval": 0, "beyond interval": 0, "not comparable": 0}
    # The thread count is part of a cell's config (and id), so cells are matched by what they train.
    def by_cell(root: Path) -> dict:
        out = {}
        for path in root.glob("cells/*/metrics.json"):
            result = json.loads(path.read_text())
            cell = result["cell"]
            out[tuple(cell[k] for k in ("family", "dataset", "remedy", "depth", "seed", "learning_rate"))] = result
        return out

    seconds = by_cell(two)
    for key, a in sorted(by_cell(one).items()):
        b = seconds.get(key)
        if b is None:
            continue
        row = first["rows"].get("{}/{}/{}/d{}".format(*key[:4]))
        moved[_placed(row, float(b["test_metric"]), float(a["test_metric"]))] += 1
    soft = {"rows with seeds that disagree": sum(map(seeds_disagree, (first["rows"][k] for k in rows))),
            "level-sensitive rank ranges": sum(bool(r["rank_level_sensitive"]) for r in first["frontier"].values())}
    return {"rows": len(rows), "ranks": len(first["frontier"]), "verdict_changes": verdicts, "cells": moved,
            "row_means": rows_moved, "soft_in_threads_1": soft}


def _placed(row: dict | None, value: float, before: float | None = None) -> str:
    """Where ``value`` (threads 2) lies against threads 1: the same as ``before`` (the row's mean where
    None), within the threads-1 row's 95% interval, beyond it, or not comparable (no interval, NaN)."""
    before = float(row["test_metric_mean"]) if before is None and row else before
    low, high = (float(row[k]) if row and row.get(k) is not None else math.nan
                 for k in ("test_metric_ci_low", "test_metric_ci_high"))
    if value == before or (math.isnan(value) and before is not None and math.isnan(before)):
        return "identical"
    if math.isnan(low) or math.isnan(value):
        return "not comparable"
    return "within interval" if low <= value <= high else "beyond interval"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--only", default="", help="cells whose id contains this")
    parser.add_argument("--data-root", type=Path, default=REPO / "data")
    parser.add_argument("--reuse", type=Path, help="a results folder trained with threads 1 (its leaderboard too)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vgbench-thread-stability")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes per run (default 1)")
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    if args.profile:
        params["profile"] = args.profile
    one = args.reuse or train(params, 1, args.out / "threads1", args.data_root, args.only, args.jobs)
    two = train(params, 2, args.out / "threads2", args.data_root, args.only, args.jobs)
    report = compare(one, two)
    firm = sum(kind == "firm" for _, kind in report["verdict_changes"])
    print(f"{report['rows']} rows compared; verdicts that changed with threads 1 -> 2: "
          f"{len(report['verdict_changes'])}, of them firm in the threads-1 tables: {firm}")
    for line, kind in report["verdict_changes"]:
        print(f"  {line}" + (f" ({kind} in threads 1)" if kind else ""))
    for what, label in (("cells", "cells' test metric"), ("row_means", "rows' mean test metric")):
        print(f"{label}, threads 2 against the threads-1 row's 95% interval: "
              + ", ".join(f"{count} {how}" for how, count in report[what].items()))
    soft = report["soft_in_threads_1"]
    print(f"soft in the threads-1 tables: {soft['rows with seeds that disagree']} of {report['rows']} rows (seeds "
          f"disagree), {soft['level-sensitive rank ranges']} of {report['ranks']} rank ranges (level-sensitive, ~)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
