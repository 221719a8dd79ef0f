"""Training-time data augmentation, applied to each training batch on its device.

``pad_crop_flip`` is the standard CIFAR augmentation of He, Zhang, Ren & Sun
2016 (section 4.2, after Lee et al. 2015): pad 4 pixels on each side, take a
random crop of the original size, flip horizontally with probability 1/2.
Inputs are already standardized, so the zero padding is the mean pixel, as in
the paper (which pads after per-pixel mean subtraction). Randomness comes from
the generator passed in: the training module keeps one per model, seeded by
the model's cell seed, so a cell's augmentation does not depend on its group.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

PAD = 4


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): a random 4-pixel shift and a random horizontal flip per sample."""
    if x.ndim != 4:
        raise ValueError(f"pad_crop_flip needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, height, width = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None] = {
    "none": None,
    "pad_crop_flip": pad_crop_flip,
}
