"""The ``vgbench`` command: one subcommand per pipeline stage (dvc.yaml calls these).

    vgbench fetch [NAME ...]     build/download data sets into data/<name>/
    vgbench train [--only TEXT]  train every cell of the active profile not yet done
    vgbench leaderboard          aggregate cell results into results/leaderboard.*
    vgbench cells                list the cells of the active profile and their state

Configuration errors exit with status 2 and a message naming the key, the bad
value and what is allowed; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgbench.config import ConfigError, Params, load_params
from vgbench.data.store import DataNotReadyError
from vgbench.registry import UnknownNameError
from vgbench.report.build import NoResultsError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--profile", help="profile to use instead of params.yaml's `profile` key")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="default: %(default)s")
    parser.add_argument("--results-root", type=Path, default=Path("results"), help="default: %(default)s")


def _fetch(params: Params, args) -> int:
    from vgbench.data import DATASETS
    from vgbench.data.store import folder_for, is_current, label, prepare
    from vgbench.data.torchvision_sets import DatasetUnavailableError

    profile = params.active
    for name in args.names:
        if name not in profile.datasets:
            DATASETS.get(name)  # unknown names get the registry's error
            raise ConfigError(f"data set {name!r} is not configured in profile {params.profile!r} "
                              f"(configured: {sorted(profile.datasets)})")
    for name, length in profile.stored_datasets(args.names or None):
        settings, where = profile.dataset_settings(name), folder_for(name, args.data_root, length)
        if is_current(name, settings, args.data_root, length) and not args.force:
            print(f"{label(name, length)}: up to date in {where}")
            continue
        try:
            manifest = prepare(name, settings, args.data_root, length)
        except DatasetUnavailableError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{label(name, length)}: wrote {where} {manifest['sizes']}")
    return 0


def _train(params: Params, args) -> int:
    from vgbench import results
    from vgbench.matrix import expand
    from vgbench.training.run_cell import data_for, run_cell

    cells = [c for c in expand(params.active) if not args.only or args.only in c.cell_id]
    todo = [c for c in cells if args.force or not results.is_done(args.results_root, c.cell_id)]
    print(f"profile {params.profile}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
          f"{len(todo)} to train", flush=True)
    for folder in ("cells", "pretrained"):  # DVC outputs, present even when a profile leaves one empty
        (args.results_root / folder).mkdir(parents=True, exist_ok=True)
    data_cache: dict = {}
    for index, cell in enumerate(todo, 1):
        metrics = run_cell(cell, data_for(cell, args.data_root, data_cache), args.results_root, params.wandb)
        if metrics is not None:
            print(f"[{index}/{len(todo)}] {cell.cell_id}: test {metrics['metric']} {metrics['test_metric']:.3f} "
                  f"(baseline {metrics['baseline_metric']:.3f}), "
                  f"log10 dL/dh first/last {metrics['init_log10_dL_dh_first_last']:+.2f}, "
                  f"failure {metrics['failure']}, {metrics['wall_seconds']:.1f}s", flush=True)
    return 0


def _leaderboard(params: Params, args) -> int:
    from vgbench.report.build import build_leaderboard

    outputs = build_leaderboard(params, args.results_root, log_to_wandb=not args.no_wandb)
    for path in outputs:
        print(f"wrote {path}")
    return 0


def _cells(params: Params, args) -> int:
    from vgbench import results
    from vgbench.matrix import expand

    for cell in expand(params.active):
        state = "done" if results.is_done(args.results_root, cell.cell_id) else "todo"
        print(f"{state}  {cell.cell_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgbench", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="build or download data sets into data/<name>/")
    fetch.add_argument("names", nargs="*", help="data sets (default: all the active profile uses)")
    fetch.add_argument("--force", action="store_true", help="rebuild even if up to date")
    train = commands.add_parser("train", help="train the cells of the active profile that are not done")
    train.add_argument("--only", help="train only cells whose id contains this text")
    train.add_argument("--force", action="store_true", help="retrain cells that are done")
    board = commands.add_parser("leaderboard", help="aggregate results into leaderboard tables and figures")
    board.add_argument("--no-wandb", action="store_true", help="do not log the tables to W&B")
    commands.add_parser("cells", help="list the active profile's cells and whether each is done")
    for sub in (fetch, train, board, commands.choices["cells"]):
        _common(sub)
    return parser


HANDLERS = {"fetch": _fetch, "train": _train, "leaderboard": _leaderboard, "cells": _cells}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        return HANDLERS[args.command](params, args)
    except (ConfigError, UnknownNameError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataNotReadyError, NoResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
