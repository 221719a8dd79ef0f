"""The data-set axis.

Each data set is one module registering a ``DatasetSpec``: its settings model
(validated with params.yaml) and a ``build`` that returns the raw train and
test splits. ``vgbench.data.store`` turns those into the stored layout under
``data/<name>/`` (train/validation/test tensors, train-only standardization
statistics, a manifest with sha256 of every file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

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
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    summary: str
    settings: type[DatasetSettings]
    build: Callable[[DatasetSettings, Path], RawSplits]  # (settings, raw download dir)
    offline: bool  # generated locally, no download needed


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def offline_names() -> list[str]:
    return [name for name, spec in DATASETS.items() if spec.offline]


# Importing a data-set module registers it (one line per data set).
from vgbench.data import mnist1d, torchvision_sets  # noqa: E402,F401
