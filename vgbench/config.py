"""params.yaml, validated before any work starts.

``load_params`` returns a ``Params`` whose ``active`` profile is the one named by
the top-level ``profile`` key. Every profile is checked (not only the active
one), so a broken ``paper`` profile is caught on a laptop. Errors are collected
into one ``ConfigError`` that names the file, the key, the bad value and what
is allowed.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vgbench import cpu_kernels
from vgbench.data import DATASETS
from vgbench.models import FAMILIES
from vgbench.pretraining.for_cell import PretrainingSettings
from vgbench.remedies import REMEDIES, skip_reason


class ConfigError(ValueError):
    """params.yaml is not valid; the message lists every problem found."""


class _Strict(BaseModel):
    # strict: YAML's `true` is no seed, depth or device count (lax pydantic reads it as 1)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _positive_rates(value: list[float]) -> list[float]:
    bad = [lr for lr in value if not (lr > 0 and math.isfinite(lr))]
    if bad:
        raise ValueError(f"learning rates must be finite and > 0, got {bad}")
    if len(set(value)) != len(value):  # 1 and 1.0 too: the same cells, twice
        raise ValueError(f"learning rates are listed twice: {value}")
    return value


def milestone_epochs(fractions: list[float], max_epochs: int) -> tuple[int, ...]:
    """The epochs at which the learning rate is divided by 10: ``lr_milestones`` (fractions) of ``max_epochs``."""
    return tuple(round(f * max_epochs) for f in fractions)


def _known(registry, name: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {registry.axis} {name!r}; allowed: {registry.names()}")
    return name


class TrainingSettings(_Strict):
    max_epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="per process, as in Lightning")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(0.0, ge=0)
    target_accuracy: float = Field(0.5, gt=0, le=1, description="for 'epochs to target' (accuracy tasks)")
    lr_milestones: list[float] = Field(
        default_factory=list, description="fractions of max_epochs at which the learning rate is divided by 10 "
                                          "(He et al. 2016: [0.5, 0.75])")
    augment: Literal["none", "pad_crop_flip"] = Field(
        "none", description="training-batch augmentation (pad_crop_flip: He et al. 2016's CIFAR one; images only)")
    convergence_tolerance: float = Field(
        0.01, gt=0, lt=1, description="converged: the best validation metric improved by less than this over the "
                                      "last fifth of the epochs (accuracy points; loss tasks: a fraction of the "
                                      "baseline loss); a cell still improving more is flagged, and `undertrained` "
                                      "if it is not trainable")

    @field_validator("lr_milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in value) or value != sorted(set(value)):
            raise ValueError(f"lr_milestones must be increasing fractions strictly between 0 and 1, got {value}")
        return value

    @model_validator(mode="after")
    def _milestones_land_on_epochs(self) -> "TrainingSettings":
        """Each milestone must fall on its own epoch after the first and before the end: one that rounds to
        epoch 0 would divide the rate from the start, one at max_epochs would never act, two on one epoch
        would divide by 100 there."""
        epochs = milestone_epochs(self.lr_milestones, self.max_epochs)
        if any(not 0 < e < self.max_epochs for e in epochs) or len(set(epochs)) != len(epochs):
            raise ValueError(f"lr_milestones = {self.lr_milestones} of max_epochs = {self.max_epochs} fall at epochs "
                             f"{list(epochs)}; each must land on its own epoch from 1 to {self.max_epochs - 1} "
                             f"(more epochs, or fractions further apart)")
        return self


MAX_DEPTH = 2000  # layers (He et al. 2016 trained a 1202-layer ResNet)
MAX_LENGTH = 10000  # time steps of a recurrent net


class MatrixBlock(_Strict):
    """One family's slice of the matrix: remedies x depths on one data set.

    ``learning_rates`` and ``training`` may replace the profile's for this block
    (RNNs want Adam and other rates than MLPs); the grid stays the same for
    every remedy of the block, which is what makes the comparison fair.
    """

    family: str
    dataset: str
    remedies: list[str] = Field(min_length=1)
    depths: list[int] = Field(min_length=1, description="hidden layers (or sequence lengths)")
    model: dict[str, Any] = Field(default_factory=dict, description="the family's own hyperparameters")
    learning_rates: list[float] | None = Field(None, min_length=1, description="instead of the profile's grid")
    training: dict[str, Any] = Field(default_factory=dict, description="keys of the profile's training to replace")

    @field_validator("family")
    @classmethod
    def _family(cls, value: str) -> str:
        return _known(FAMILIES, value)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _known(DATASETS, value)

    @field_validator("remedies")
    @classmethod
    def _remedies(cls, value: list[str]) -> list[str]:
        for name in value:
            _known(REMEDIES, name)
        if len(set(value)) != len(value):
            raise ValueError(f"remedies are listed twice: {value}")
        return value

    @field_validator("depths")
    @classmethod
    def _depths(cls, value: list[int]) -> list[int]:
        bad = [d for d in value if d < 1]
        if bad:
            raise ValueError(f"depths must be >= 1, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"depths are listed twice: {value}")
        return value

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, value: list[float] | None) -> list[float] | None:
        return value if value is None else _positive_rates(value)

    @model_validator(mode="after")
    def _pairs_and_model(self) -> "MatrixBlock":
        reasons = [r for r in (skip_reason(self.family, name) for name in self.remedies) if r]
        if reasons:
            raise ValueError("; ".join(reasons))
        family, data = FAMILIES.get(self.family), DATASETS.get(self.dataset)
        if data.kind not in family.inputs:
            raise ValueError(f"family {self.family!r} reads {sorted(family.inputs)} inputs; data set "
                             f"{self.dataset!r} gives {data.kind!r} inputs")
        if data.per_length and not family.depth_is_length:
            raise ValueError(f"data set {self.dataset!r} is generated per sequence length, which only a family "
                             f"whose depth is the sequence length can use (not {self.family!r})")
        limit = MAX_LENGTH if family.depth_is_length else MAX_DEPTH
        if max(self.depths) > limit:
            raise ValueError(
                f"depths {[d for d in self.depths if d > limit]} exceed {limit} "
                f"{'time steps' if family.depth_is_length else 'layers'}: far beyond the papers this benchmark "
                f"reproduces (ResNet-1202, sequences of 784), and a tiny cell at 10000 took minutes and a "
                f"12 MB probe file; split the question into a separate study if you mean it")
        if family.depth_is_length and not data.per_length and self.depths != [data.length]:
            raise ValueError(f"family {self.family!r}: depth is the sequence length, and {self.dataset!r} has "
                             f"length {data.length}; depths must be [{data.length}], got {self.depths}")
        if family.check_depth is not None:
            for depth in self.depths:
                try:
                    family.check_depth(depth)
                except ValueError as error:
                    raise ValueError(f"depths: {error}") from None
        try:
            family.hparams.model_validate(self.model)
        except ValidationError as error:  # named under `model`, where the user wrote it
            raise ValueError("; ".join(
                f"model.{'.'.join(map(str, item['loc']))} = {item.get('input')!r}: "
                f"{_message(item, family.hparams)}" for item in error.errors())) from None
        unknown = set(self.training) - set(TrainingSettings.model_fields)
        if unknown:
            raise ValueError(f"training keys {sorted(unknown)} are unknown; "
                             f"allowed: {list(TrainingSettings.model_fields)}")
        return self

    def family_hparams(self) -> BaseModel:
        return FAMILIES.get(self.family).hparams.model_validate(self.model)


# The trainer settings vgbench applies itself (run_group.build); lightning.Trainer gets the others.
VGBENCH_TRAINER_SETTINGS = ("threads", "cpu_capability")


class TrainerSettings(_Strict):
    """Passed to ``lightning.Trainer`` as they are, except ``threads`` (``torch.set_num_threads``) and
    ``cpu_capability`` (the ``ATEN_CPU_CAPABILITY`` the launchers give their workers)."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: int = Field(1, gt=0)
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    deterministic: bool = True
    threads: int | None = Field(
        None, gt=0, description="torch intra-op CPU threads per process (null: torch's default). CPU results "
                                "depend on it (reduction order), so the default profile pins it")
    cpu_capability: Literal[cpu_kernels.LEVELS] | None = Field(
        None, description="the vector kernels torch's CPU operations run on an x86-64 CPU (null: the best it has). "
                          "CPU results depend on them (an AVX-512 CPU sums in another order than an AVX2 one), so "
                          "the default profile pins avx2, which CPUs of the last decade run (vgbench/cpu_kernels.py)")

    @field_validator("devices")
    @classmethod
    def _devices(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"devices must be >= 1 or 'auto', got {value}")
        return value


class ProbeSettings(_Strict):
    interval_steps: int = Field(gt=0, description="probe the training step every K steps")
    init_batch_size: int = Field(256, gt=0, description="fixed training batch probed before the first update")
    vanished_log10_ratio: float = Field(-3.0, lt=0, description="log10 first/last dL/dh below this: vanished")
    exploded_log10_ratio: float = Field(3.0, gt=0, description="log10 first/last dL/dh above this: exploded")
    dead_fraction: float = Field(0.5, gt=0, le=1, description="dead-unit share above this: dead_units")
    trainable_margin: float = Field(
        0.1, gt=0, lt=1, description="accuracy tasks, trainable: test accuracy >= chance + margin")
    trainable_loss_fraction: float = Field(
        0.5, gt=0, lt=1,
        description="loss tasks (MSE, copy cross-entropy), trainable: test loss <= fraction x baseline")


class SlurmSettings(_Strict):
    """sbatch settings of the ``slurm`` launcher (submitit); null leaves a setting to the cluster's default."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_minutes: int = Field(60, gt=0, description="wall-clock limit of one array task; on it, submitit "
                                                    "requeues the task, which resumes from its checkpoints")
    cpus_per_task: int = Field(2, gt=0)
    gpus_per_node: int = Field(0, ge=0, description="0 on CPU; a DDP profile gets trainer.devices instead")
    mem_gb: float | None = Field(None, gt=0)
    sbatch: dict[str, str | int] = Field(default_factory=dict, description="further sbatch options as they are "
                                         "spelled on the command line, e.g. {constraint: a100, exclusive: ''}")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each task "
                                                               "(module load ..., source venv/bin/activate)")
    max_array_size: int | None = Field(None, gt=0, description="cap array sizes below the cluster's "
                                                               "MaxArraySize (read from scontrol show config)")
    task_minutes: float = Field(30.0, gt=0, description="cells are packed into one array task up to this "
                                                        "estimated time (vgbench plan); longer ones run alone")
    max_requeues: int = Field(3, ge=0, description="how often a timed-out or preempted task is requeued")
    array_parallelism: int = Field(256, gt=0, description="array tasks running at once")
    poll_seconds: float = Field(10.0, gt=0, description="how often a waiting launch checks progress")
    unanswered_minutes: float | None = Field(
        30.0, gt=0, description="a waiting launch stops waiting (exit 1, the jobs left as they are) once squeue "
                                "has not answered for this long; null: wait however long the controller is away")

    @model_validator(mode="after")
    def _tasks_fit_their_time_limit(self) -> "SlurmSettings":
        """Tasks packed to more estimated minutes than SLURM gives them would all time out and be requeued."""
        if self.task_minutes > self.time_minutes:
            raise ValueError(f"task_minutes = {self.task_minutes:g} is more than time_minutes = {self.time_minutes}, "
                             f"the time limit each packed array task gets; allowed: task_minutes <= time_minutes")
        return self


class LauncherSettings(_Strict):
    """How ``vgbench train`` runs the cells (vgbench/launch/); none of it changes a cell's result."""

    name: str = Field("serial", description="serial | local | slurm (vgbench/launch/)")
    jobs: int | None = Field(None, gt=0, description="local: worker processes (default: one per GPU slot, "
                                                     "or CPU cores / threads)")
    threads: int | None = Field(None, gt=0, description="torch threads per worker where trainer.threads is null")
    gpus: list[int] = Field(default_factory=list, description="local: GPU indices; each worker is pinned to "
                                                              "one with CUDA_VISIBLE_DEVICES")
    cells_per_gpu: int = Field(1, gt=0, description="local: workers sharing each GPU")
    checkpoint_every: int | None = Field(None, gt=0, description="epochs between checkpoints of a cell "
                                                                 "(null: none); an interrupted cell resumes")
    group_size: int | None = Field(None, gt=0, description="most cells trained together as one stacked network "
                                                           "(null: all seeds x rates of a row; 1: one at a time). "
                                                           "A cell's result does not depend on it")
    slurm: SlurmSettings = SlurmSettings()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from vgbench.launch import LAUNCHERS

        return _known(LAUNCHERS, value)

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: list[int]) -> list[int]:
        if any(g < 0 for g in value) or len(set(value)) != len(value):
            raise ValueError(f"gpus must be distinct indices >= 0, got {value}")
        return value


class TuningSettings(_Strict):
    """How far a learning-rate grid may grow at its edges (vgbench/tuning.py)."""

    extend_edge_rates: int = Field(
        0, ge=0, le=5, description="rounds of extension: a row whose chosen rate is the largest (smallest) of its "
                                   "grid gets one more rate beyond it for every seed, then is chosen again")


class LeaderboardSettings(_Strict):
    """How the leaderboard reads the cells (changing these rebuilds the tables, never retrains a cell)."""

    trainable_fraction_of_shallow: float = Field(
        0.5, ge=0, le=1, description="a cell counts as trainable in the tables when it passes the probes' absolute "
                                     "bar and gains at least this fraction of the best shallowest row's gain over "
                                     "chance (or the baseline loss) in its (family, data set)")


class Profile(_Strict):
    description: str
    datasets: dict[str, dict[str, Any]]
    matrix: list[MatrixBlock] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    learning_rates: list[float] = Field(min_length=1, description="the fair LR grid, the same for every cell")
    training: TrainingSettings
    trainer: TrainerSettings = TrainerSettings()
    probes: ProbeSettings
    pretraining: PretrainingSettings = Field(PretrainingSettings(), description="greedy RBM pretraining (dbn)")
    launcher: LauncherSettings = LauncherSettings()
    leaderboard: LeaderboardSettings = LeaderboardSettings()
    tuning: TuningSettings = TuningSettings()

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Every data set's settings, every problem named under its data set (pydantic would report the first
        one, relative to ``datasets``, without the data set's name)."""
        problems = []
        for name, settings in value.items():
            _known(DATASETS, name)
            model = DATASETS.get(name).settings
            try:
                model.model_validate(settings)
            except ValidationError as error:
                problems += [f"{name}.{'.'.join(map(str, item['loc']))} = {item.get('input')!r}: "
                             f"{_message(item, model)}" for item in error.errors()]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        return _positive_rates(value)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _threads_pinned_once(self) -> "Profile":
        pinned, asked = self.trainer.threads, self.launcher.threads
        if pinned is not None and asked is not None and pinned != asked:
            raise ValueError(f"launcher.threads = {asked} but trainer.threads pins {pinned}: results depend on the "
                             f"thread count, so a cell runs with the threads its config names; drop launcher.threads "
                             f"or make them equal")
        return self

    @model_validator(mode="after")
    def _datasets_configured(self) -> "Profile":
        missing = sorted({b.dataset for b in self.matrix} - set(self.datasets))
        if missing:
            raise ValueError(f"matrix uses data sets {missing} that are not configured under 'datasets' "
                             f"(configured: {sorted(self.datasets)})")
        for index, block in enumerate(self.matrix):
            try:
                training = self.block_training(block)
            except ValidationError as error:
                raise ValueError("; ".join(
                    f"matrix.{index}.training.{'.'.join(map(str, item['loc']))} = {item.get('input')!r}: "
                    f"{_message(item, TrainingSettings)}" if item["loc"] else
                    f"matrix.{index}.training: {_message(item, TrainingSettings)}"  # a rule over several keys
                    for item in error.errors())) from None
            kind = DATASETS.get(block.dataset).kind
            if training.augment != "none" and kind != "image":
                raise ValueError(f"matrix.{index}.training.augment = {training.augment!r} needs an image data set; "
                                 f"{block.dataset!r} gives {kind!r} inputs")
        return self

    @model_validator(mode="after")
    def _no_row_twice(self) -> "Profile":
        """Two blocks listing the same (family, data set, remedy, depth) would train the same cells twice."""
        seen: dict[tuple, int] = {}
        for index, block in enumerate(self.matrix):
            for remedy in block.remedies:
                for depth in block.depths:
                    key = (block.family, block.dataset, remedy, depth)
                    if key in seen:  # a block's own remedies and depths are distinct (MatrixBlock checks)
                        raise ValueError(
                            f"matrix.{seen[key]} and matrix.{index} both list family {block.family!r}, data set "
                            f"{block.dataset!r}, remedy {remedy!r}, depth {depth}: a row may appear in one block "
                            f"only (merge the blocks, or drop it from one)")
                    seen[key] = index
        return self

    def dataset_settings(self, name: str):
        return DATASETS.get(name).settings.model_validate(self.datasets[name])

    def block_training(self, block: MatrixBlock) -> TrainingSettings:
        return TrainingSettings.model_validate({**self.training.model_dump(), **block.training})

    def block_learning_rates(self, block: MatrixBlock) -> list[float]:
        return block.learning_rates or self.learning_rates

    def stored_datasets(self, names: list[str] | None = None) -> list[tuple[str, int | None]]:
        """(data set, sequence length or None) of every stored folder the profile needs."""
        wanted = []
        for name in sorted(self.datasets):
            if names is not None and name not in names:
                continue
            spec = DATASETS.get(name)
            lengths = sorted({spec.length_for(depth) for block in self.matrix if block.dataset == name
                              for depth in block.depths} - {None})
            wanted += [(name, length) for length in lengths] if spec.per_length else [(name, None)]
        return wanted


class WandbSettings(_Strict):
    project: str = "vgbench"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"


class Params(_Strict):
    profile: str
    wandb: WandbSettings = WandbSettings()
    profiles: dict[str, Profile]

    @model_validator(mode="after")
    def _profile_exists(self) -> "Params":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not defined; allowed: {sorted(self.profiles)}")
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The model that holds the key at ``path`` below ``model`` (field names, dict keys, list indexes),
    or None where the path leaves the models."""
    holder: Any = model
    for part in path:
        if isinstance(holder, type) and issubclass(holder, BaseModel):
            field = holder.model_fields.get(part)
            holder = field.annotation if field is not None else None
        else:  # dict[str, X], list[X] or X | None: the X
            holder = next((a for a in reversed(typing.get_args(holder)) if a is not type(None)), None)
    return holder if isinstance(holder, type) and issubclass(holder, BaseModel) else None


def _message(item: dict, model: type[BaseModel] | None) -> str:
    """pydantic's message for one problem, with what is allowed where pydantic leaves it out: the keys a
    misspelt key could have been (``item['loc']`` is below ``model``)."""
    holder = _model_at(model, item["loc"][:-1]) if model is not None else None
    if item["type"] == "extra_forbidden" and holder is not None:
        return f"unknown key (allowed: {', '.join(holder.model_fields)})"
    return item["msg"].removeprefix("Value error, ")


# A problem found by a validator one level up names its key relative to the one pydantic reports.
_RELATIVE_KEY = re.compile(r"^\w+(\.\w+)* = ")


def _format(error: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = _message(item, model)
        value = repr(item.get("input"))
        parts = message.split("; ")
        if item["loc"] and all(map(_RELATIVE_KEY.match, parts)):
            lines.extend(f"  - {key}.{part}" for part in parts)  # profiles.default + matrix.1.training.x = ...
        # A whole profile as "the bad value" says nothing; the message names the key inside it.
        elif len(value) <= 200:
            lines.append(f"  - {key} = {value}: {message}")
        else:
            lines.append(f"  - {key}: {message}")
    return "\n".join([f"{source} is not valid ({len(lines)} problem(s)):", *lines])


def updated(settings: BaseModel, changes: dict[str, Any], source: str) -> BaseModel:
    """``settings`` with ``changes`` (command-line overrides) applied and validated as params.yaml's values
    are: pydantic's ``model_copy(update=...)`` checks nothing."""
    try:
        return type(settings).model_validate({**settings.model_dump(), **changes})
    except ValidationError as error:
        raise ConfigError(_format(error, source, type(settings))) from None


def parse_params(data: Any, source: str = "params.yaml", profile: str | None = None) -> Params:
    """Validate an already-loaded params mapping; ``profile`` overrides the file's choice."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    if profile is not None:
        data = {**data, "profile": profile}
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format(error, source, Params)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML itself lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice: first on line {seen[key] + 1}, again on line "
                                f"{key_node.start_mark.line + 1}; keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_params(path: Path | str = "params.yaml", profile: str | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the repository root or pass --params)")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --params takes a params.yaml file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; --params takes a params.yaml file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(data, str(path), profile)
