"""In-memory data sets batched by tensor slicing.

``IndexBatchSampler`` yields whole index batches; ``TensorSplit[indices]`` slices
the tensors once per batch, so there is no per-sample ``__getitem__`` and no
collate. Under DDP each rank takes its own slice of every global batch (we
shard here and tell Lightning ``use_distributed_sampler=False``); the order is
a function of (seed, epoch) alone, so it is the same on every rank and every
rerun. A cell group's K models each read their own order (their own seed):
``GroupSampler`` stacks the K index batches, so a batch is ``[K, B, ...]``.
The tensors may live on a GPU (``InMemoryData`` puts them there once per group):
the batches are then sliced on the device.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


class TensorSplit(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]


class IndexBatchSampler(Sampler[torch.Tensor]):
    """Index batches of ``batch_size`` per rank; a last chunk too small to give every rank
    ``least_per_rank`` samples is left out (training asks for 2: batch norm has no statistics of one
    sample, and torch refuses to train on them; evaluation takes every sample, with 1)."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, least_per_rank: int = 1):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.least = rank, world_size, least_per_rank * world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.size, global_batch)
        return full + (1 if rest >= self.least else 0)

    def __iter__(self):
        order = self._order()
        global_batch = self.batch_size * self.world_size
        for start in range(0, self.size, global_batch):
            chunk = order[start:start + global_batch]
            if len(chunk) < self.least:
                break  # too few samples left to give every rank its least share
            # Contiguous shares differing by at most one sample: every sample is used (in training,
            # all but fewer than 2 per rank), and in evaluation ranks add up counts rather than means.
            yield torch.tensor_split(chunk, self.world_size)[self.rank]


class GroupSampler:
    """One ``IndexBatchSampler`` per model (seed); yields ``[K, B]`` index batches."""

    def __init__(self, samplers: list[IndexBatchSampler]):
        self.samplers = samplers

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samplers[0])  # same size and batch size for every model

    def __iter__(self):
        for batches in zip(*self.samplers):
            yield torch.stack(batches)


class TensorBatches:
    """A sized iterable of (x, y) batches: what a DataLoader would give, without its per-batch cost.

    Lightning accepts any sized iterable; it calls ``sampler.set_epoch`` through the
    ``sampler`` attribute as it does for a DataLoader. Where the split lives on a GPU,
    an epoch's index batches cross to it in one copy: a copy per step from pageable
    memory would make the host wait for the GPU at every step.
    """

    batch_sampler = None  # read by Lightning

    def __init__(self, split: TensorSplit, sampler: GroupSampler):
        self.split, self.sampler = split, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        batches = list(self.sampler)
        device = self.split.y.device
        if device.type != "cpu" and batches:
            moved = torch.cat([b.flatten() for b in batches]).to(device).split([b.numel() for b in batches])
            batches = [m.view(b.shape) for m, b in zip(moved, batches)]
        for indices in batches:
            yield self.split[indices]


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seeds: list[int],
           rank: int = 0, world_size: int = 1, least_per_rank: int = 1) -> TensorBatches:
    """Batches ``[K, B, ...]`` of ``x`` and ``y`` for the models of ``seeds``, each in its own order."""
    sampler = GroupSampler([IndexBatchSampler(len(y), batch_size, shuffle, seed, rank, world_size, least_per_rank)
                            for seed in seeds])
    return TensorBatches(TensorSplit(x, y), sampler)
