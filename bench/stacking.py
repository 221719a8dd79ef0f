"""What a stacked cell group buys over separate trainings, and what vgbench adds to a stacked loop.

Per family, a row of the default profile (its block's data, batch size and optimizer) gives a group of
K = 9 cells (``--seeds 3``): seeds 0, 1, 2 x the row's learning rate, 1/2 and 1/4 of it. Timed in one process, the
variants in a rotating order from one repeat to the next:

  K=9, K=1   the vgbench stacked model (``family.build`` with 9 seeds, or seed 0 alone) and
             StackedSGD/StackedAdam in a plain for-loop over [K, B, ...] batches (model k in its seed's
             order): loss = task.loss(...).sum(), backward, step; ``--steps`` steps;
  9 sep      9 plain PyTorch loops one after the other over the same batches, each with its model
             built from torch.nn here (nn.Linear, nn.Conv1d + nn.BatchNorm1d, nn.LSTM / nn.RNN, and a
             Python loop over time where no fused kernel applies, e.g. layernorm) and torch.optim's
             SGD/Adam: the same shapes and cost, not the same numbers;
  vgbench    ``run_group`` on the 9 cells (Lightning Trainer + gradient-flow probes, W&B disabled)
             for ``--epochs`` epochs (not the row's max_epochs), each with its validation pass;
  raw fit    the K=9 loop for the same epochs and batches and the same per-epoch validation pass;
  Lightning  the same model, optimizer, batches and validation pass through Lightning's loop (the cells'
             Trainer settings) in a bare LightningModule: no probes, none of vgbench's bookkeeping.

Printed (medians over ``--repeats``; a step is one optimizer step of the group or of one loop):
  (a) ms/step of K=1 and K=9; K9/K1, how the step grows with 9 models (9.0: no gain); 9 sep, the 9
      loops' total seconds / --steps; group vs 9 sep = 9 sep / K=9, the group's throughput over 9
      separate trainings (the issue aims >= 3x for mlp and highway, >= 2x for rnn and resnet);
      kernels: ms/step of the K-model loop inside matrix products, convolutions and fused RNN kernels
      (its share of the loop under torch.profiler times K=9; CPU only), and bound = 9 sep / kernels:
      the most any stacking could give if everything else in a step cost nothing (below an aim, no
      code change reaches it on this machine); marginal =
      (K=9 - K=1) / 8, the ms/step one more model adds to a group (its kernels, and the memory traffic
      of its activations and parameters), and bound = 9 sep / (9 x marginal): the ratio a group would
      reach if its fixed per-step cost (Python, dispatch, Lightning) were zero;
  (b) fit ms/step: vgbench's CellResult.fit_seconds (trainer.fit with validation, the group's time
      / K) * K / steps against the raw fit loop's seconds / steps; vg/raw (aim <= 1.05), and
      ``w/o probes``, the same with vgbench's probe time taken out (Lightning and the module alone);
      ``Lightning``, the bare Lightning loop over the raw fit loop: what the runner alone adds, so
      w/o probes - Lightning is the module's bookkeeping; ``W&B``, vgbench with W&B offline (a run per
      cell, as ``vgbench train`` logs) over vgbench with W&B disabled;
  (c) probes: probe_seconds / fit_seconds of the vgbench run (aim <= 3%). A short run spreads the
      probe at initialization over few steps, far fewer than a real cell's; ``full cell*``
      estimates the share over the row's max_epochs: its probe events (1 at init + 1 every
      interval_steps) at this run's mean cost per event, over its steps at this run's ms/step.
      The init probe costs more than a training step's, so the estimate still errs high. ``A/B``:
      (the probed run - the same run without probed training steps + its init probe's time) / the
      probed run, over the same epochs: everything probing costs, including the unrolled
      forward/backward of an RNN's probed steps (its fused kernel otherwise), which the probe's own
      timer does not count; use ``--epochs`` = the row's max_epochs for a real cell's share (a
      difference of two timings: noisy, compare repeats).

Lightning's deterministic mode (the cells' trainer setting) is switched off after each vgbench run,
so the raw loops run in torch's default mode. The default profile's data sets (made offline in
seconds) are prepared under ``--data-root`` if missing.

    python bench/stacking.py                        # all families, 1 thread; about 4 minutes on 2 cores
    python bench/stacking.py --only rnn --threads 2 --repeats 5
    python bench/stacking.py --steps 50 --epochs 2 --data-root /tmp/bench-data
    python bench/stacking.py --device cuda --seeds 5 --steps 30   # on a GPU: K = 15, timed with synchronize

On a GPU (``--device cuda``) the data sets live on the device, vgbench's runs use the trainer's ``gpu``
accelerator, and every timed variant ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")
os.environ.setdefault("WANDB_SILENT", "true")

from vgbench import cpu_kernels  # noqa: E402
from vgbench.config import WandbSettings, load_params  # noqa: E402
from vgbench.data.store import ensure  # noqa: E402
from vgbench.matrix import CellSpec, expand  # noqa: E402
from vgbench.models import FAMILIES, ModelIO  # noqa: E402
from vgbench.models.recipe import Recipe  # noqa: E402
from vgbench.probes.gradient_flow import GradientFlowProbe  # noqa: E402
from vgbench.tasks import TASKS  # noqa: E402
from vgbench.training.module import TaskModule  # noqa: E402
from vgbench.training.run_group import build, build_trainer, data_for, run_group  # noqa: E402
from vgbench.training.stacked_optim import StackedAdam, StackedSGD  # noqa: E402

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)

CASES = (  # (family, remedy, depth) of the default profile, and a label's suffix for model settings changed
    ("mlp", "he_relu", 20), ("rnn", "lstm", 50), ("rnn", "lstm", 50, "+shared9"), ("rnn", "small_init", 50),
    ("rnn", "layernorm", 50), ("resnet", "residual_bn", 20), ("resnet", "residual_bn", 20, "+grouped"),
    ("highway", "highway", 50))
MODEL_CHANGES = {  # the opt-in model settings (README, "Cell groups")
    "+grouped": {"grouped_kernels": True},  # the resnet family's grouped convolutions
    "+shared9": {"models_per_kernel_call": 9},  # the rnn family's fused calls for up to 9 models at once
}
RATE_FACTORS = (1.0, 0.5, 0.25)


# -- the plain torch.nn references ---------------------------------------------------------------
class PlainHighway(nn.Module):
    def __init__(self, features: int, outputs: int, depth: int, width: int):
        super().__init__()
        self.projection, self.head = nn.Linear(features, width), nn.Linear(width, outputs)
        self.transforms = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.gates = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        h = torch.tanh(self.projection(x))
        for transform, gate in zip(self.transforms, self.gates):
            t = torch.sigmoid(gate(h))
            h = torch.tanh(transform(h)) * t + h * (1 - t)
        return self.head(h)


class PlainBlock(nn.Module):  # conv-bn-relu-conv-bn + option-A shortcut, relu
    def __init__(self, channels: int, out: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out - channels
        self.body = nn.Sequential(nn.Conv1d(channels, out, 3, stride, 1, bias=False), nn.BatchNorm1d(out), nn.ReLU(),
                                  nn.Conv1d(out, out, 3, 1, 1, bias=False), nn.BatchNorm1d(out))

    def forward(self, x):
        return torch.relu(self.body(x) + F.pad(x[:, :, ::self.stride], (0, 0, 0, self.pad)))


def plain_resnet(outputs: int, depth: int, width: int) -> nn.Module:
    layers = [nn.Unflatten(1, (1, -1)), nn.Conv1d(1, width, 3, 1, 1, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    channels = [width] + [width * 2 ** stage for stage in range(3) for _ in range((depth - 2) // 6)]
    layers += [PlainBlock(a, b, 2 if b > a else 1) for a, b in zip(channels, channels[1:])]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels[-1], outputs))


class PlainRNN(nn.Module):  # nn.LSTM / nn.RNN, or a Python loop over time for layer-normalized tanh units
    def __init__(self, features: int, hidden: int, outputs: int, recipe: Recipe):
        super().__init__()
        self.layernorm = recipe.norm == "layernorm"
        if self.layernorm:
            self.ih, self.hh, self.norm = nn.Linear(features, hidden), nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        elif recipe.cell == "lstm":
            self.rnn = nn.LSTM(features, hidden, batch_first=True)
        else:
            self.rnn = nn.RNN(features, hidden, nonlinearity=recipe.activation, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
        if not self.layernorm:
            return self.head(self.rnn(x)[0][:, -1])
        projected, h = self.ih(x).unbind(1), x.new_zeros(x.shape[0], self.hh.in_features)
        for x_t in projected:
            h = torch.tanh(self.norm(x_t + self.hh(h)))
        return self.head(h)


def plain_model(cell: CellSpec, io: ModelIO) -> nn.Module:
    recipe, depth, features = Recipe(**cell.recipe), cell.depth, io.input_shape[-1]
    if cell.family == "mlp":
        widths = [features] + [cell.model["width"]] * depth
        layers = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), recipe.make_activation())]
        return nn.Sequential(*layers, nn.Linear(widths[-1], io.num_outputs))
    if cell.family == "highway":
        return PlainHighway(features, io.num_outputs, depth, cell.model["width"])
    if cell.family == "resnet":
        return plain_resnet(io.num_outputs, depth, cell.model["width"])
    return PlainRNN(features, cell.model["hidden_size"], io.num_outputs, recipe)


def make_optimizer(training: dict, params, rates: list[float], stacked: bool) -> torch.optim.Optimizer:
    """The row's optimizer: vgbench's StackedSGD/StackedAdam over K rates, or torch.optim's for one rate."""
    decay, params = training["weight_decay"], list(params)
    if training["optimizer"] == "adam":
        return (StackedAdam(params, rates, weight_decay=decay) if stacked
                else torch.optim.Adam(params, lr=rates[0], weight_decay=decay))
    return (StackedSGD(params, rates, momentum=training["momentum"], weight_decay=decay) if stacked
            else torch.optim.SGD(params, lr=rates[0], momentum=training["momentum"], weight_decay=decay))


PLAIN_LOSSES = {"classification": F.cross_entropy, "regression": lambda out, y: F.mse_loss(out.squeeze(-1), y)}


# -- the timed variants ---------------------------------------------------------------------------
def index_batches(size: int, batch: int, seeds: list[int], count: int) -> list[torch.Tensor]:
    """``count`` [K, B] index batches, model k in its seed's order per epoch (vgbench's rule); full batches."""
    batches, epoch = [], 0
    while len(batches) < count:
        orders = [torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
                  for seed in seeds]
        batches += [torch.stack([o[s:s + batch] for o in orders]) for s in range(0, size - batch + 1, batch)]
        epoch += 1
    return batches[:count]


def synchronized_seconds(started: float) -> float:
    """Seconds since ``started``, after the GPU has finished what was queued (kernels run asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def on_device(data, device: str):
    """The stored data set with its splits moved to ``device`` once (the loops index it there)."""
    splits = {name: {key: t.to(device) for key, t in split.items()} for name, split in data.splits.items()}
    return dataclasses.replace(data, splits=splits)


def stacked_loop(cells: list[CellSpec], data, steps: int = 0, epochs: int = 0) -> dict:
    """``steps`` steps, or ``epochs`` whole epochs each followed by a validation pass; seconds and steps."""
    first, task = cells[0], TASKS.get(data.task)
    family, recipe, training = FAMILIES.get(first.family), Recipe(**first.recipe), first.training
    io = ModelIO(data.input_shape, task.num_outputs(data.num_classes), task.per_step)
    model = family.build(io, first.depth, recipe, family.hparams.model_validate(first.model),
                         [cell.seed for cell in cells]).to(data.splits["train"]["x"].device)
    optimizer = make_optimizer(training, model.parameters(), [cell.learning_rate for cell in cells], stacked=True)
    train, val, batch, models = data.splits["train"], data.splits["validation"], training["batch_size"], len(cells)
    per_epoch = len(train["y"]) // batch
    started = time.perf_counter()
    batches = [b.to(train["y"].device) for b in
               index_batches(len(train["y"]), batch, [cell.seed for cell in cells], epochs * per_epoch or steps)]
    for step, index in enumerate(batches, 1):
        loss = task.loss(model(train["x"][index]), train["y"][index]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epochs and step % per_epoch == 0:
            model.eval()
            with torch.inference_mode():
                sums = 0
                for s in range(0, len(val["y"]), batch):
                    x, y = (t[s:s + batch].expand(models, *t[s:s + batch].shape) for t in (val["x"], val["y"]))
                    sums = sums + torch.stack([v.double() for v in task.sums(model(x), y)])  # [sums, K]
                [task.finish(column.tolist()) for column in sums.T]
            model.train()
    return {"seconds": synchronized_seconds(started), "steps": len(batches)}


# The layers' arithmetic: matrix products, convolutions and the fused recurrent kernels, forward and
# backward (self time, so a composite op is not counted twice).
KERNELS = re.compile(r"^aten::(mm|bmm|baddbmm|addmm|.*convolution.*|.*rnn.*|lstm|gru)$")


def kernel_share(cells: list[CellSpec], data, steps: int) -> float:
    """The share of the K-model stacked loop's wall time spent inside its matrix-product, convolution and
    fused-RNN kernels (torch.profiler, CPU self time over the profiled loop's wall time): times the
    loop's ms/step, a floor no stacking removes where a kernel for K models costs about K times one
    model's, as on a CPU whose core is busy with the arithmetic already."""
    stacked_loop(cells, data, steps=2)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        wall = stacked_loop(cells, data, steps=steps)["seconds"]
    micros = sum(event.self_cpu_time_total for event in profiler.key_averages() if KERNELS.match(event.key))
    return micros / 1e6 / wall


def separate_loops(cells: list[CellSpec], data, steps: int) -> dict:
    """One plain torch.nn model and torch.optim optimizer per cell, trained one after the other."""
    task, training = TASKS.get(data.task), cells[0].training
    io = ModelIO(data.input_shape, task.num_outputs(data.num_classes), task.per_step)
    train, loss_fn, seconds = data.splits["train"], PLAIN_LOSSES[data.task], 0.0
    for cell in cells:
        torch.manual_seed(cell.seed)
        model = plain_model(cell, io).to(train["y"].device)
        optimizer = make_optimizer(training, model.parameters(), [cell.learning_rate], stacked=False)
        batches = [b.to(train["y"].device) for b in index_batches(len(train["y"]), training["batch_size"],
                                                                   [cell.seed], steps)]
        started = time.perf_counter()
        for index in batches:
            loss = loss_fn(model(train["x"][index[0]]), train["y"][index[0]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds += synchronized_seconds(started)
    return {"seconds": seconds, "steps": steps}


@contextlib.contextmanager
def train_probes_off():
    """vgbench's run with no probed training step (so an RNN keeps its fused kernel on every step); the
    probe at initialization still runs, and its own timer measures it whole."""
    batch_start = GradientFlowProbe.on_train_batch_start
    GradientFlowProbe.on_train_batch_start = lambda self, *args: setattr(self, "_probing_step", False)
    try:
        yield
    finally:
        GradientFlowProbe.on_train_batch_start = batch_start


def vgbench_group(cells: list[CellSpec], data, epochs: int, probes: bool = True, wandb: str = "disabled") -> dict:
    """``run_group`` on the cells for ``epochs`` epochs; ``wandb="offline"`` logs each cell's run as
    ``vgbench train`` does, into a temporary folder."""
    cells = [dataclasses.replace(cell, training={**cell.training, "max_epochs": epochs}) for cell in cells]
    deterministic = torch.are_deterministic_algorithms_enabled()
    wandb_dir = os.environ.get("WANDB_DIR")
    with tempfile.TemporaryDirectory(prefix="vgbench-stacking-") as tmp:
        os.environ["WANDB_DIR"] = tmp
        try:
            with contextlib.nullcontext() if probes else train_probes_off():
                results = run_group(cells, data, Path(tmp), WandbSettings(mode=wandb), profile="bench")
        finally:
            if wandb_dir is None:
                os.environ.pop("WANDB_DIR", None)
            else:
                os.environ["WANDB_DIR"] = wandb_dir
    torch.use_deterministic_algorithms(deterministic)  # Lightning's deterministic=True switched it on
    first = results[0]
    return {"seconds": first.fit_seconds * len(cells), "steps": first.steps,
            "probe_seconds": first.probe_seconds * len(cells)}


class BareLightning(L.LightningModule):
    """A group's stacked model, optimizer and validation sums in the plainest LightningModule: the
    runner's own cost, without the probes or TaskModule's divergence and history bookkeeping."""

    def __init__(self, inner: TaskModule):
        super().__init__()
        self.inner = inner

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.inner.task.loss(self.inner.model(x), y).sum()

    def configure_optimizers(self):
        return self.inner.configure_optimizers()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return self.inner.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self.inner._eval_start()

    def validation_step(self, batch, batch_idx) -> None:
        self.inner._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        for column in self.inner._eval_sums.T:  # what the raw loop does with its sums
            self.inner.task.finish(column.tolist())


def lightning_group(cells: list[CellSpec], data, epochs: int) -> dict:
    cells = [dataclasses.replace(cell, training={**cell.training, "max_epochs": epochs}) for cell in cells]
    deterministic = torch.are_deterministic_algorithms_enabled()
    with tempfile.TemporaryDirectory(prefix="vgbench-stacking-") as tmp:
        run = build(cells, data, Path(tmp), WandbSettings(mode="disabled"))
        trainer = build_trainer(cells[0], callbacks=[])
        started = time.perf_counter()
        trainer.fit(BareLightning(run.module), datamodule=run.datamodule)
        seconds = synchronized_seconds(started)
    torch.use_deterministic_algorithms(deterministic)
    return {"seconds": seconds, "steps": trainer.global_step}


# -- main ----------------------------------------------------------------------------------------
def group_of(cells: list[CellSpec], case: tuple, threads: int, seeds: int, device: str) -> list[CellSpec]:
    family, remedy, depth, *suffix = case
    row = next(c for c in cells if (c.family, c.remedy, c.depth) == (family, remedy, depth))
    trainer = {**row.trainer, "threads": threads, "accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1}
    model = {**row.model, **(MODEL_CHANGES[suffix[0]] if suffix else {})}
    return [dataclasses.replace(row, seed=seed, learning_rate=row.learning_rate * factor, trainer=trainer, model=model)
            for seed in range(seeds) for factor in RATE_FACTORS]


def label_of(case: tuple) -> str:
    family, remedy, _, *suffix = case
    return f"{family}/{remedy}{''.join(suffix)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps of each raw loop in (a) (default 10)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the vgbench and raw fit runs (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per group; K = seeds x 3 rates (default 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", default="", help="only the cases whose 'family/remedy' contains one of these "
                                                   "comma-separated strings, in that order")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "vgbench-bench-data",
                        help="stored data sets; the default profile's are made here if missing")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    profile = load_params(args.params, "default").active
    cpu_kernels.pin_this_process(profile.trainer.cpu_capability)  # before the first torch operation
    ensure(profile, args.data_root)
    all_cells, cache = expand(profile), {}
    chosen = [case for wanted in args.only.split(",") for case in CASES if wanted in label_of(case)]
    cases = {label_of(case): group_of(all_cells, case, args.threads, args.seeds, args.device)
             for case in dict.fromkeys(chosen)}
    stored = {label: data_for(cells[0], args.data_root, cache) for label, cells in cases.items()}
    data = {label: on_device(d, args.device) for label, d in stored.items()}  # the raw loops' copy
    k = args.seeds * len(RATE_FACTORS)
    variants = {  # each takes a case's label; vgbench trains from the stored (CPU) data as a real run does
        "K=1": lambda label: stacked_loop(cases[label][:1], data[label], steps=args.steps),
        "K": lambda label: stacked_loop(cases[label], data[label], steps=args.steps),
        "sep": lambda label: separate_loops(cases[label], data[label], args.steps),
        "vgbench": lambda label: vgbench_group(cases[label], stored[label], args.epochs),
        "unprobed": lambda label: vgbench_group(cases[label], stored[label], args.epochs, probes=False),
        "raw fit": lambda label: stacked_loop(cases[label], data[label], epochs=args.epochs),
        "Lightning": lambda label: lightning_group(cases[label], stored[label], args.epochs),
        "W&B": lambda label: vgbench_group(cases[label], stored[label], args.epochs, wandb="offline"),
    }
    if importlib.util.find_spec("wandb") is None:  # e.g. a GPU machine that has no wandb: the column reads nan
        del variants["W&B"]
    if os.getloadavg()[0] > 0.5:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; other processes add noise")
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"K = {k} (seeds 0..{args.seeds - 1} x rate factors {RATE_FACTORS}) on {device}, torch threads "
          f"{torch.get_num_threads()}, {args.steps} steps per raw loop, {args.epochs} epoch(s) per fit, "
          f"repeats {args.repeats}")
    started = time.perf_counter()
    warm = next(iter(cases))  # first-call costs: imports, Lightning, kernels
    variants["vgbench"](warm)
    for label, cells in cases.items():
        stacked_loop(cells, data[label], steps=2)
        separate_loops(cells[:1], data[label], steps=2)

    runs: dict[str, dict[str, list[dict]]] = {label: {name: [] for name in variants} for label in cases}
    names = list(variants)

    def ms(label: str, name: str) -> float:
        return statistics.median(1000 * r["seconds"] / r["steps"] for r in runs[label][name])

    for label in cases:  # a case at a time, so that a run cut short still prints the cases it finished
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                runs[label][name].append(variants[name](label))
        print(f"done {label}: group vs {k} sep {ms(label, 'sep') / ms(label, 'K'):.2f}x, "
              f"vg/raw {ms(label, 'vgbench') / ms(label, 'raw fit'):.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)

    print(f"\n(a) raw loops, ms/step, {args.steps} steps (aim: group >= 3x for mlp/highway, >= 2x for rnn/resnet)")
    print(f"{'family/remedy':28}{'K=1':>8}{f'K={k}':>8}{f'K{k}/K1':>7}{f'{k} sep':>9}{f'group vs {k} sep':>16}"
          f"{'kernels':>9}{'bound':>8}{'marginal':>10}{'bound':>8}")
    for label in cases:
        k1, k9, sep = ms(label, "K=1"), ms(label, "K"), ms(label, "sep")
        kernels = k9 * kernel_share(cases[label], data[label], args.steps) if args.device == "cpu" else math.nan
        marginal = (k9 - k1) / (k - 1)  # what one more model adds to a group's step
        print(f"{label:28}{k1:8.2f}{k9:8.2f}{k9 / k1:7.2f}{sep:9.2f}{sep / k9:15.2f}x{kernels:9.2f}"
              f"{sep / kernels:7.2f}x{marginal:10.2f}{sep / (k * marginal):7.2f}x")

    print(f"\n(b) fit ms/step over {args.epochs} epoch(s) with validation, K={k} (aim vg/raw <= 1.05); "
          f"(c) probes / fit (aim <= 3%)")
    print(f"{'family/remedy':28}{'steps':>6}{'vgbench':>9}{'raw fit':>9}{'vg/raw':>8}{'w/o probes':>11}"
          f"{'Lightning':>10}{'probes':>8}{'full cell*':>11}{'A/B':>7}{'W&B':>7}   per-repeat vg/raw")
    for label, cells in cases.items():
        vg, raw, rows = ms(label, "vgbench"), ms(label, "raw fit"), runs[label]["vgbench"]
        steps, interval = rows[0]["steps"], cells[0].probes["interval_steps"]
        probe_ms = statistics.median(1000 * r["probe_seconds"] / r["steps"] for r in rows)
        # A real cell: max_epochs epochs; its probe events (1 at init + 1 every interval) at this run's mean cost.
        full = cells[0].training["max_epochs"] * (steps // args.epochs)
        full_share = (probe_ms * steps / (1 + -(-steps // interval))) * (1 + -(-full // interval)) / (vg * full)
        unprobed = runs[label]["unprobed"]  # its probe time is the init probe's alone
        init_ms = statistics.median(1000 * r["probe_seconds"] / r["steps"] for r in unprobed)
        ab = (vg - ms(label, "unprobed") + init_ms) / vg
        paired = " ".join(f"{v['seconds'] / r['seconds']:.2f}" for v, r in zip(rows, runs[label]["raw fit"]))
        print(f"{label:28}{steps:6d}{vg:9.2f}{raw:9.2f}{vg / raw:8.3f}{(vg - probe_ms) / raw:11.3f}"
              f"{ms(label, 'Lightning') / raw:10.3f}{100 * probe_ms / vg:7.1f}%{100 * full_share:10.1f}%"
              f"{100 * ab:6.1f}%{ms(label, 'W&B') / vg if 'W&B' in variants else math.nan:7.2f}   {paired}")
        if steps != runs[label]["raw fit"][0]["steps"]:
            print(f"  warning: vgbench ran {steps} steps, the raw fit loop {runs[label]['raw fit'][0]['steps']}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
