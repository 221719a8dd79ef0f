"""The probe interface between a model and the gradient-flow probes.

A family's forward pass calls ``self.taps.hidden(index, h)`` on each hidden
state h_l, given models first (``[K, N, ...]``: the K models of a cell group,
vgbench/models/stacked.py) (a layer's output, or an RNN's state at time t) and
``self.taps.preactivation(index, z)`` on the input of its nonlinearity; gated
layers (highway) also call ``self.taps.gate(index, t)`` on their transform
gate. While the taps are disarmed these are identity functions costing one
attribute check; when armed (on probe steps only) they keep cheap statistics
and hook the tensor so that dL/dh_l is captured during backward. Nothing about the
model has to be rewritten, and no family-specific code lives in the probes.

Statistics are kept as sums over the batch, one per model (tensors of shape
``[K]``, so a probe step costs a few reductions, not K of them), so that DDP
ranks can add them up before they are turned into norms and fractions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from vgbench.activations import ACTIVATIONS

# A bounded unit is saturated when its output is within this margin of a bound (sigmoid: 0 or 1,
# tanh: -1 or 1; ActivationSpec.bounds); its local derivative is then below ~4% (sigmoid) or ~2% (tanh)
# of its maximum.
SATURATION_MARGIN = 0.01


Sums = torch.Tensor  # float64, one value per model: shape [K]


@dataclass
class TapRecord:
    """Per-layer sums for one probed step, keyed by layer; each value holds one sum per model."""

    grad_sq_sum: dict[int, Sums] = field(default_factory=dict)      # sum_b ||dL/dh_l||^2
    hidden_sum: dict[int, Sums] = field(default_factory=dict)       # sum of h
    hidden_sq_sum: dict[int, Sums] = field(default_factory=dict)    # sum of h^2
    hidden_count: dict[int, int] = field(default_factory=dict)      # elements of h, per model
    saturated_count: dict[int, Sums] = field(default_factory=dict)  # saturated unit-samples
    dead_units: dict[int, Sums] = field(default_factory=dict)       # units off for every sample
    units: dict[int, int] = field(default_factory=dict)             # units in the layer
    elements: dict[int, int] = field(default_factory=dict)          # unit-samples in the layer
    gate_sum: dict[int, Sums] = field(default_factory=dict)         # sum of transform-gate values
    gate_count: dict[int, int] = field(default_factory=dict)        # gate unit-samples, per model


class Taps:
    """Armed by the probe callback for one step at a time."""

    def __init__(self, activation: str):
        self.activation = activation
        self.spec = ACTIVATIONS[activation]
        # A bounded unit's saturating inputs as (middle, half width): saturated where |z - middle| > half width.
        self.saturation = None
        if self.spec.bounds is not None:
            low, high = self.spec.saturating_inputs(SATURATION_MARGIN)
            self.saturation = ((low + high) / 2 if abs(low + high) > 1e-9 * (high - low) else 0.0, (high - low) / 2)
        self.armed = False
        self.record = TapRecord()
        self.seconds = 0.0  # time spent in armed taps, for the probe-overhead figure

    def arm(self) -> None:
        self.record = TapRecord()
        self.armed = True

    def disarm(self) -> TapRecord:
        self.armed = False
        return self.record

    def hidden(self, index: int, h: torch.Tensor) -> torch.Tensor:
        if not self.armed:
            return h
        start = time.perf_counter()
        with torch.no_grad():
            hd = h.detach().double().flatten(1)
            self.record.hidden_sum[index] = hd.sum(dim=1)
            self.record.hidden_sq_sum[index] = hd.pow(2).sum(dim=1)
            self.record.hidden_count[index] = hd.shape[1]
        if h.requires_grad:
            h.register_hook(lambda grad, i=index: self._store_grad(i, grad))
        self.seconds += time.perf_counter() - start
        return h

    def _store_grad(self, index: int, grad: torch.Tensor) -> None:
        if not self.armed:  # a second backward through the same graph after disarm (the init probe's)
            return
        start = time.perf_counter()
        self.record.grad_sq_sum[index] = grad.detach().double().flatten(1).pow(2).sum(dim=1)
        self.seconds += time.perf_counter() - start

    def gate(self, index: int, t: torch.Tensor) -> torch.Tensor:
        """Mean opening of a transform gate in (0, 1): near 0 the layer carries its input
        through (Srivastava et al. 2015), near 1 it transforms like a plain layer."""
        if not self.armed:
            return t
        start = time.perf_counter()
        with torch.no_grad():
            td = t.detach().double().flatten(1)
            self.record.gate_sum[index] = td.sum(dim=1)
            self.record.gate_count[index] = td.shape[1]
        self.seconds += time.perf_counter() - start
        return t

    def preactivation(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """Saturation (bounded units) or death (ReLU) from the input z of the nonlinearity.

        Both are read off z itself, without a copy: a bounded unit is saturated where z lies
        outside the interval that maps to within SATURATION_MARGIN of its bounds, and a unit that
        can die (``ActivationSpec.dies``) is dead where its largest input over the batch (and
        positions) is <= 0."""
        if not self.armed:
            return z
        start = time.perf_counter()
        with torch.no_grad():
            zd = z.detach()  # [K, N, units, *positions]
            self.record.units[index] = zd.shape[2]
            self.record.elements[index] = zd[0].numel()
            if self.saturation is not None:
                middle, half_width = self.saturation
                outside = (zd - middle).abs_() if middle else zd.abs()
                self.record.saturated_count[index] = (outside > half_width).flatten(1).sum(dim=1).double()
            elif self.spec.dies:
                largest = zd.amax(dim=(1, *range(3, zd.dim())))  # [K, units]
                self.record.dead_units[index] = (largest <= 0).sum(dim=1).double()
        self.seconds += time.perf_counter() - start
        return z


class ProbedModel(nn.Module):
    """Base class of every family's network: ``models`` stacked models (K), read and written models first.

    ``forward`` maps ``[K, N, *sample]`` to ``[K, N, *output]``. Subclasses call
    ``self.taps.hidden`` / ``self.taps.preactivation`` in forward and list their
    main weight matrices (``[K, ...]``), input side first, in ``probe_weights``
    (one per probed layer, used for the weight-gradient profile).
    """

    # One probe weight per probed state, input side first: their gradient norms form a depth profile too.
    # Not so for an RNN, whose two matrices are shared by every time step.
    weights_per_state = True

    def __init__(self, activation: str, models: int):
        super().__init__()
        self.taps = Taps(activation)
        self.models = models

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def mean_field(self):
        """The structure mean-field theory predicts the init ratio for (``vgbench.probes.theory.Chain`` or
        ``Recurrent``), or why it does not apply. Families without a prediction keep this default."""
        return f"{type(self).__name__} (convolutions and blocks are outside the fully connected theory)"
