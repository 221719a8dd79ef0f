"""Classification data sets read one value per time step, plain or permuted.

Sequential MNIST-1D resamples each MNIST-1D signal to T steps (the generator's
``final_seq_length``), so its length is a free axis; pixel MNIST reads the 784
pixels of a digit in scan order (Le, Jaitly & Hinton 2015). The permuted
variants shuffle the time steps with one fixed permutation, which spreads the
informative pixels over the whole sequence and makes long-range memory
necessary.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field

from vgbench.data import DATASETS, DataShape, DatasetSettings, DatasetSpec, RawSplits
from vgbench.data import mnist1d, torchvision_sets
from vgbench.data.synthetic import require_length


class PermutationSettings(DatasetSettings):
    permutation_seed: int = Field(0, ge=0, description="seed of the fixed time-step permutation (permuted variants)")


class SequentialMNIST1DSettings(mnist1d.MNIST1DSettings, PermutationSettings):
    pass


def as_sequence(raw: RawSplits, permutation_seed: int | None) -> RawSplits:
    """(N, ...) inputs to (N, steps, 1), the steps permuted when a seed is given."""
    train_x, test_x = raw.train_x.flatten(1), raw.test_x.flatten(1)
    if permutation_seed is not None:
        order = torch.randperm(train_x.shape[1], generator=torch.Generator().manual_seed(permutation_seed))
        train_x, test_x = train_x[:, order], test_x[:, order]
    return RawSplits(train_x.unsqueeze(-1), raw.train_y, test_x.unsqueeze(-1), raw.test_y, raw.num_classes)


def _mnist1d_builder(permuted: bool):
    def build(settings: SequentialMNIST1DSettings, raw_dir: Path, length: int | None) -> RawSplits:
        raw = mnist1d.build(settings, raw_dir, require_length("seq_mnist1d", length, minimum=2))
        return as_sequence(raw, settings.permutation_seed if permuted else None)
    return build


def _pixel_builder(permuted: bool):
    download = torchvision_sets.BUILDERS["mnist"]

    def build(settings: PermutationSettings, raw_dir: Path, length: int | None) -> RawSplits:
        return as_sequence(download(settings, raw_dir), settings.permutation_seed if permuted else None)
    return build


def sequence_shape(flat: DataShape) -> DataShape:
    """The shape ``as_sequence`` gives: every sample's values as steps of one feature."""
    return DataShape((math.prod(flat.input_shape), 1), flat.train_size, flat.test_size, flat.num_classes)


def _mnist1d_shape(settings: SequentialMNIST1DSettings, length: int | None) -> DataShape:
    return sequence_shape(mnist1d.shape(settings, require_length("seq_mnist1d", length, minimum=2)))


def _pixel_shape(settings: PermutationSettings, length: int | None) -> DataShape:
    return sequence_shape(torchvision_sets.SHAPES["mnist"](settings, None))


for _permuted in (False, True):
    _prefix, _how = ("perm_", "permuted ") if _permuted else ("", "")
    DATASETS.add(f"{_prefix}seq_mnist1d", DatasetSpec(
        f"{_prefix}seq_mnist1d", f"{_how}sequential MNIST-1D: one value per step, T steps, 10 classes",
        SequentialMNIST1DSettings, _mnist1d_builder(_permuted), offline=True, kind="sequence", per_length=True,
        shape=_mnist1d_shape, cites=("greydanus2020scaling", "le2015simple")))
    DATASETS.add(f"{_prefix}seq_mnist", DatasetSpec(
        f"{_prefix}seq_mnist", f"{_how}pixel-by-pixel MNIST: 784 steps, 10 classes (torchvision download)",
        PermutationSettings, _pixel_builder(_permuted), offline=False, kind="sequence", length=784,
        shape=_pixel_shape, cites=("lecun1998gradient", "le2015simple")))
