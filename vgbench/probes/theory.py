"""What mean-field signal-propagation theory predicts for the init probe's headline ratio.

Next to each cell's measured log10 ||dL/dh_first|| / ||dL/dh_last|| at initialization, the value
the theory of wide random networks gives for the same weights and input (Poole et al. 2016;
Schoenholz et al. 2017), so a reader sees where vanishing is what the init implies and where it
is not:

- **Fully connected stacks** ``h_l = phi(W_l h_{l-1} + b_l)``: the pre-activation variance runs
  forward, ``q_l = sigma_w,l^2 E[h_{l-1}^2] + sigma_b,l^2`` with ``sigma_w,l^2 = fan_in E[W_l^2]``
  (the drawn weights' own second moment) and ``E[h_l^2] = E_{z~N(0,q_l)}[phi(z)^2]``; going back
  through layer l scales ``E||dL/dh||^2`` by ``chi_l = sigma_w,l^2 E[phi'(z)^2]``. The predicted
  log10 ratio is half the sum of log10 chi_l over the layers between the first and the last
  probed state. (A small-init sigmoid stack of width 64: chi = 64 * 1e-4 * 0.25^2 per layer,
  -1.70 per layer in the log10 ratio, -32.28 over 19.)
- **Vanilla RNNs** (tanh or sigmoid units) whose drawn W_hh has a spectral radius below 1: a step
  back multiplies the gradient by ``diag(phi'(z)) W_hh^T``; its rate is that spectral radius times
  ``sqrt(E[phi'(z)^2])`` at the stationary pre-activation variance, so the ratio over T steps is
  (T - 1) times the log10 of that rate. Where the probe's loss reads the last R steps (copy
  memory's recall, ``Task.probed_steps``), the first state gathers R terms, from T - R to T - 1
  steps back, each with a direct gradient as large as the last state's:
  ``(T - R) log10 rate + 1/2 log10 sum_{i<R} rate^(2i)`` (R = 1 gives the formula above). At a
  radius of 1 or more (orthogonal, identity or Xavier recurrent weights) the tied weights and
  saturating states put the net outside this linear regime: not predicted.
- **Not predicted** (a reason instead of a number): normalization, skips, gates and convolutions
  (the stacks the theory above does not describe), pretrained weights (not random), and ReLU
  units in an RNN (a unit's on/off pattern repeats from step to step, where the theory assumes
  independent steps).

Gaussian expectations use the midpoint rule on a fine grid whose cells meet at 0 (where a
rectifier's derivative jumps), and the activation's own module with autograd for phi'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vgbench.activations import ACTIVATIONS

SOURCE = "mean field (Poole et al. 2016; Schoenholz et al. 2017)"
CITES = ("poole2016exponential", "schoenholz2017deep")  # keys in vgbench/references.bib
# The midpoint rule on cells that meet at 0 (an even number of them), so the jump of a rectifier's
# derivative there falls between two cells and costs no accuracy.
GRID_SDS, GRID_CELLS = 12.0, 4_000
STATIONARY_ITERATIONS, STATIONARY_TOLERANCE = 500, 1e-9  # the RNN's fixed-point iteration for q
# A float32 orthogonal matrix has spectral radius 1 only to about its width times float32's epsilon (1e-7 at
# widths 32-256, measured); rounding puts it above 1 on one CPU and below on another. With a tolerance of
# 1e-9 the orthogonal RNN rows were "not predicted" on the AVX2 VMs and predicted on an AVX-512 one.
UNIT_RADIUS_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Chain:
    """A fully connected stack; state l is the output of ``layers[l]``; probed from ``first_probed``."""

    layers: list[tuple[torch.Tensor, torch.Tensor | None]]  # (W [K, out, in], b [K, out] or None)
    activation: str
    first_probed: int = 0


@dataclass(frozen=True)
class Recurrent:
    """A vanilla RNN ``h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (weights ``[K, ...]``)."""

    weight_ih: torch.Tensor
    weight_hh: torch.Tensor
    bias: torch.Tensor  # b_ih + b_hh, [K, H]
    activation: str


@dataclass(frozen=True)
class Prediction:
    log10_first_last: list[float]  # per model; NaN where not predicted
    notes: list[str]  # per model: SOURCE, or "not predicted: why"


def not_predicted(why: str, models: int) -> Prediction:
    return Prediction([math.nan] * models, [f"not predicted: {why}"] * models)


def gaussian_moments(activation: str, q: float) -> tuple[float, float]:
    """(E[phi(z)^2], E[phi'(z)^2]) for z ~ N(0, q), by the midpoint rule over +-12 standard deviations."""
    m2, slope2 = gaussian_moments_of(activation, torch.tensor([q], dtype=torch.float64))
    return float(m2[0]), float(slope2[0])


def gaussian_moments_of(activation: str, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gaussian_moments`` for a [K] tensor of variances at once (one per model of a group)."""
    step = 2 * GRID_SDS / GRID_CELLS
    centres = torch.arange(GRID_CELLS, dtype=torch.float64) * step - GRID_SDS + step / 2
    z = (centres * q.clamp_min(1e-300).sqrt()[:, None]).requires_grad_(True)  # [K, cells]
    out = ACTIVATIONS[activation].make()(z)
    (slope,) = torch.autograd.grad(out.sum(), z)
    weight = step * torch.exp(-0.5 * centres ** 2) / math.sqrt(2 * math.pi)
    return (weight * out.detach() ** 2).sum(dim=1), (weight * slope ** 2).sum(dim=1)


def _sigma2(weight: torch.Tensor) -> torch.Tensor:
    """fan_in * E[W^2] per model, from the drawn weights ``[K, out, in]``."""
    w = weight.detach().double()
    return (w.shape[-1] * w.pow(2).mean(dim=(1, 2))).cpu()


def _bias2(bias: torch.Tensor | None, models: int) -> torch.Tensor:
    if bias is None:
        return torch.zeros(models, dtype=torch.float64)
    return bias.detach().double().pow(2).mean(dim=1).cpu()


def chain_log10_ratio(chain: Chain, input_m2: float) -> list[float]:
    """Per model: the predicted log10 ||dL/dh_first probed|| / ||dL/dh_last||."""
    models = chain.layers[0][0].shape[0]
    m2 = torch.full((models,), input_m2, dtype=torch.float64)
    log10_chi = []
    for weight, bias in chain.layers:  # every model of the group at once
        sigma2 = _sigma2(weight)
        m2, slope2 = gaussian_moments_of(chain.activation, sigma2 * m2 + _bias2(bias, models))
        log10_chi.append(torch.log10(sigma2 * slope2))  # -inf where the product is 0
    between = log10_chi[chain.first_probed + 1:]  # the layers between the first and the last probed state
    return (0.5 * torch.stack(between).sum(dim=0)).tolist() if between else [0.0] * models


def recurrent_log10_ratio(net: Recurrent, input_m2: float, steps: int, scored_steps: int = 1) -> Prediction:
    """Per model, where the spectral radius of W_hh is below 1, with rate = that radius times
    sqrt(E[phi'^2]) at the stationary variance: (T - 1) log10(rate) for a loss on the last step; for a loss
    on the last R steps, the sum over the R paths back to the first state (module docstring)."""
    values, notes = [], []
    sigma2_hh, sigma2_ih = _sigma2(net.weight_hh), _sigma2(net.weight_ih)
    bias2 = _bias2(net.bias, net.weight_hh.shape[0])
    for k in range(net.weight_hh.shape[0]):
        radius = float(torch.linalg.eigvals(net.weight_hh[k].detach().double()).abs().max())
        if radius >= 1 - UNIT_RADIUS_TOLERANCE:  # an orthogonal matrix: 1 up to rounding
            values.append(math.nan)
            notes.append(f"not predicted: recurrent spectral radius {radius:.2f} >= 1 (outside the linear regime)")
            continue
        q, m2 = -1.0, 0.0
        for _ in range(STATIONARY_ITERATIONS):
            previous, q = q, float(sigma2_hh[k]) * m2 + float(sigma2_ih[k]) * input_m2 + float(bias2[k])
            m2, slope2 = gaussian_moments(net.activation, q)
            if abs(q - previous) <= STATIONARY_TOLERANCE * max(q, 1e-30):
                break
        rate = radius * math.sqrt(slope2)
        scored = min(scored_steps, steps)
        paths = sum(rate ** (2 * i) for i in range(scored))  # >= 1: the nearest scored step's path
        values.append((steps - scored) * math.log10(rate) + 0.5 * math.log10(paths) if rate > 0
                      else -math.inf if scored < steps else 0.0)
        notes.append(SOURCE)
    return Prediction(values, notes)


def predict(structure: Chain | Recurrent | str, x: torch.Tensor, models: int,
            pretrained: bool = False, scored_steps: int = 1) -> Prediction:
    """The prediction for a network's ``mean_field()`` structure (a reason string where the theory
    does not apply) on the init batch ``x`` (``[N, ...]``; an RNN's ``[N, T, features]``, whose probe
    loss reads its last ``scored_steps`` outputs)."""
    if pretrained:
        return not_predicted("pretrained weights are not random", models)
    if isinstance(structure, str):
        return not_predicted(structure, models)
    input_m2 = float(x.detach().double().pow(2).mean())
    if isinstance(structure, Chain):
        return Prediction(chain_log10_ratio(structure, input_m2), [SOURCE] * models)
    return recurrent_log10_ratio(structure, input_m2, steps=x.shape[1], scored_steps=scored_steps)
