"""Cells per minute of one slice of a profile under several launcher settings, side by side.

    python bench/launchers.py     # default MLP cells: serial:1x2:g1, serial:1x2, serial:1x1 and local:2x1
    python bench/launchers.py --only rnn- --setting serial:1x2:g1 --setting serial:1x2 --setting local:2x1

A setting is ``LAUNCHER:JOBSxTHREADS[:gSIZE]``: the cells' ``trainer.threads`` is
set to THREADS (the thread count is part of a cell's config, so each setting
trains its own cells from scratch), ``launcher.jobs`` to JOBS and
``launcher.group_size`` to SIZE (g1: one cell at a time; no suffix: whole
cell groups, a row's seeds x rates stacked in one network). Every
setting runs ``vgbench train --only TEXT`` in a fresh results folder on the
same fetched data, W&B off, and is timed end to end (process start-up
included, as a user would see it). The first setting is the baseline of the
ratio column.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(params: Path, data: Path, results: Path, only: str) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vgbench", "train", "--only", only, "--params", str(params),
                           "--data-root", str(data), "--results-root", str(results)],
                          capture_output=True, text=True, cwd=params.parent)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"vgbench train failed for {params}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, len(list((results / "cells").glob("*/metrics.json")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the params file (default: the repo's)")
    parser.add_argument("--only", default="mlp-", help="cells whose id contains this (default: %(default)s)")
    parser.add_argument("--setting", action="append", help="LAUNCHER:JOBSxTHREADS[:gSIZE] (repeatable)")
    args = parser.parse_args()
    settings = args.setting or ["serial:1x2:g1", "serial:1x2", "serial:1x1", "local:2x1"]
    raw = yaml.safe_load(args.params.read_text())
    raw["profile"], raw["wandb"]["mode"] = args.profile, "disabled"
    with tempfile.TemporaryDirectory(prefix="vgbench-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        subprocess.run([sys.executable, "-m", "vgbench", "fetch", "--params", str(args.params),
                        "--profile", args.profile, "--data-root", str(data)], check=True, capture_output=True)
        rows = []
        for setting in settings:
            launcher, shape, *size = setting.split(":")
            jobs, threads = (int(part) for part in shape.split("x"))
            profile = raw["profiles"][args.profile]
            profile["trainer"] = {**profile.get("trainer", {}), "threads": threads}
            profile["launcher"] = {"name": launcher, "jobs": jobs,
                                   "group_size": int(size[0].removeprefix("g")) if size else None}
            folder = root / setting.replace(":", "-")
            folder.mkdir()
            params = folder / "params.yaml"
            params.write_text(yaml.safe_dump(raw))
            seconds, cells = run(params, data, folder / "results", args.only)
            rows.append((setting, cells, seconds, cells / seconds * 60))
    base = rows[0][3]
    print(f"profile {args.profile}, cells matching {args.only!r}, W&B off")
    print(f"{'setting':<16} {'cells':>5} {'seconds':>8} {'cells/min':>9} {'ratio':>6}")
    for setting, cells, seconds, rate in rows:
        print(f"{setting:<16} {cells:>5} {seconds:>8.1f} {rate:>9.1f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
