"""The data-set axis.

Each data set is one module registering a ``DatasetSpec``: its settings model
(validated with params.yaml), its task (``vgbench.tasks``), the kind of input
it gives (a vector, an image, a sequence) and a ``build`` that returns the raw
train and test splits with the task's closed-form baseline metric. Its
``shape`` says the same split sizes and sample shape from the settings alone,
without building or downloading anything (``vgbench plan`` reads it).
``vgbench.data.store`` turns those into the stored layout under
``data/<name>/`` (train/validation/test tensors, train-only standardization
statistics, a manifest with sha256 of every file).

Synthetic sequence tasks are generated per sequence length (``per_length``):
for the recurrent family the depth axis *is* the length, so each length the
matrix asks for is its own stored folder ``data/<name>/T<length>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from vgbench.references import check_keys
from vgbench.registry import Registry


class DatasetSettings(BaseModel):
    """Settings every data set has; a data set may add its own fields."""

    model_config = ConfigDict(extra="forbid")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of train held out")
    split_seed: int = Field(0, ge=0, description="seed of the train/validation split")


@dataclass(frozen=True)
class RawSplits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int  # 0 for a real-valued target
    baseline_metric: float | None = None  # None: chance accuracy 1 / num_classes


def validation_count(train_size: int, fraction: float) -> int:
    """How many of the raw train split's samples become the validation split (store.split_validation)."""
    return round(train_size * fraction)


@dataclass(frozen=True)
class DataShape:
    """What ``build`` would give, known from the settings alone (no data on disk needed)."""

    input_shape: tuple[int, ...]  # one sample: (features,), (C, H, W) or (time, features)
    train_size: int  # the raw train split, before ``store.split_validation`` carves validation off it
    test_size: int
    num_classes: int  # 0 for a real-valued target

    def split_sizes(self, validation_fraction: float) -> dict[str, int]:
        """Stored train/validation/test sizes, carved exactly as ``store.split_validation`` does."""
        validation = validation_count(self.train_size, validation_fraction)
        return {"train": self.train_size - validation, "validation": validation, "test": self.test_size}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    summary: str
    settings: type[DatasetSettings]
    build: Callable[[DatasetSettings, Path, int | None], RawSplits]  # (settings, raw dir, length)
    offline: bool  # generated locally, no download needed
    task: str = "classification"  # a name in vgbench.tasks.TASKS
    kind: str = "vector"  # vgbench.models.INPUT_KINDS: vector, image or sequence (time, features)
    per_length: bool = False  # generated for each sequence length the matrix asks for
    length: int | None = None  # the fixed sequence length of a sequence data set that is not per_length
    standardize: bool = True  # inputs scaled with train mean/std (not for symbolic task inputs)
    shape: Callable[[DatasetSettings, int | None], DataShape] | None = None  # (settings, length), no I/O
    cites: tuple[str, ...] = ()  # BibTeX keys in vgbench/references.bib: where the data set or task comes from

    def __post_init__(self):
        check_keys(self.cites, f"data set {self.name!r}")

    def length_for(self, depth: int) -> int | None:
        """The stored sequence length a cell of this depth reads (None: one stored copy for all depths)."""
        return depth if self.per_length else None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def offline_names() -> list[str]:
    return [name for name, spec in DATASETS.items() if spec.offline]


# Importing a data-set module registers it (one line per data set).
from vgbench.data import adding, copy_memory, mnist1d, sequential, torchvision_sets  # noqa: E402,F401
