"""The adding problem (Hochreiter & Schmidhuber 1997; the form of Le, Jaitly & Hinton 2015).

Each step t of a length-T sequence has two inputs: a value drawn from U[0, 1]
and a marker. Exactly two markers are 1: one at a uniform position in the first
half, one in the second half. The target is the sum of the two marked values.
Predicting the constant 1 scores the target's variance, 2 x 1/12 = 1/6: the
baseline a network must get well below, which it can only do by carrying the
first marked value across about T/2 steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vgbench.data import DATASETS, DataShape, DatasetSpec, RawSplits
from vgbench.data.synthetic import SyntheticSettings, generate_splits, require_length

CONSTANT_PREDICTOR_MSE = 1.0 / 6.0  # Var(U1 + U2) for independent U[0, 1]


def generate(count: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (count, length, 2) values and markers; y: (count,) sums of the marked values."""
    values = torch.rand(count, length, generator=generator)
    half = length // 2
    first = torch.randint(0, max(half, 1), (count,), generator=generator)
    second = half + torch.randint(0, length - half, (count,), generator=generator)
    markers = torch.zeros(count, length)
    rows = torch.arange(count)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), y


def build(settings: SyntheticSettings, raw_dir: Path, length: int | None) -> RawSplits:
    length = require_length("adding", length, minimum=2)
    return RawSplits(*generate_splits("adding", settings, length, generate), num_classes=0,
                     baseline_metric=CONSTANT_PREDICTOR_MSE)


def shape(settings: SyntheticSettings, length: int | None) -> DataShape:
    """(T, 2) inputs (value, marker), one real target."""
    length = require_length("adding", length, minimum=2)
    return DataShape((length, 2), settings.train_size, settings.test_size, num_classes=0)


DATASETS.add("adding", DatasetSpec(
    "adding", "adding problem: sum of two marked values in a length-T sequence (MSE; baseline 1/6)",
    SyntheticSettings, build, offline=True, task="regression", kind="sequence", per_length=True,
    standardize=False, shape=shape, cites=("hochreiter1997long", "le2015simple")))
