"""How much slower is a cell trained through vgbench than the same training in raw PyTorch?

Trains ONE cell of the active profile two ways, in the same process, alternately:

  (a) vgbench: ``run_group`` on a group of one (Lightning Trainer + gradient-flow probes), W&B
      disabled; its ``fit_seconds`` (``trainer.fit``, validation included) is the vgbench time;
  (b) raw: the same stacked model with K = 1 (same builder, same seed), the same standardized
      data, a plain loop over shuffled index batches sliced from the tensors (``x.unsqueeze(0)``:
      ``[1, B, ...]``), the same batch size, epochs, gradient clipping, task loss (its ``[1]``
      per-model loss ``.sum()``) and per-epoch validation metric (any family and task: an RNN
      cell on the adding problem works as well as an MLP cell). Its optimizer is, by default,
      the cell's own StackedSGD / StackedAdam, the one vgbench steps with: the same update
      arithmetic on both sides (validation metrics agree to float rounding), so the ratio is
      what Lightning, the probes and vgbench's bookkeeping add. ``--raw-optimizer torch`` uses
      torch.optim.SGD / Adam over the same stacked parameters instead (the same update rule,
      rounded differently), which also counts the stacked optimizer's extra per-parameter ops
      (per-model rates, ``torch.where`` for frozen models) as overhead.

Prints the median seconds and per-step milliseconds of each, the ratio vgbench/raw, and
the ratio of two extra vgbench runs with W&B offline (files in a temp dir) so the W&B cost
shows. ``--cprofile N`` also profiles one run of each and prints where vgbench's extra time goes.

    python bench/step_overhead.py                       # deep he_relu cell, depth 20, lr 0.1, seed 0
    python bench/step_overhead.py --cell grad_clip-mnist1d-d20-lr0.1-s0 --repeats 5
    python bench/step_overhead.py --cell rnn-gru-adding-d50 --repeats 3 --raw-optimizer torch
    python bench/step_overhead.py --threads 1 --data-root /tmp/bench-data   # data fetched elsewhere
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("WANDB_SILENT", "true")

from vgbench import cpu_kernels  # noqa: E402
from vgbench.config import WandbSettings, load_params  # noqa: E402
from vgbench.matrix import CellSpec, expand  # noqa: E402
from vgbench.models import FAMILIES, ModelIO  # noqa: E402
from vgbench.models.recipe import Recipe  # noqa: E402
from vgbench.tasks import TASKS  # noqa: E402
from vgbench.training.run_group import data_for, run_group  # noqa: E402
from vgbench.training.stacked_optim import StackedAdam, StackedSGD  # noqa: E402

for _name in ("lightning.pytorch", "lightning.fabric", "lightning", "wandb"):
    logging.getLogger(_name).setLevel(logging.ERROR)

DEFAULT_CELL = "mlp-he_relu-mnist1d-d20-lr0.1-s0"


def pick_cell(cells: list[CellSpec], pattern: str) -> CellSpec:
    matches = [cell for cell in cells if pattern in cell.cell_id]
    if not matches:
        sys.exit(f"no cell id contains {pattern!r}; e.g. {cells[0].cell_id}")
    return matches[0]


def steps_per_epoch(size: int, batch_size: int) -> int:
    return -(-size // batch_size)


# -- (a) vgbench ---------------------------------------------------------------------------------
def run_vgbench(cell: CellSpec, data, wandb_mode: str = "disabled") -> dict:
    deterministic = torch.are_deterministic_algorithms_enabled()
    quiet = contextlib.redirect_stderr(io.StringIO()) if wandb_mode != "disabled" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="vgbench-bench-") as tmp, quiet:
        previous = os.environ.get("WANDB_DIR")
        os.environ["WANDB_DIR"] = tmp
        try:
            result = run_group([cell], data, results_root=Path(tmp), wandb=WandbSettings(mode=wandb_mode),
                               profile="bench")[0]
        finally:
            if previous is None:
                os.environ.pop("WANDB_DIR", None)
            else:
                os.environ["WANDB_DIR"] = previous
    # Lightning's deterministic=True switches torch's global flag on; put it back so the raw
    # loop runs in torch's default mode whatever ran before it.
    torch.use_deterministic_algorithms(deterministic)
    return {"seconds": result.fit_seconds, "probe_seconds": result.probe_seconds,
            "steps": result.steps, "val_metric": result.val_metric}


# -- (b) raw PyTorch -----------------------------------------------------------------------------
def run_raw(cell: CellSpec, data, optimizer_kind: str = "stacked") -> dict:
    recipe = Recipe(**cell.recipe)
    family = FAMILIES.get(cell.family)
    task = TASKS.get(data.task)
    io = ModelIO(data.input_shape, task.num_outputs(data.num_classes), task.per_step)
    model = family.build(io, cell.depth, recipe, family.hparams.model_validate(cell.model), [cell.seed])  # K = 1
    train, val = data.splits["train"], data.splits["validation"]
    batch_size, epochs = cell.training["batch_size"], cell.training["max_epochs"]
    clip = recipe.grad_clip
    params = list(model.parameters())

    started = time.perf_counter()
    training = cell.training
    adam, decay, momentum = training["optimizer"] == "adam", training["weight_decay"], training["momentum"]
    if optimizer_kind == "stacked":  # vgbench's optimizer, the cell's rate for its one model
        optimizer = (StackedAdam(params, [cell.learning_rate], weight_decay=decay) if adam
                     else StackedSGD(params, [cell.learning_rate], momentum=momentum, weight_decay=decay))
    elif adam:
        optimizer = torch.optim.Adam(params, lr=cell.learning_rate, weight_decay=decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cell.learning_rate, momentum=momentum, weight_decay=decay)
    steps, val_metric, stopped = 0, float("nan"), False
    for epoch in range(epochs):
        if stopped:
            break
        model.train()
        generator = torch.Generator().manual_seed(cell.seed * 100_003 + epoch)
        order = torch.randperm(len(train["y"]), generator=generator)
        loss_sum = torch.zeros(())
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x, y = train["x"][index].unsqueeze(0), train["y"][index].unsqueeze(0)  # [K=1, B, ...]
            loss = task.loss(model(x), y).sum()  # [1] per-model mean losses -> scalar
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # One model: torch's clipping over all its parameters is vgbench's per-model clipping.
            if clip == "norm":
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip_value)
            elif clip == "value":
                torch.nn.utils.clip_grad_value_(params, recipe.grad_clip_value)
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
            if not torch.isfinite(loss):  # as vgbench: a diverged cell stops after this step
                stopped = True
                break
        model.eval()
        sums = None
        with torch.inference_mode():
            for start in range(0, len(val["y"]), batch_size):
                x, y = val["x"][start:start + batch_size].unsqueeze(0), val["y"][start:start + batch_size].unsqueeze(0)
                batch = torch.stack([value.double() for value in task.sums(model(x), y)])  # [sums, K=1]
                sums = batch if sums is None else sums + batch
        val_metric = task.finish(sums[:, 0].tolist())[task.metric]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "val_metric": val_metric}


# -- report --------------------------------------------------------------------------------------
AREAS = (  # (substring of the file path, area), first match wins
    ("lightning_utilities", "Lightning utilities"), ("lightning/pytorch/loops", "Lightning loops"),
    ("lightning/pytorch/trainer", "Lightning trainer/hooks/logging"), ("lightning", "Lightning other"),
    ("torch/utils/data", "torch DataLoader"), ("torch/nn", "torch.nn (Python side)"),
    ("torch/optim", "torch.optim"), ("torch", "torch other"), ("vgbench/probes", "vgbench probes"),
    ("vgbench", "vgbench other"),
)


def _area(file: str, function: str) -> str:
    if file == "~":
        return "built-ins (kernels, isinstance...)"
    return next((area for key, area in AREAS if key in file), "stdlib/other")


def _profile(fn) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    return pstats.Stats(profiler).stats


def print_profile(vgbench_fn, raw_fn, top: int) -> None:
    """Own time per area and the functions with the most extra own time, vgbench vs raw.

    cProfile inflates Python-heavy code (Lightning) more than kernels: read shares, not seconds.
    """
    stats = {"vgbench": _profile(vgbench_fn), "raw": _profile(raw_fn)}
    areas: dict[str, dict[str, float]] = {}
    functions: dict[tuple, list[float]] = {}
    for name, table in stats.items():
        for (file, line, function), (_, calls, own, _, _) in table.items():
            area = _area(file, function)
            areas.setdefault(area, {"vgbench": 0.0, "raw": 0.0})[name] += own
            key = (file.split("site-packages/")[-1], line, function)
            row = functions.setdefault(key, [0.0, 0.0, 0, 0])
            row[0 if name == "vgbench" else 1] += own
            row[2 if name == "vgbench" else 3] += calls
    print("\n== cProfile: own time by area (whole run_group vs the raw loop) ==")
    print(f"{'area':36} {'vgbench s':>9} {'raw s':>7} {'extra s':>8}")
    for area, row in sorted(areas.items(), key=lambda kv: kv[1]["raw"] - kv[1]["vgbench"]):
        print(f"{area:36} {row['vgbench']:9.3f} {row['raw']:7.3f} {row['vgbench'] - row['raw']:8.3f}")
    total = {name: sum(row[name] for row in areas.values()) for name in ("vgbench", "raw")}
    print(f"{'total':36} {total['vgbench']:9.3f} {total['raw']:7.3f} {total['vgbench'] - total['raw']:8.3f}")
    print(f"\n== cProfile: {top} functions with the most extra own time in vgbench ==")
    print(f"{'extra s':>8} {'extra calls':>11}  function")
    rows = sorted(functions.items(), key=lambda kv: kv[1][1] - kv[1][0])[:top]
    for (file, line, function), (own_vg, own_raw, calls_vg, calls_raw) in rows:
        print(f"{own_vg - own_raw:8.3f} {calls_vg - calls_raw:11d}  {file[-55:]}:{line}({function[:50]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default=DEFAULT_CELL, help="substring of the cell id (first match)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (default: the cell's trainer.threads); on a busy 2-core "
                             "machine 2 threads wait on each other, 1 is steadier")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="params profile (default: the file's)")
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--raw-optimizer", choices=("stacked", "torch"), default="stacked",
                        help="the raw loop's optimizer: the cell's StackedSGD/StackedAdam (default) or torch.optim's")
    parser.add_argument("--no-wandb", action="store_true", help="skip the extra W&B-offline runs")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="also profile one run of each: own time by area and the N functions adding the most")
    args = parser.parse_args(argv)

    cell = pick_cell(expand(load_params(args.params, args.profile).active), args.cell)
    cpu_kernels.pin_this_process(cell.trainer.get("cpu_capability"))  # before the first torch operation
    if args.threads:  # run_group sets the cell's threads; the raw loop runs with the same
        cell = dataclasses.replace(cell, trainer={**cell.trainer, "threads": args.threads})
    torch.set_num_threads(cell.trainer.get("threads") or torch.get_num_threads())
    data = data_for(cell, args.data_root, {})
    expected = cell.training["max_epochs"] * steps_per_epoch(len(data.splits["train"]["y"]),
                                                             cell.training["batch_size"])
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs; other processes make these timings noisy")
    print(f"cell {cell.cell_id}: batch {cell.training['batch_size']}, {cell.training['max_epochs']} epochs "
          f"= {expected} steps, torch threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"raw optimizer {args.raw_optimizer}")

    run_vgbench(cell, data)  # warm-up: imports, first-call costs of Lightning and torch
    run_raw(cell, data, args.raw_optimizer)
    vg, raw = [], []
    for repeat in range(args.repeats):
        order = [("vgbench", vg), ("raw", raw)] if repeat % 2 == 0 else [("raw", raw), ("vgbench", vg)]
        for name, sink in order:
            sink.append(run_vgbench(cell, data) if name == "vgbench" else run_raw(cell, data, args.raw_optimizer))

    def median(rows, key):
        return statistics.median(row[key] for row in rows)

    vg_s, raw_s = median(vg, "seconds"), median(raw, "seconds")
    probe_s = median(vg, "probe_seconds")
    steps = vg[0]["steps"]
    if raw[0]["steps"] != steps:
        print(f"warning: vgbench ran {steps} steps, raw {raw[0]['steps']}")
    print()
    print(f"{'':10} {'median s':>9} {'ms/step':>8} {'val':>8}   runs (s)")
    for name, rows, seconds in (("vgbench", vg, vg_s), ("raw", raw, raw_s)):
        runs = " ".join(f"{row['seconds']:.3f}" for row in rows)
        print(f"{name:10} {seconds:9.3f} {1000 * seconds / steps:8.3f} {rows[-1]['val_metric']:8.3f}   {runs}")
    print(f"{'probes':10} {probe_s:9.3f} {1000 * probe_s / steps:8.3f}          (inside vgbench's time)")
    paired = [a["seconds"] / b["seconds"] for a, b in zip(vg, raw)]
    print(f"{'overhead':10} {vg_s - raw_s:9.3f} {1000 * (vg_s - raw_s) / steps:8.3f}")
    if not args.no_wandb:
        # The first W&B run of a process also starts wandb's service process; `vgbench train`
        # pays that once for all its cells, so show the first and a second run apart.
        print()
        for label in ("first in process", "second"):
            offline = run_vgbench(cell, data, wandb_mode="offline")
            print(f"with W&B offline ({label}): {offline['seconds']:.3f} s, "
                  f"ratio vgbench+wandb/raw = {offline['seconds'] / raw_s:.2f}")
    print(f"\nper-repeat ratios vgbench/raw: {' '.join(f'{r:.2f}' for r in paired)} "
          f"(median {statistics.median(paired):.2f})")
    print(f"ratio vgbench/raw = {vg_s / raw_s:.2f} (aim <= 1.15)")

    if args.cprofile:
        print_profile(lambda: run_vgbench(cell, data), lambda: run_raw(cell, data, args.raw_optimizer),
                      args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
