"""MNIST-1D (Greydanus & Kobak 2020): a 40-sample 1-D analogue of MNIST.

Generated offline by the ``mnist1d`` package's own generator with a fixed
seed, so every machine builds the same bytes. Small enough for CPUs, yet deep
MLPs on it show the vanishing gradient plainly.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

import torch
from pydantic import Field

from vgbench.data import DATASETS, DataShape, DatasetSettings, DatasetSpec, RawSplits


class MNIST1DSettings(DatasetSettings):
    num_samples: int = Field(5000, ge=100, description="train+test samples (the package's default is 5000)")
    seed: int = Field(42, ge=0, description="generator seed (42 is the published data set's)")


def build(settings: MNIST1DSettings, raw_dir: Path, length: int | None = None) -> RawSplits:
    """The published generator; ``length`` resamples each signal to that many steps
    (the package's ``final_seq_length``, 40 by default)."""
    from mnist1d.data import get_dataset_args, make_dataset  # here: it imports scipy and pyplot (~2 s)

    args = get_dataset_args()
    args.num_samples = settings.num_samples
    args.seed = settings.seed
    if length is not None:
        args.final_seq_length = length
    # make_dataset reseeds the global `random` and `np.random`; leave them as they were.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return RawSplits(
        train_x=torch.tensor(data["x"], dtype=torch.float32),
        train_y=torch.tensor(data["y"], dtype=torch.long),
        test_x=torch.tensor(data["x_test"], dtype=torch.float32),
        test_y=torch.tensor(data["y_test"], dtype=torch.long),
        num_classes=10,
    )


def shape(settings: MNIST1DSettings, length: int | None = None) -> DataShape:
    """What ``build`` gives, by the package's own arithmetic: ``make_dataset`` draws
    ``num_samples // classes`` signals per class and keeps ``int(total * train_split)`` for train."""
    from mnist1d.data import get_dataset_args, get_templates

    args = get_dataset_args()
    classes = len(get_templates()["y"])
    total = settings.num_samples // classes * classes
    train = int(total * args.train_split)
    return DataShape((length if length is not None else args.final_seq_length,), train, total - train,
                     num_classes=classes)


DATASETS.add("mnist1d", DatasetSpec("mnist1d", "MNIST-1D, 40-step signals, 10 classes", MNIST1DSettings,
                                    build, offline=True, shape=shape, cites=("greydanus2020scaling",)))
