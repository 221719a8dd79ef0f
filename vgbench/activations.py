"""The activation axis of the recipe: each unit's module, init gain, and what the probes count for it.

Its own module, below both ``vgbench.models`` and ``vgbench.probes``: the inits (models/recipe.py), the
taps (probes/taps.py) and the mean-field theory (probes/theory.py) all read it, and the model package
imports the taps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

@dataclass(frozen=True)
class ActivationSpec:
    """Everything vgbench needs to know about one activation, in one place (timm's ``create_act``).

    ``gain`` names the nonlinearity for ``nn.init.calculate_gain`` (the fan-in inits' gain);
    ``bounds`` is the output range of a saturating unit (the probes count units within 0.01 of a
    bound, ``taps.SATURATION_MARGIN``), None for the others; ``rectifier`` marks the piecewise units
    (ReLU and its smooth or leaky kin), ``dies`` those among them that pass no gradient at all below 0
    (ReLU alone), and so can die: off for every input. Leaky ReLU, ELU and SELU keep a slope there
    (0.01, alpha * e^z, lambda * alpha * e^z), so a unit with every input negative still learns.
    """

    make: Callable[[], nn.Module]
    gain: str
    bounds: tuple[float, float] | None = None
    rectifier: bool = False
    dies: bool = False

    @functools.cache
    def saturating_inputs(self, margin: float) -> tuple[float, float]:
        """(z_low, z_high): the unit's output is within ``margin`` of a bound exactly where its input z
        is below z_low or above z_high. Found once by bisection in float64 (every bounded unit here is
        increasing), so the probes compare inputs instead of running the nonlinearity again."""
        if self.bounds is None:
            raise ValueError(f"{type(self.make()).__name__}: not a saturating unit (no bounds)")
        unit, (low, high) = self.make(), self.bounds

        def crossing(level: float) -> float:
            below, above = -1e3, 1e3  # unit(below) < level < unit(above)
            for _ in range(200):
                middle = (below + above) / 2
                if float(unit(torch.tensor(middle, dtype=torch.float64))) < level:
                    below = middle
                else:
                    above = middle
            return below

        return crossing(low + margin), crossing(high - margin)


ACTIVATIONS: dict[str, ActivationSpec] = {
    "sigmoid": ActivationSpec(nn.Sigmoid, "sigmoid", bounds=(0.0, 1.0)),
    "tanh": ActivationSpec(nn.Tanh, "tanh", bounds=(-1.0, 1.0)),
    "relu": ActivationSpec(nn.ReLU, "relu", rectifier=True, dies=True),
    "leaky_relu": ActivationSpec(lambda: nn.LeakyReLU(0.01), "leaky_relu", rectifier=True),
    "elu": ActivationSpec(nn.ELU, "relu", rectifier=True),  # torch has no ELU gain; ReLU's is the usual choice
    "selu": ActivationSpec(nn.SELU, "selu", rectifier=True),
}
