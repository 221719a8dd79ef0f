"""The ``vgbench`` command: one subcommand per pipeline stage (dvc.yaml calls these).

    vgbench fetch [NAME ...]     build/download data sets into data/<name>/
    vgbench train [--only TEXT]  train every cell of the active profile not yet done
                  [--launcher serial|local|slurm] [--jobs N] [--detach] [--retry-failed]
    vgbench leaderboard          aggregate cell results into results/leaderboard.*
    vgbench cells                list the cells of the active profile and their state
    vgbench status               per family: done, running (where), failed (why), pending
    vgbench plan                 cells, steps and estimated device-hours of the active profile
    vgbench compare FIRST SECOND two runs' leaderboards (another machine's): numbers and verdicts that moved

``train`` exits 1 unless every cell of the selection is done (so DVC never
records a partial run), naming what is not done and why.

Configuration errors exit with status 2 and a message naming the key, the bad
value and what is allowed; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

from vgbench.config import ConfigError, Params, load_params, updated
from vgbench.data.store import DataNotReadyError
from vgbench.launch.request import LaunchError
from vgbench.registry import UnknownNameError
from vgbench.report import NoResultsError
from vgbench.report.compare import CompareError
from vgbench.report.readme import REFERENCE_DIR, ReadmeError
from vgbench.report.wandb_report import ReportError


DEFAULT_PARAMS, DEFAULT_DATA_ROOT = Path("params.yaml"), Path("data")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--profile", help="profile to use instead of params.yaml's `profile` key")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="default: %(default)s")
    parser.add_argument("--results-root", type=Path, default=Path("results"), help="default: %(default)s")


def _timing_device(text: str) -> str:
    """An argparse type for ``plan --device``: "cpu", or "cuda" / "cuda:N" where torch sees that GPU."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: vgbench plans for cpu or cuda, not {device.type}")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here; "
                                         f"plan on a GPU node, or with --device cpu")
    return text


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _fetch(params: Params, args) -> int:
    from vgbench.data import DATASETS
    from vgbench.data.store import ensure
    from vgbench.data.torchvision_sets import DatasetUnavailableError

    profile = params.active
    for name in args.names:
        if name not in profile.datasets:
            DATASETS.get(name)  # unknown names get the registry's error
            raise ConfigError(f"data set {name!r} is not configured in profile {params.profile!r} "
                              f"(configured: {sorted(profile.datasets)})")
        if not profile.stored_datasets([name]):  # a sequence task is stored per length, and no block gives one
            raise ConfigError(f"data set {name!r} is stored per sequence length, and no matrix block of profile "
                              f"{params.profile!r} uses it: nothing to fetch (its lengths are the depths of the "
                              f"blocks that use it)")
    try:
        ensure(profile, args.data_root, args.names or None, force=args.force, say=print)
    except DatasetUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _states(params: Params, results_root: Path, only: str | None = None, every: list | None = None):
    """(cells, {cell_id: CellState}) of the active profile (``every``: its cells, if the caller has them),
    live claims included."""
    from vgbench import claims, results
    from vgbench.tuning import matrix_cells
    from vgbench.twins import stored_as

    every = every if every is not None else matrix_cells(params.active, results_root)
    cells = [c for c in every if not only or only in c.cell_id]
    if not cells:  # a misspelt filter would train nothing and report "all 0 cells done"
        raise ConfigError(f"--only {only!r} matches no cell id of profile {params.profile!r} ({len(every)} cells, "
                          f"such as {every[0].cell_id}); it is a substring of the ids `vgbench cells` lists")
    held = claims.live_claims(results_root) if claims.is_rank_zero() else {}
    stored = {c.cell_id: stored_as(c).cell_id for c in cells}  # a DBN twin's state is its MLP cell's
    return cells, {c.cell_id: results.cell_state(results_root, stored[c.cell_id], held.get(stored[c.cell_id]))
                   for c in cells}


def _check_writable(results_root: Path) -> None:
    """Before any work: results can be written (found now, not after a whole cell has trained)."""
    try:
        for folder in ("cells", "pretrained"):  # DVC outputs, present even when a profile leaves one empty
            (results_root / folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=results_root / "cells").close()
    except OSError as error:
        raise LaunchError(f"cannot write results under {results_root}: {error}") from None


def _fetch_command(args, names: list[str]) -> str:
    """The ``vgbench fetch`` that stores ``names`` where this command reads them: with its --params,
    --profile and --data-root where they are not the defaults."""
    options = [("--params", args.params, DEFAULT_PARAMS), ("--profile", args.profile, None),
               ("--data-root", args.data_root, DEFAULT_DATA_ROOT)]
    return shlex.join(["vgbench", "fetch", *names,
                       *(part for flag, value, default in options if value != default for part in (flag, str(value)))])


def _check_data(cells, profile, args) -> None:
    """Before any work: every data set the cells read is stored, made with the profile's settings, and its
    files match the manifest's checksums."""
    from vgbench.data import DATASETS
    from vgbench.data.store import label, problem

    needed = {(c.dataset, DATASETS.get(c.dataset).length_for(c.depth)) for c in cells}
    problems = {(name, length): problem(name, profile.dataset_settings(name), args.data_root, length)
                for name, length in sorted(needed, key=str)}
    stale = {entry: why for entry, why in problems.items() if why is not None}
    if stale:
        names = list(dict.fromkeys(name for name, _ in stale))
        raise DataNotReadyError("; ".join(f"{label(*entry)}: {why}" for entry, why in stale.items())
                                + f": run `{_fetch_command(args, names)}` first (it rebuilds what is wrong)")


def _check_cpu_kernels(profile, settings) -> None:
    """Refuse a profile pinning CPU kernels this machine cannot run, before anything trains (a SLURM node may
    be another machine: each group checks its own there)."""
    from vgbench import cpu_kernels

    if settings.name != "slurm" and (why := cpu_kernels.unavailable(profile.trainer.cpu_capability)):
        raise ConfigError(why)


def _train(params: Params, args) -> int:
    from vgbench import claims
    from vgbench.launch import LAUNCHERS
    from vgbench.launch.request import LaunchRequest, launch_folder
    from vgbench.training.wandb_run import check_online_login
    from vgbench.twins import stored_as, unique_stored

    profile = params.active
    settings = updated(profile.launcher, {key: value for key, value in (("name", args.launcher), ("jobs", args.jobs))
                                          if value is not None}, "vgbench train's --launcher/--jobs")
    launch = LAUNCHERS.get(settings.name)
    for flag, given, launcher in (("--jobs", args.jobs is not None, "local"), ("--detach", args.detach, "slurm")):
        if given and settings.name != launcher:
            raise ConfigError(f"{flag} is for the {launcher} launcher; this launch uses {settings.name!r} "
                              f"(--launcher {launcher}, or drop {flag})")
    _check_writable(args.results_root)
    check_online_login(params.wandb)
    launched: set[str] = set()
    replaced: dict = {}  # --force: each launched cell's metrics.json mark at its launch (launch/marks.py)
    # One launch, then one more per round of learning-rate grid extension that adds cells (tuning.py).
    for round_ in range(1 + profile.tuning.extend_edge_rates):
        cells, states = _states(params, args.results_root, args.only)
        count = Counter(s.state for s in states.values())
        wanted = {"pending", "stale"} | ({"failed"} if args.retry_failed else set())
        todo = unique_stored([c for c in cells if c.cell_id not in launched
                              and (args.force or states[c.cell_id].state in wanted)])
        if round_ and not todo:
            break
        print(f"profile {params.profile}: {len(cells)} cells, {count['done']} done, {count['failed']} failed"
              f"{' (retrying)' if args.retry_failed else ' (--retry-failed retrains them)'}, "
              f"{count['running']} running elsewhere; {len(todo)} to train with the {settings.name} launcher"
              + (f" (learning-rate grid extension, round {round_})" if round_ else ""), flush=True)
        _check_data(todo, profile, args)
        if todo:
            if not round_:
                _check_cpu_kernels(profile, settings)
            trained = {t.cell_id for t in todo}
            launched |= {c.cell_id for c in cells if stored_as(c).cell_id in trained}
            folder, snapshot = launch_folder(args.results_root, args.params)
            request = LaunchRequest(params=params, params_path=snapshot, profile=params.profile, cells=todo,
                                    data_root=args.data_root, results_root=args.results_root, folder=folder,
                                    settings=settings, retry_failed=args.retry_failed or args.force,
                                    force=args.force, detach=args.detach)
            if args.force:
                replaced |= {cell_id: marks[0] for cell_id, marks in request.marks.items()}
            try:
                finished = launch(request)
            except LaunchError:
                if [path.name for path in folder.iterdir()] == [snapshot.name]:  # nothing launched: no trace
                    shutil.rmtree(folder)
                raise
            if not finished or not claims.is_rank_zero():
                return 0  # detached, or a DDP rank > 0 (rank 0 writes the results and reports)
    cells, states = _states(params, args.results_root, args.only)
    not_done = {cell_id: s for cell_id, s in states.items() if s.state != "done"}
    if args.force:
        not_done |= _forced_but_not_retrained(cells, states, launched, args.results_root, replaced)
    if not_done:
        by_state: dict[str, list[str]] = {}
        for cell_id, state in not_done.items():
            by_state.setdefault(state.state, []).append(cell_id)
        print(f"error: {len(not_done)} of {len(cells)} cells are not done ("
              + "; ".join(f"{len(ids)} {state}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                          for state, ids in sorted(by_state.items()))
              + ("); `vgbench status` says why" if not args.force else
                 "); `vgbench status` says why, and for a failed --force retrain the cell's error.json"),
              file=sys.stderr)
        return 1
    print(f"profile {params.profile}: all {len(cells)} cells done", flush=True)
    return 0


def _forced_but_not_retrained(cells: list, states: dict, launched: set[str], results_root: Path,
                              replaced: dict) -> dict:
    """``train --force``: the launched cells whose result is still the one their launch found (``replaced``:
    its mark then): "running" where another process holds the cell now, else "failed" (the retraining
    failed, its error.json says why, and the older result stays: "done" to ``status``, but not what this
    command was asked to do)."""
    from vgbench import claims
    from vgbench.launch.marks import metrics_mark
    from vgbench.results import CellState
    from vgbench.twins import stored_as

    held = claims.live_claims(results_root)
    not_replaced = [cell for cell in cells if cell.cell_id in launched and states[cell.cell_id].state == "done"
                    and metrics_mark(results_root, stored_as(cell).cell_id) == replaced[stored_as(cell).cell_id]]
    return {cell.cell_id: (CellState(cell.cell_id, "running", held[stored_as(cell).cell_id].where)
                           if stored_as(cell).cell_id in held else
                           CellState(cell.cell_id, "failed", "retrained with --force, which failed (its error.json "
                                                             "says why); the older result stays"))
            for cell in not_replaced}


def _leaderboard(params: Params, args) -> int:
    from vgbench.report.build import build_leaderboard
    from vgbench.training.wandb_run import check_online_login

    if not args.no_wandb:
        check_online_login(params.wandb)
    outputs = build_leaderboard(params, args.results_root, log_to_wandb=not args.no_wandb, params_path=args.params,
                                data_root=args.data_root)
    for path in outputs:
        print(f"wrote {path}")
    return 0


def _claims(params: Params, args) -> int:
    from vgbench.report.build import aggregate_results
    from vgbench.report.formats import claims_markdown

    print(claims_markdown(aggregate_results(params, args.results_root).claims, params.profile), end="")
    return 0


def _report(params: Params, args) -> int:
    from vgbench.report import wandb_report
    from vgbench.report.build import aggregate_results
    from vgbench.training.wandb_run import check_online_login

    data = aggregate_results(params, args.results_root)
    spec, written = wandb_report.write(params, args.results_root, data.rows, data.ranked, data.table)
    for path in written:
        print(f"wrote {path}")
    if args.publish:
        if params.wandb.mode != "online":
            raise ConfigError(f"--publish saves the report to W&B: set wandb.mode: online (it is "
                              f"{params.wandb.mode!r}) and upload offline runs first with "
                              f"`wandb sync wandb/offline-run-*`")
        check_online_login(params.wandb)
        print(f"published {wandb_report.publish(spec)}")
    return 0


def _cells(params: Params, args) -> int:
    cells, states = _states(params, args.results_root)
    for cell in cells:
        state = states[cell.cell_id]
        print(f"{state.state:8} {cell.cell_id}" + (f"  ({state.detail})" if state.detail else ""))
    return 0


def _status(params: Params, args) -> int:
    from vgbench.results import STATES
    from vgbench.tuning import matrix_cells

    every = matrix_cells(params.active, args.results_root)  # once: the unlisted folders need it too
    cells, states = _states(params, args.results_root, args.only, every)
    families = list(dict.fromkeys(c.family for c in cells))
    rows = [[family] + [sum(1 for c in cells if c.family == family and states[c.cell_id].state == state)
                        for state in STATES] for family in families]
    rows.append(["total"] + [sum(s.state == state for s in states.values()) for state in STATES])
    print(f"profile {params.profile}: {len(cells)} cells under {args.results_root}")
    header = ["family", *STATES]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(value).rjust(width) if i else str(value).ljust(width)
                        for i, (value, width) in enumerate(zip(row, widths))))
    for state in ("running", "failed", "stale"):
        listed = [(cell_id, s.detail) for cell_id, s in states.items() if s.state == state]
        if listed:
            print(f"\n{state}:")
            for cell_id, detail in listed:
                print(f"  {cell_id}: {detail}")
    _report_unlisted(params, args, every)
    return 0


def _known_cell_ids(params: Params, results_root: Path, active_cells: list) -> set[str]:
    """The stored cell ids of every profile of these params (the active one's cells given), and those a live
    claim holds."""
    from vgbench import claims
    from vgbench.tuning import matrix_cells
    from vgbench.twins import stored_as

    cells = [*active_cells, *(cell for name, profile in params.profiles.items() if name != params.profile
                              for cell in matrix_cells(profile, results_root))]
    return {stored_as(cell).cell_id for cell in cells} | set(claims.live_claims(results_root))


def _unlisted_cell_folders(results_root: Path, known: set[str], only: str | None) -> list[Path]:
    """Folders of ``results/cells`` that hold no known cell: results under an older cell id (a model setting
    added to a family changes every id of it, as ``models_per_kernel_call`` did the rnn cells'), or of another
    params file. They are never read, but DVC caches ``results/cells`` whole, so they cost space there and in
    every ``dvc push``."""
    folder = results_root / "cells"
    return sorted(path for path in (folder.iterdir() if folder.is_dir() else ())
                  if path.is_dir() and path.name not in known and (not only or only in path.name))


def _unread_stacks(results_root: Path, known: set[str]) -> list[Path]:
    """Entries of ``results/pretrained`` that no finished known cell read (its pretraining.json names the
    key): stacks of older pretraining or data code (the key names both), or of cells since removed. None
    while a train runs (a live claim): its cells may be about to read theirs."""
    from vgbench import claims

    folder = results_root / "pretrained"
    if not folder.is_dir() or claims.live_claims(results_root):
        return []
    read = set()
    for cell_id in known:
        record = results_root / "cells" / cell_id / "pretraining.json"
        try:
            read.add(json.loads(record.read_text())["key"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):  # damaged: the stack it named is unknown, so keep all
            return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and path.name not in read)


def _report_unlisted(params: Params, args, active_cells: list) -> None:
    """``vgbench status`` names the cell folders and pretrained stacks nothing reads; ``--prune`` removes them
    (a stack only while no train runs, asked again before each removal: a starting train may read one)."""
    from vgbench import claims

    known = _known_cell_ids(params, args.results_root, active_cells)
    unread = [(_unlisted_cell_folders(args.results_root, known, args.only), "cells",
               f"folder(s) under {args.results_root / 'cells'} (no cell of any profile in {args.params})")]
    if not args.only:  # --only names cells; a stack is shared by several
        unread.append((_unread_stacks(args.results_root, known), "pretrained",
                       f"pretrained stack(s) under {args.results_root / 'pretrained'} (no finished cell of any "
                       f"profile in {args.params} read them)"))
    for paths, output, what in unread:
        if not paths:
            continue
        if not args.prune:
            print(f"\n{len(paths)} {what}; `vgbench status --prune` removes them:")
            for path in paths[:10]:
                print(f"  {path.name}")
            if len(paths) > 10:
                print(f"  ... and {len(paths) - 10} more")
            continue
        removed = 0
        for path in paths:
            if output == "pretrained" and claims.live_claims(args.results_root):
                print("\na train started: the other pretrained stacks are left for a later `vgbench status --prune`")
                break
            shutil.rmtree(path)
            path.with_name(f".{path.name}.lock").unlink(missing_ok=True)  # the cache's lock file beside it
            removed += 1
        print(f"\nremoved {removed} {what}; `dvc commit results/{output}` (or the next `dvc repro`) records it")


def _plan(params: Params, args) -> int:
    from vgbench import cpu_kernels
    from vgbench.plan import plan_main

    cpu_kernels.pin_this_process(params.active.trainer.cpu_capability)  # time the kernels the cells will run

    print(plan_main(params, args.device, args.steps, params.active.launcher.slurm.task_minutes, args.results_root))
    return 0


def _compare(params: None, args) -> int:
    from vgbench import atomic
    from vgbench.report import compare

    text = compare.markdown(compare.compare(compare.read_run(args.first), compare.read_run(args.second)))
    if args.out:
        atomic.write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _readme(params: Params, args) -> int:
    from vgbench.report.readme import update_readme

    replaced = update_readme(args.readme, args.results_root / "leaderboard.md", args.reference)
    print(f"{args.readme}: {len(replaced)} block(s) rewritten from {args.results_root}/leaderboard.md and "
          f"claims.md: {', '.join(replaced) or 'none found'}; the numbers behind them in {args.reference}/")
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
    train.add_argument("--retry-failed", action="store_true", help="retrain cells whose last attempt raised")
    train.add_argument("--launcher", help="serial | local | slurm (default: the profile's launcher.name)")
    train.add_argument("--jobs", type=int, help="local: worker processes (default: the profile's launcher.jobs)")
    train.add_argument("--detach", action="store_true", help="slurm: submit and return instead of waiting")
    board = commands.add_parser("leaderboard", help="aggregate results into leaderboard tables and figures")
    board.add_argument("--no-wandb", action="store_true", help="do not log the tables to W&B")
    commands.add_parser("claims", help="published claims checked against the active profile's results "
                                       "(holds / fails / undetermined / not in this profile, with the numbers)")
    report = commands.add_parser("report", help="a W&B Report of the results: its specification and a Markdown "
                                                "rendering in results/report/; --publish saves it to W&B")
    report.add_argument("--publish", action="store_true", help="save the report (wandb.mode: online, runs synced)")
    commands.add_parser("cells", help="list the active profile's cells and the state of each")
    status = commands.add_parser("status", help="cells done, running (where), failed (why) and pending, per family")
    status.add_argument("--only", help="only cells whose id contains this text")
    status.add_argument("--prune", action="store_true",
                        help="remove the folders under results/cells that hold no cell of any profile (older ids)")
    plan = commands.add_parser("plan", help="cells, steps and estimated device-hours, from one timed step per "
                                            "model shape on this machine")
    plan.add_argument("--device", type=_timing_device, default="cpu",
                      help="device to time the steps on: cpu, cuda or cuda:N (default: %(default)s)")
    plan.add_argument("--steps", type=_positive_int, default=3,
                      help="timed steps per model shape (default: %(default)s)")
    readme = commands.add_parser("readme", help="rewrite README.md's marked leaderboard blocks from "
                                                "results/leaderboard.md")
    readme.add_argument("--readme", type=Path, default=Path("README.md"), help="default: %(default)s")
    readme.add_argument("--reference", type=Path, default=REFERENCE_DIR,
                        help="where the leaderboard.json behind the tables goes, as <profile>.leaderboard.json "
                             "(`vgbench compare` checks another machine against it; default: %(default)s)")
    compare = commands.add_parser("compare", help="two runs of one profile (say, two machines') side by side: "
                                                  "the numbers and verdicts the second kept and moved")
    compare.add_argument("first", type=Path, help="a results folder or its leaderboard.json")
    compare.add_argument("second", type=Path, help="the other run's results folder or leaderboard.json")
    compare.add_argument("--out", type=Path, help="write the Markdown report here instead of printing it")
    for sub in (fetch, train, board, commands.choices["claims"], report, commands.choices["cells"], status, plan,
                readme):
        _common(sub)
    return parser


HANDLERS = {"fetch": _fetch, "train": _train, "leaderboard": _leaderboard, "claims": _claims, "report": _report,
            "cells": _cells, "status": _status, "plan": _plan, "readme": _readme, "compare": _compare}
NO_PARAMS = {"compare"}  # commands that read only the files they are given


class Stopped(SystemExit):
    """SIGTERM (SLURM, Kubernetes, `timeout`) or SIGINT ended the command; raised from the signal handler.

    Lightning calls handlers that were installed before it, so this reaches us from inside a fit too.
    """

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def _stopped_message(params: Params, args, stopped: Stopped) -> str:
    done = total = "?"
    if args.command == "train":
        cells, states = _states(params, args.results_root, args.only)
        done, total = sum(s.state == "done" for s in states.values()), len(cells)
    return (f"vgbench {args.command}: stopped by {stopped.signal_name}: {done} of {total} cells done; "
            f"run the same command again to go on (interrupted cells resume from their checkpoints)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = None
    try:
        params = None if args.command in NO_PARAMS else load_params(args.params, args.profile)
        if args.command == "train":  # a stopped run must not look finished (DVC would lock a partial stage)
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        return HANDLERS[args.command](params, args)
    except Stopped as stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(_stopped_message(params, args, stopped), file=sys.stderr, flush=True)
        return stopped.code
    except (ConfigError, UnknownNameError, CompareError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataNotReadyError, NoResultsError, LaunchError, ReadmeError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vgbench cells | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # a full disk, a folder that became read-only: say which file, no traceback
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}; what was written before is whole (every file is "
              f"written to a temporary name first): free the space or fix the permission and run the same "
              f"command again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
