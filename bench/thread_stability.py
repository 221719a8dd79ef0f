"""Do the leaderboard's verdicts survive another reduction order? Threads 1 vs 2, same everything else.

A CPU result is bit-for-bit reproducible only on the same hardware and software: another CPU, or another
torch thread count, changes the order of floating-point reductions and with it the numbers. Changing the
thread count is the other-CPU experiment one machine can run. This script trains the profile (or the
cells matching ``--only``) with ``trainer.threads`` 1 and 2 into two results folders (``--reuse`` takes an
existing one for threads 1, e.g. ``results/`` after ``dvc repro``), builds both leaderboards, and prints
``vgbench compare``'s report of the two (vgbench/report/compare.py):

- rows whose outcome (trainable share, failure labels) differs, each marked soft or firm in each arm
  (its seeds disagree there, or agree), a flip of the trainable verdict called out; rank ranges and
  claims that moved; the chosen learning rates that differ;
- rows' means and cells' test metrics: bit-identical, within the threads-1 row's 95% interval, or beyond.

    python bench/thread_stability.py --reuse results --jobs 2      # the default profile (~45 min more)
    python bench/thread_stability.py --only mlp- --out /tmp/ts     # one block
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from vgbench.report import compare

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
    print(compare.markdown(compare.compare(compare.read_run(one), compare.read_run(two))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
