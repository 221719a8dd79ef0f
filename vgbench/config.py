"""params.yaml, validated before any work starts.

``load_params`` returns a ``Params`` whose ``active`` profile is the one named by
the top-level ``profile`` key. Every profile is checked (not only the active
one), so a broken ``paper`` profile is caught on a laptop. Errors are collected
into one ``ConfigError`` that names the file, the key, the bad value and what
is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vgbench.data import DATASETS
from vgbench.models import FAMILIES
from vgbench.remedies import REMEDIES, skip_reason


class ConfigError(ValueError):
    """params.yaml is not valid; the message lists every problem found."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known(registry, name: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {registry.axis} {name!r}; allowed: {registry.names()}")
    return name


class MatrixBlock(_Strict):
    """One family's slice of the matrix: remedies x depths on one data set."""

    family: str
    dataset: str
    remedies: list[str] = Field(min_length=1)
    depths: list[int] = Field(min_length=1, description="hidden layers (or sequence lengths)")
    model: dict[str, Any] = Field(default_factory=dict, description="the family's own hyperparameters")

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
        return value

    @model_validator(mode="after")
    def _pairs_and_model(self) -> "MatrixBlock":
        reasons = [r for r in (skip_reason(self.family, name) for name in self.remedies) if r]
        if reasons:
            raise ValueError("; ".join(reasons))
        FAMILIES.get(self.family).hparams.model_validate(self.model)
        return self

    def family_hparams(self) -> BaseModel:
        return FAMILIES.get(self.family).hparams.model_validate(self.model)


class TrainingSettings(_Strict):
    max_epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="per process, as in Lightning")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(0.0, ge=0)
    target_accuracy: float = Field(0.5, gt=0, le=1, description="for 'epochs to target'")


class TrainerSettings(_Strict):
    """Passed to ``lightning.Trainer`` as they are."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: int = Field(1, gt=0)
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    deterministic: bool = True

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
    trainable_margin: float = Field(0.1, gt=0, lt=1, description="trainable: test accuracy >= chance + margin")


class Profile(_Strict):
    description: str
    datasets: dict[str, dict[str, Any]]
    matrix: list[MatrixBlock] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    learning_rates: list[float] = Field(min_length=1, description="the fair LR grid, the same for every cell")
    training: TrainingSettings
    trainer: TrainerSettings = TrainerSettings()
    probes: ProbeSettings

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, settings in value.items():
            _known(DATASETS, name)
            DATASETS.get(name).settings.model_validate(settings)
        return value

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        bad = [lr for lr in value if not lr > 0]
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _datasets_configured(self) -> "Profile":
        missing = sorted({b.dataset for b in self.matrix} - set(self.datasets))
        if missing:
            raise ValueError(f"matrix uses data sets {missing} that are not configured under 'datasets' "
                             f"(configured: {sorted(self.datasets)})")
        return self

    def dataset_settings(self, name: str):
        return DATASETS.get(name).settings.model_validate(self.datasets[name])


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


def _format(error: ValidationError, source: str) -> str:
    lines = [f"{source} is not valid ({error.error_count()} problem(s)):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {key} = {item.get('input')!r}: {message}")
    return "\n".join(lines)


def parse_params(data: Any, source: str = "params.yaml", profile: str | None = None) -> Params:
    """Validate an already-loaded params mapping; ``profile`` overrides the file's choice."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    if profile is not None:
        data = {**data, "profile": profile}
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format(error, source)) from None


def load_params(path: Path | str = "params.yaml", profile: str | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the repository root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(data, str(path), profile)
