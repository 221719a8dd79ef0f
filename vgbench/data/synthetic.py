"""What the generated sequence tasks share: their settings and seeded generators.

Each split of each length gets its own generator seed, derived from the data
set's name, the settings' seed, the length and the split, so that train and
test never share a sequence by construction of the seeds and any length can
be regenerated alone (DomainBed's Debug data sets, minGPT's AdditionDataset).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from pydantic import Field

from vgbench.data import DatasetSettings


class SyntheticSettings(DatasetSettings):
    train_size: int = Field(10000, ge=10, description="sequences generated for train (validation is carved from it)")
    test_size: int = Field(2000, ge=10, description="sequences generated for test")
    seed: int = Field(0, ge=0, description="generator seed")


def split_generator(name: str, seed: int, length: int, split: str) -> torch.Generator:
    digest = hashlib.sha256(f"{name}:{seed}:{length}:{split}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def generate_splits(name: str, settings: SyntheticSettings, length: int,
                    generate: Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y) from ``generate(count, length, generator)``, each split seeded apart."""
    train = generate(settings.train_size, length, split_generator(name, settings.seed, length, "train"))
    test = generate(settings.test_size, length, split_generator(name, settings.seed, length, "test"))
    return (*train, *test)


def require_length(name: str, length: int | None, minimum: int = 1) -> int:
    if length is None or length < minimum:
        raise ValueError(f"data set {name!r} is generated per sequence length; got length {length!r} "
                         f"(need an integer >= {minimum})")
    return length
