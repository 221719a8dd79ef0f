"""Where a cell group's training time goes on the host: ``run_group`` on one row under cProfile.

A group of small models on a GPU is bound by what the host does per step (Python, dispatch, Lightning,
the module's bookkeeping, and any wait for the GPU): this script trains one row of a profile (its seeds x
rates as one group, as ``vgbench train`` does; W&B disabled) for ``--epochs`` epochs after a one-epoch
warm-up, and prints the fit's ms per step and the functions with the most own time. On a GPU the time
a host thread waits for the device shows in the call that waits (``item``, ``tolist``, a copy to the
host), so that table says what the GPU is made to wait for and what keeps the host busy.

    python bench/profile_group.py --profile paper --row mlp-he_relu-mnist1d-d20 --device cuda
    python bench/profile_group.py --row rnn-lstm-adding-d50 --epochs 1      # the default profile, CPU
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import sys
import tempfile
from pathlib import Path

import torch

from vgbench import cpu_kernels
from vgbench.config import WandbSettings, load_params
from vgbench.data.store import ensure
from vgbench.groups import group_id
from vgbench.matrix import expand
from vgbench.training.run_group import data_for, run_group


def row_cells(params_path: str, profile: str, row: str, epochs: int, device: str):
    """The cells of one row (``family-remedy-dataset-dDEPTH``), ``epochs`` long, on ``device``."""
    active = load_params(params_path, profile).active
    cells = [c for c in expand(active) if f"{c.family}-{c.remedy}-{c.dataset}-d{c.depth}" == row]
    if not cells:
        rows = sorted({f"{c.family}-{c.remedy}-{c.dataset}-d{c.depth}" for c in expand(active)})
        raise SystemExit(f"--row {row!r} is not a row of profile {profile!r}; rows: {', '.join(rows[:12])}, ...")
    trainer = {**cells[0].trainer, "accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1}
    return active, [dataclasses.replace(c, trainer=trainer, training={**c.training, "max_epochs": epochs})
                    for c in cells]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--row", default="mlp-he_relu-mnist1d-d20", help="family-remedy-dataset-dDEPTH")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "vgbench-bench-data")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    profile, cells = row_cells(args.params, args.profile, args.row, args.epochs, args.device)
    cpu_kernels.pin_this_process(cells[0].trainer.get("cpu_capability"))  # before the first torch operation
    ensure(profile, args.data_root, [cells[0].dataset])  # every length the profile uses: cheap
    data = data_for(cells[0], args.data_root, {})
    warm = [dataclasses.replace(c, training={**c.training, "max_epochs": 1}) for c in cells]
    with tempfile.TemporaryDirectory(prefix="vgbench-profile-") as tmp:
        run_group(warm, data, Path(tmp) / "warm", WandbSettings(mode="disabled"), profile="bench")
        profiler = cProfile.Profile()
        profiler.enable()
        results = run_group(cells, data, Path(tmp) / "run", WandbSettings(mode="disabled"), profile="bench")
        profiler.disable()
    first = results[0]
    print(f"group {group_id(cells)}: K = {len(cells)}, {first.steps} steps, fit {first.fit_seconds * len(cells):.2f} s "
          f"({1000 * first.fit_seconds * len(cells) / first.steps:.2f} ms/step), probes "
          f"{100 * first.probe_seconds / first.fit_seconds:.1f}% of fit; torch threads {torch.get_num_threads()}, "
          f"device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
        table = out.getvalue()
        print(f"\n-- by {key} (seconds over the whole profiled run) --")
        print(table[table.find("   ncalls"):])  # without pstats' preamble
    return 0


if __name__ == "__main__":
    sys.exit(main())
