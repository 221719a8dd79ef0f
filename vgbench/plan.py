"""How big is a profile, and how long will it take? ``vgbench plan`` answers before anything trains.

A profile's matrix easily runs to thousands of cells, and the paper profile's
data sets (MNIST, CIFAR-10) may not even be on the machine that plans it. So
nothing here reads stored data: each data set's ``shape`` hook says its sample
shape and split sizes from the settings alone, and the cost of a cell is
measured on random inputs of that shape.

Cells that differ only in seed and learning rate build the same network on the
same data, so their steps cost the same (``shape_key``). Each such model shape
is timed once (``measure``: a warm-up step, then a few timed training steps,
evaluation batches and probed steps), and every cell's time is its step
count times those costs (``cell_seconds``). The same per-cell estimate packs
cells into SLURM array tasks of bounded length (``pack``).

For a cell trained alone read the estimate as a lower bound; it leaves out Lightning's own per-step cost
(bench/README.md measured a group of one at 1.35x a raw PyTorch loop), the per-cell start-up (building the Trainer,
loading the data, W&B), the trainer's precision and determinism settings (steps
are timed in float32 with torch's defaults), and a loaded machine's noise. A
multi-device (DDP) cell is timed as one process: each rank takes a batch of
``batch_size``, so its device-hours are those of one device running every step. For cells trained
in groups, which share the per-step cost, it is an upper bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from vgbench.data import DATASETS, DataShape
from vgbench.groups import group, trains_alone
from vgbench.matrix import CellSpec, expand
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining.for_cell import PretrainingSettings
from vgbench.pretraining.rbm import RBM
from vgbench.probes.taps import ProbedModel
from vgbench import results
from vgbench.results import cpu_model
from vgbench.source_digest import source_digest
from vgbench.tasks import TASKS, Task
from vgbench.training.augment import AUGMENTATIONS
from vgbench.twins import stored_as, unique_stored

# Everything of a cell's config that changes what one step costs; seed and learning rate do not.
_COST_FREE_FIELDS = ("seed", "learning_rate", "remedy")  # the remedy's recipe is kept; its name changes nothing


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one model shape on one device."""

    train_step_seconds: float  # forward, task loss, backward, clipping, optimizer step, on one batch
    eval_batch_seconds: float  # forward and the task's evaluation sums on one batch, no gradients
    probe_extra_seconds: float = 0.0  # what a probed training step costs beyond a plain one


@dataclass(frozen=True)
class CellEstimate:
    shape: str  # the cell's ``shape_key``
    steps: int  # optimizer steps: max_epochs * ceil(train split / batch_size)
    seconds: float  # training, validation, test, probes and (if any) the RBM pretraining it pays for
    pretraining_seconds: float = 0.0  # included in ``seconds``


# -- what a cell reads and builds --------------------------------------------------------------------

def data_shape(cell: CellSpec) -> DataShape:
    """The cell's data shape from its data set's ``shape`` hook: no data on disk needed."""
    spec = DATASETS.get(cell.dataset)
    if spec.shape is None:
        raise ValueError(f"data set {cell.dataset!r} has no shape hook, so its cells cannot be planned")
    settings = spec.settings.model_validate(cell.dataset_settings)
    return spec.shape(settings, spec.length_for(cell.depth))


def split_sizes(cell: CellSpec) -> dict[str, int]:
    """Stored train/validation/test sizes of the cell's data (validation carved from train)."""
    return data_shape(cell).split_sizes(cell.dataset_settings["validation_fraction"])


def batches(size: int, batch_size: int) -> int:
    """Batches one pass over ``size`` samples takes (the last one may be short, as in ``training.batches``)."""
    return math.ceil(size / batch_size)


def shape_key(cell: CellSpec) -> str:
    """A readable key shared by exactly the cells whose steps cost the same.

    Two cells share it when they differ only in seed and learning rate: same
    family, recipe, model hyperparameters, data set and settings, depth, and
    training, trainer, probe and pretraining settings.
    """
    config = {key: value for key, value in cell.as_dict().items() if key not in _COST_FREE_FIELDS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cell.family}-{cell.dataset}-d{cell.depth}-{digest}"


def _task(cell: CellSpec) -> Task:
    return TASKS.get(DATASETS.get(cell.dataset).task)


def build_model(cell: CellSpec, shape: DataShape, seeds: list[int] | None = None) -> ProbedModel:
    """The cell's network as a group of one (or a stack of ``seeds``), built as ``run_group.build`` builds it
    (without RBM pretraining)."""
    task = _task(cell)
    family = FAMILIES.get(cell.family)
    io = ModelIO(shape.input_shape, task.num_outputs(shape.num_classes), task.per_step)
    return family.build(io, cell.depth, Recipe(**cell.recipe), family.hparams.model_validate(cell.model),
                        seeds or [cell.seed])


def random_batch(shape: DataShape, task: Task, batch_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal inputs and targets of the task's kind, for one model (``[1, B, ...]``): a class id
    per sample (classification), a real number per sample (regression), a symbol per time step (copy memory)."""
    x = torch.randn(1, batch_size, *shape.input_shape, device=device)
    if task.scalar_output:
        y = torch.randn(1, batch_size, device=device)
    else:
        target_shape = (1, batch_size, shape.input_shape[0]) if task.per_step else (1, batch_size)
        y = torch.randint(0, shape.num_classes, target_shape, device=device)
    return x, y


def make_optimizer(cell: CellSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The cell's optimizer, from ``TaskModule.configure_optimizers`` itself (SGD with momentum or Adam)."""
    from vgbench.training.module import TaskModule  # imports Lightning: only when measuring

    training = cell.training
    module = TaskModule(model, _task(cell), [cell.learning_rate], training["optimizer"], training["momentum"],
                        training["weight_decay"], augment=training["augment"])
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


# -- timing ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: leave torch's setting), restoring it afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fastest_call(action: Callable[[], object], calls: int, device: torch.device) -> float:
    """Wall-clock seconds of the fastest of ``calls`` calls of ``action``, each with the device's queue
    drained before and after. The fastest, not the mean: on a shared machine noise only ever adds time."""
    fastest = math.inf
    for _ in range(calls):
        _synchronize(device)
        start = time.perf_counter()
        action()
        _synchronize(device)
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def measure(cell: CellSpec, device: str = "cpu", steps: int = 3) -> StepCost:
    """Time one training step, one evaluation batch and one probe's extra cost of the cell's model shape.

    The model is built as ``run_group.build`` builds a group of one, but never pretrained;
    inputs are random, of the data set's shape, in batches of
    ``training.batch_size``; the optimizer is the cell's own. After one
    warm-up step, ``steps`` training steps (augmentation, forward, task loss,
    backward, the recipe's gradient clipping, optimizer step) and ``steps``
    evaluation batches are timed, then two training steps with the probe taps
    armed (for a task whose probes follow another loss, its own probed forward and
    backward, then an unprobed step); each cost is the fastest of its calls. Runs
    with ``cell.trainer["threads"]`` torch threads when set and leaves torch's
    thread count and global random state as they were.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    where = torch.device(device)
    with torch_threads(cell.trainer.get("threads")), torch.random.fork_rng(devices=_rng_devices(where)):
        torch.manual_seed(cell.seed)
        return _measure(cell, where, steps)


def _measure(cell: CellSpec, device: torch.device, steps: int) -> StepCost:
    shape, task = data_shape(cell), _task(cell)
    model = build_model(cell, shape).to(device)
    optimizer = make_optimizer(cell, model)
    x, y = random_batch(shape, task, cell.training["batch_size"], device)
    augment = AUGMENTATIONS[cell.training["augment"]]
    recipe = Recipe(**cell.recipe)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(torch.stack([augment(x[0])]) if augment is not None else x), y).sum()
        loss.backward()
        if recipe.grad_clip == "norm":
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip_value)
        elif recipe.grad_clip == "value":
            torch.nn.utils.clip_grad_value_(model.parameters(), recipe.grad_clip_value)
        optimizer.step()

    def probed_step() -> None:
        model.taps.arm()
        try:
            if task.probed_steps is None:
                train_step()  # the step's own backward fills the taps
                return
            # A loss that is not the training loss (copy memory's recall): a pass of its own, then the step
            # unprobed, as GradientFlowProbe does it. (Imported here: its module imports Lightning, ~6 s
            # on this project's CPU, which `vgbench status` and every command that plans nothing would pay.)
            from vgbench.probes.gradient_flow import probe_loss_gradients

            probe_loss_gradients(model, task.probe_loss(model(x), y))
        finally:
            model.taps.disarm()
        train_step()

    def eval_batch() -> None:
        with torch.inference_mode():
            task.sums(model(x), y)

    train_step()  # warm-up: allocations, kernel selection, optimizer state
    train_seconds = _fastest_call(train_step, steps, device)
    model.eval()
    try:
        eval_batch()
        eval_seconds = _fastest_call(eval_batch, steps, device)
    finally:
        model.train()
    probed_seconds = _fastest_call(probed_step, 2, device)
    return StepCost(train_seconds, eval_seconds, max(probed_seconds - train_seconds, 0.0))


# -- RBM pretraining (dbn cells whose recipe pretrains) ------------------------------------------------

def _rbm_layer_seconds(num_visible: int, num_hidden: int, gaussian_visible: bool,
                       settings: PretrainingSettings, device: torch.device, calls: int) -> tuple[float, float]:
    """Seconds of one CD update and of one batch's monitoring (reconstruction error and free energy)."""
    generator = torch.Generator(device=device).manual_seed(0)
    rbm = RBM(num_visible, num_hidden, gaussian_visible=gaussian_visible, generator=generator)
    batch = torch.rand(settings.batch_size, num_visible, generator=generator, device=device)

    def update() -> None:
        rbm.contrastive_divergence_update(batch, learning_rate=settings.learning_rate, k=settings.k,
                                          momentum=settings.momentum, weight_decay=settings.weight_decay,
                                          persistent=settings.persistent)

    def monitor() -> None:
        rbm.reconstruction_error(batch)
        rbm.free_energy(batch)

    update()
    monitor()
    return _fastest_call(update, calls, device), _fastest_call(monitor, calls, device)


def pretraining_seconds(cell: CellSpec, device: str = "cpu", calls: int = 3) -> float:
    """A rough cost of greedily pretraining the cell's RBM stack (0 for cells that do not pretrain).

    Per layer, ``pretrain_stack`` makes ``epochs * ceil(train / batch)`` CD
    updates and, before the first epoch and after each, monitors the
    reconstruction error of train and validation and the free energy of two
    validation-sized subsets. Each layer's update and monitoring are timed on a
    random batch of ``pretraining.batch_size`` and scaled by those counts (the
    monitoring as if every sample were read twice); the pass that feeds each
    layer's probabilities to the next is left out. Assumes an empty stack cache.
    """
    if cell.pretrain is None or cell.recipe.get("pretrain", "none") == "none":
        return 0.0
    settings = PretrainingSettings.model_validate(cell.pretrain)
    shape, sizes = data_shape(cell), split_sizes(cell)
    where = torch.device(device)
    updates_per_epoch = batches(sizes["train"], settings.batch_size)
    monitored_batches = (sizes["train"] + sizes["validation"]) / settings.batch_size
    with torch_threads(cell.trainer.get("threads")):
        widths = [layer.linear.out_features for layer in build_model(cell, shape).hidden]
        total, visible = 0.0, math.prod(shape.input_shape)
        for index, hidden in enumerate(widths):
            gaussian = settings.visible_units == "gaussian" and index == 0
            update, monitor = _rbm_layer_seconds(visible, hidden, gaussian, settings, where, calls)
            total += settings.epochs * updates_per_epoch * update + (settings.epochs + 1) * monitored_batches * monitor
            visible = hidden
    return total


def _stack_key(cell: CellSpec) -> tuple[str, int]:
    """Cells of one shape and seed share one pretrained stack (it does not depend on the learning rate)."""
    return shape_key(cell), cell.seed


# -- estimating ------------------------------------------------------------------------------------

def training_steps(cell: CellSpec) -> int:
    """Optimizer steps of the cell: ``max_epochs * ceil(stored train split / batch_size)``."""
    return cell.training["max_epochs"] * batches(split_sizes(cell)["train"], cell.training["batch_size"])


def cell_seconds(cell: CellSpec, cost: StepCost) -> float:
    """Seconds to train, validate (every epoch), test and probe the cell at the measured step costs.

    epochs * (train batches * step + validation batches * eval) + test batches * eval,
    plus the probes: one probed step every ``probes.interval_steps`` (each costing
    ``probe_extra_seconds`` over a plain one) and the probe at initialization
    (about one probed step).
    """
    sizes, batch_size = split_sizes(cell), cell.training["batch_size"]
    epochs = cell.training["max_epochs"]
    epoch = (batches(sizes["train"], batch_size) * cost.train_step_seconds
             + batches(sizes["validation"], batch_size) * cost.eval_batch_seconds)
    test = batches(sizes["test"], batch_size) * cost.eval_batch_seconds
    probed_steps = math.ceil(training_steps(cell) / cell.probes["interval_steps"])
    init_probe = cost.train_step_seconds + cost.probe_extra_seconds
    return epochs * epoch + test + probed_steps * cost.probe_extra_seconds + init_probe


def estimate(cells: list[CellSpec], device: str = "cpu", steps: int = 3,
             known: dict[str, StepCost] | None = None) -> dict[str, CellEstimate]:
    """Every cell's ``CellEstimate``, keyed by cell id, measuring each model shape once on ``device``.

    ``known`` holds step costs measured before (``load_costs``): those shapes are
    not timed again, and the ones timed now are added to it (for ``save_costs``).
    A pretraining cell pays for its RBM stack only when it is the first cell of
    its shape and seed (the others find the stack in the cache).
    """
    costs = known if known is not None else {}
    stack_costs: dict[str, float] = {}
    stacks_paid: set[tuple[str, int]] = set()
    estimates = {}
    for cell in cells:
        key = shape_key(cell)
        if key not in costs:
            costs[key] = measure(cell, device, steps)
        pretraining = 0.0
        if cell.pretrain is not None and _stack_key(cell) not in stacks_paid:
            if key not in stack_costs:
                stack_costs[key] = pretraining_seconds(cell, device)
            pretraining = stack_costs[key]
            stacks_paid.add(_stack_key(cell))
        estimates[cell.cell_id] = CellEstimate(key, training_steps(cell), cell_seconds(cell, costs[key]) + pretraining,
                                               pretraining)
    return estimates


# -- step costs kept between runs: `vgbench plan` measures, the slurm launcher packs with them ------------

def costs_path(results_root: Path) -> Path:
    return results_root / "launch" / "step_costs.json"


def _timing_code() -> str:
    """What a kept step cost depends on besides the device: the training code (``code_fingerprint``: the
    model, probe and training modules), this module's timing code and torch. (The GPU model is not in it:
    a login node reads CUDA timings made on a GPU node.)"""
    return source_digest(Path(__file__).parent, [Path(__file__)], results.code_fingerprint(),
                         f"torch=={torch.__version__}")


def _stored_costs(path: Path) -> dict:
    """The file's costs if the current code timed them (``_timing_code``), else none."""
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a cache: what cannot be read is timed again
    return stored if isinstance(stored, dict) and stored.get("timed_by") == _timing_code() else {}


def load_costs(path: Path, device: str) -> dict[str, StepCost]:
    """Step costs measured earlier on ``device`` ("cpu", "cuda", ...) by this training code, by shape key;
    empty if none."""
    return {key: StepCost(*values) for key, values in _stored_costs(path).get(device, {}).items()}


def save_costs(path: Path, device: str, costs: dict[str, StepCost]) -> None:
    from vgbench import atomic

    stored = {**_stored_costs(path), "timed_by": _timing_code()}
    stored[device] = {key: [cost.train_step_seconds, cost.eval_batch_seconds, cost.probe_extra_seconds]
                      for key, cost in costs.items()}
    atomic.write_json(path, stored)


# -- packing into SLURM array tasks -----------------------------------------------------------------

def pack(cell_ids_in_order: list[str], seconds_by_id: dict[str, float], limit_seconds: float) -> list[list[str]]:
    """Group ids (of cells, or of cell groups: ``pack_groups``) into array tasks of at most ``limit_seconds``
    estimated time each.

    Greedy in the given (matrix) order: a task is closed when adding the next
    one would take it over the limit. One estimated above the limit on its
    own gets a task of its own. Every id lands in exactly one task and the
    order is kept, within and across tasks.
    """
    if not limit_seconds > 0:
        raise ValueError(f"limit_seconds must be > 0, got {limit_seconds}")
    tasks: list[list[str]] = []
    current: list[str] = []
    used = 0.0
    for cell_id in cell_ids_in_order:
        seconds = seconds_by_id[cell_id]
        if current and used + seconds > limit_seconds:
            tasks.append(current)
            current, used = [], 0.0
        current.append(cell_id)
        used += seconds
    if current:
        tasks.append(current)
    return tasks


def ddp_layout(trainer: dict) -> tuple[int, int]:
    """(nodes, processes per node) of one cell: more than one process when the trainer asks for DDP across
    devices or nodes (``trainer.devices`` a count; a list of device ids or "auto" is one process here)."""
    devices = trainer["devices"] if isinstance(trainer["devices"], int) else 1
    return trainer["num_nodes"], devices


def slurm_tasks(cell_groups: list[list[CellSpec]], seconds_by_id: Callable[[], dict[str, float]],
                limit_seconds: float) -> list[list[list[CellSpec]]]:
    """The SLURM array tasks the slurm launcher makes of ``cell_groups``: one group per task where a cell runs
    as several DDP processes (the task is their ``srun``), else whole groups packed by ``pack_groups``
    (``seconds_by_id`` is called only then: the DDP case needs no timings)."""
    nodes, per_node = ddp_layout(cell_groups[0][0].trainer) if cell_groups else (1, 1)
    if nodes * per_node > 1:
        return [[members] for members in cell_groups]
    return pack_groups(cell_groups, seconds_by_id(), limit_seconds)


def pack_groups(cell_groups: list[list[CellSpec]], seconds_by_id: dict[str, float],
                limit_seconds: float) -> list[list[list[CellSpec]]]:
    """Array tasks of whole cell groups (a group trains as one network, so it is never split), packed by
    ``pack`` on the sum of their cells' estimated seconds: an upper bound, since a group shares the per-step
    cost."""
    keys = [str(index) for index in range(len(cell_groups))]
    seconds = {key: sum(seconds_by_id[cell.cell_id] for cell in members) for key, members in zip(keys, cell_groups)}
    return [[cell_groups[int(key)] for key in task] for task in pack(keys, seconds, limit_seconds)]


# -- reporting -------------------------------------------------------------------------------------

def device_description(device: str, threads: int | None = None) -> str:
    """What was measured: "cpu: <CPU model>, N torch threads", or "cuda:0: <GPU name>".

    ``threads`` is the thread count the cells pin (``trainer.threads``);
    None reports torch's current setting.
    """
    where = torch.device(device)
    if where.type == "cuda":
        index = where.index if where.index is not None else torch.cuda.current_device()
        return f"cuda:{index}: {torch.cuda.get_device_name(index)}"
    if where.type == "cpu":
        count = threads or torch.get_num_threads()
        return f"cpu: {cpu_model() or 'unknown CPU'}, {count} torch thread{'s' if count != 1 else ''}"
    return str(where)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f}" if hours >= 100 else f"{hours:.3f}"


def format_plan(profile_name: str, cells: list[CellSpec], estimates: dict[str, CellEstimate], device_text: str,
                task_minutes: float | None, group_size: int | None = None) -> str:
    """A Markdown report: one row per (family, data set) with its cells, cell groups (vgbench/groups.py),
    model shapes, optimizer steps and estimated device-hours, in matrix order; a total row; the device
    measured; how each family stacks a group; and, given ``task_minutes``, how many SLURM array tasks
    the slurm launcher makes of the cell groups (``slurm_tasks``).

    ``cells`` are the matrix's (``expand``); ``estimates`` are keyed by the id each is stored as. A cell
    that trains as its twin (vgbench/twins.py: a DBN stack without pretraining is an MLP) is trained once:
    its row lists it, and its groups, shapes, steps and hours count in the row that lists it first."""
    blocks: dict[tuple[str, str], tuple[list[CellSpec], list[CellSpec]]] = {}  # (listed, trained here)
    seen: set[str] = set()
    for cell in cells:
        listed, trained = blocks.setdefault((cell.family, cell.dataset), ([], []))
        listed.append(cell)
        stored = stored_as(cell)
        if stored.cell_id not in seen:
            seen.add(stored.cell_id)
            trained.append(stored)
    every_trained = [cell for _, trained in blocks.values() for cell in trained]
    title = f"{len(cells)} cells" + (f", {len(every_trained)} trained" if len(every_trained) < len(cells) else "")
    lines = [f"# vgbench plan: profile `{profile_name}`, {title}", "",
             "| family | data set | cells | groups (largest) | shapes | steps | device-hours |",
             "|---|---|---:|---:|---:|---:|---:|"]

    def row(family: str, dataset: str, listed: list[CellSpec], trained: list[CellSpec]) -> str:
        chosen = [estimates[cell.cell_id] for cell in trained]
        cell_groups = group(trained, group_size)
        return (f"| {family} | {dataset} | {len(listed)} | {len(cell_groups)} "
                f"({max((len(g) for g in cell_groups), default=0)}) | {len({e.shape for e in chosen})} | "
                f"{sum(e.steps for e in chosen):,} | {_hours(sum(e.seconds for e in chosen))} |")

    lines += [row(family, dataset, *members) for (family, dataset), members in blocks.items()]
    lines.append(row("**total**", "", cells, every_trained))
    twins = [(family, dataset, len(listed) - len(trained)) for (family, dataset), (listed, trained) in blocks.items()
             if len(trained) < len(listed)]
    if twins:
        lines += [""] + [f"{family} / {dataset}: {count} of its cells train another block's very network, "
                         f"once, under that block's cell ids (vgbench/twins.py): they are counted in that "
                         f"block's groups, shapes, steps and hours." for family, dataset, count in twins]
    lines += ["", "Cell groups: the seeds and learning rates of a row train as one stacked network; how each "
                  "family stacks them:"]
    lines += [f"- {name}: {FAMILIES.get(name).stacking}" for name in dict.fromkeys(c.family for c in cells)]
    alone = [cell for cell in cells if trains_alone(cell)]
    if alone:
        lines.append(f"- {len(alone)} cells train one per group: trainer.precision "
                     f"{alone[0].trainer['precision']} scales the loss, and its scaler would skip every model's "
                     f"step where one model's gradient overflowed (bf16-mixed stacks).")
    pretraining = sum(estimates[cell.cell_id].pretraining_seconds for cell in every_trained)
    lines += ["", f"Measured on {device_text}: a few timed steps per model shape on random inputs of each data "
                  f"set's shape, one model at a time (a group of one): an upper bound for cells trained in groups, "
                  f"which share the per-step cost (bench/README.md); without per-cell start-up."]
    if pretraining:
        lines.append(f"RBM pretraining, included above: {_hours(pretraining)} device-hours (rough; an empty cache).")
    if task_minutes is not None:
        limit = task_minutes * 60
        cell_groups = group(every_trained, group_size)
        tasks = slurm_tasks(cell_groups, lambda: {cell.cell_id: estimates[cell.cell_id].seconds
                                                  for cell in every_trained}, limit)
        seconds = [sum(estimates[cell.cell_id].seconds for cell in members) for members in cell_groups]
        plural = "s" if len(tasks) != 1 else ""
        if cells and math.prod(ddp_layout(cells[0].trainer)) > 1:
            lines.append(f"SLURM: {len(tasks)} array task{plural}, one per cell group, as the slurm launcher runs a "
                         f"DDP group (nodes x processes per node: {' x '.join(map(str, ddp_layout(cells[0].trainer)))}"
                         f"); the longest group: {max(seconds, default=0.0) / 60:.1f} min of one device.")
        else:
            alone = sum(1 for value in seconds if value > limit)
            lines.append(f"SLURM: {len(tasks)} array task{plural} of at most {task_minutes:g} min, as the slurm "
                         f"launcher packs whole cell groups ({alone} group{'s' if alone != 1 else ''} estimated "
                         f"above that run alone; the longest group: {max(seconds, default=0.0) / 60:.1f} min).")
    return "\n".join(lines) + "\n"


def plan_main(params, device: str = "cpu", steps: int = 3, task_minutes: float | None = None,
              results_root: Path | None = None) -> str:
    """The ``vgbench plan`` report of ``params``' active profile (``task_minutes`` None: the profile's
    ``launcher.slurm.task_minutes``). With ``results_root``, step costs measured before on this device
    are reused and the new ones kept (``results/launch/step_costs.json``)."""
    profile = params.active
    cells = expand(profile)
    trained = unique_stored(cells)  # a DBN twin of an MLP cell is trained once (twins.py)
    kind = torch.device(device).type  # the slurm launcher reads "cuda" timings, whichever GPU made them
    known = load_costs(costs_path(results_root), kind) if results_root else {}
    reused = len({shape_key(cell) for cell in trained} & set(known))
    estimates = estimate(trained, device, steps, known)
    if results_root:
        save_costs(costs_path(results_root), kind, known)
    if task_minutes is None:
        task_minutes = profile.launcher.slurm.task_minutes
    report = format_plan(params.profile, cells, estimates, device_description(device, profile.trainer.threads),
                         task_minutes, profile.launcher.group_size)
    return report + (f"Step costs of {reused} model shapes were reused from {costs_path(results_root)}.\n"
                     if reused else "")
