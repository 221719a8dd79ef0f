"""The copy-memory task (Arjovsky, Shah & Bengio 2016, section 4.1).

Symbols 0-7 are data, 8 is the blank, 9 the delimiter. An input of length
T + 20 holds 10 random data symbols, T - 1 blanks, the delimiter, then 10
blanks; the target is T + 10 blanks followed by the 10 data symbols. Inputs are
one-hot. A memoryless network that outputs blanks and then guesses uniformly
scores a cross-entropy of 10 ln 8 / (T + 20) per step: the baseline. Here the
depth T is the delay between the data and its recall.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vgbench.data import DATASETS, DataShape, DatasetSpec, RawSplits
from vgbench.data.synthetic import SyntheticSettings, generate_splits, require_length
from vgbench.tasks import RECALL_LENGTH

DATA_SYMBOLS, BLANK, DELIMITER, ALPHABET = 8, 8, 9, 10


def memoryless_cross_entropy(delay: int) -> float:
    return RECALL_LENGTH * math.log(DATA_SYMBOLS) / (delay + 2 * RECALL_LENGTH)


def generate(count: int, delay: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (count, T + 20, 10) one-hot inputs; y: (count, T + 20) target symbols."""
    total = delay + 2 * RECALL_LENGTH
    data = torch.randint(0, DATA_SYMBOLS, (count, RECALL_LENGTH), generator=generator)
    inputs = torch.full((count, total), BLANK, dtype=torch.long)
    inputs[:, :RECALL_LENGTH] = data
    inputs[:, delay + RECALL_LENGTH - 1] = DELIMITER
    targets = torch.full((count, total), BLANK, dtype=torch.long)
    targets[:, -RECALL_LENGTH:] = data
    return F.one_hot(inputs, ALPHABET).float(), targets


def build(settings: SyntheticSettings, raw_dir: Path, length: int | None) -> RawSplits:
    delay = require_length("copy_memory", length)
    return RawSplits(*generate_splits("copy_memory", settings, delay, generate), num_classes=ALPHABET,
                     baseline_metric=memoryless_cross_entropy(delay))


def shape(settings: SyntheticSettings, length: int | None) -> DataShape:
    """(T + 20, 10) one-hot inputs; targets are one of the 10 symbols per step."""
    delay = require_length("copy_memory", length)
    return DataShape((delay + 2 * RECALL_LENGTH, ALPHABET), settings.train_size, settings.test_size,
                     num_classes=ALPHABET)


DATASETS.add("copy_memory", DatasetSpec(
    "copy_memory", "copy memory: recall 10 symbols after a delay T (cross-entropy; baseline 10 ln 8 / (T + 20))",
    SyntheticSettings, build, offline=True, task="copy_memory", kind="sequence", per_length=True,
    standardize=False, shape=shape, cites=("hochreiter1997long", "arjovsky2016unitary")))
