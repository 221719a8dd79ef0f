"""Putting real-valued inputs where Bernoulli visible units can read them.

A Bernoulli visible unit models a probability, so its data must lie in [0, 1]
(Hinton 2010, section 13: real values in [0, 1] are read as probabilities,
the way MNIST grey levels are). The alternative for real-valued inputs is a
Gaussian first layer on standardized data (``gaussian_first=True`` in
``pretrain_stack``); the pipeline chooses between the two.
"""

from __future__ import annotations

import torch

# A feature that is constant in the training set has no range to divide by;
# it maps to 0 (its scaled value is "at the training minimum").
_MIN_RANGE = 1e-12


def unit_interval_scaling(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature (minimum, range) of the training split, samples flattened to (N, features)."""
    train = x_train.flatten(1)
    low = train.min(dim=0).values
    return low, (train.max(dim=0).values - low).clamp_min(_MIN_RANGE)


def scale_to_unit_interval(x_train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Min-max scale every feature to [0, 1] with the *training* minimum and maximum.

    Returns ``(x_train_scaled, *others_scaled)``. Only the training split sets
    the scale, so validation and test data see no information of their own;
    their values outside the training range are clamped to [0, 1]. Samples are
    flattened to (N, features), the view a DeepMLP reads.
    """
    low, span = unit_interval_scaling(x_train)
    return tuple(((x.flatten(1) - low) / span).clamp(0.0, 1.0) for x in (x_train, *others))
