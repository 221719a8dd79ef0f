"""Layers that hold K independent models at once: every parameter has a leading model dimension.

A cell group (the seeds and learning rates of one leaderboard row) trains as one
network whose parameters are ``[K, ...]`` tensors; model k only ever touches
slice k. On CPU the per-slice arithmetic is bit-identical to a group of one
(``torch.baddbmm`` multiplies each slice with the same GEMM; convolutions and
batch normalization run one call per model, because one grouped call over K
models would round with K; ``tests/test_stacking.py`` holds them to it), so a
cell's result does not depend on which cells shared its group.
K = 1 runs the same code. This is HFTA's idea (Wang et al., MLSys 2021) without
its code: fuse the models, not the processes.

Tensors are models first: feature layers read ``[K, N, C]``, convolutions
``[K, N, C, *spatial]``. Where one kernel for all K models would not be
bit-identical per model, or not faster (convolutions on CPU), a layer calls
the kernel once per model instead: the stacking then still saves the
per-step cost of everything around the kernels (Lightning, optimizer, data).
A family may offer the grouped kernels as an option for GPUs (the resnet
family's ``grouped_kernels``): its cells' numbers are then those of their group.

Every layer keeps an ``init_model(k)`` that initializes its slice k with
torch's global generator; ``initialize(model, seeds)`` seeds it per model, so a
model's weights are a function of its own seed alone.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

WeightInit = Callable[[torch.Tensor], None]  # fills one model's weight slice in place


def pytorch_default_init(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """What nn.Linear / nn.Conv do on construction: kaiming_uniform(a=sqrt(5)) and U(+-1/sqrt(fan_in)) bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(weight)[0])
        nn.init.uniform_(bias, -bound, bound)


class StackedLayer(nn.Module):
    """A layer of K models; ``init_model(k)`` (re)initializes model k's slice."""

    def __init__(self, models: int):
        super().__init__()
        self.models = models

    def init_model(self, k: int) -> None:  # layers without random parameters have nothing to do
        pass


class WeightAndBias(StackedLayer):
    """A stacked ``weight`` (and optional ``bias``) initialized per model: by ``init`` (bias at
    ``bias_value``), or without one as PyTorch initializes a Linear or Conv layer."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    init: WeightInit | None = None
    bias_value: float = 0.0

    def init_model(self, k: int) -> None:
        with torch.no_grad():
            bias = self.bias[k] if self.bias is not None else None
            if self.init is None:
                pytorch_default_init(self.weight[k], bias)
                return
            self.init(self.weight[k])
            if bias is not None:
                bias.fill_(self.bias_value)


class StackedLinear(WeightAndBias):
    """y_k = x_k W_k^T + b_k for every model k, as one ``baddbmm``; x is ``[K, N, in]``.

    ``init`` fills one model's weight (default: PyTorch's own Linear init, weight and bias);
    given an ``init``, the bias starts at ``bias_value``.
    """

    def __init__(self, models: int, in_features: int, out_features: int, bias: bool = True,
                 init: WeightInit | None = None, bias_value: float = 0.0):
        super().__init__(models)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(models, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(models, out_features)) if bias else None
        self.init, self.bias_value = init, bias_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # a strided x can take another GEMM path for another K
        if self.out_features == 1:
            # One output (a regression head): the batched GEMM would take a matrix-vector path
            # whose rounding depends on K; a product and a sum over features does not.
            out = (x * self.weight).sum(dim=-1, keepdim=True)
            return out if self.bias is None else out + self.bias.unsqueeze(1)
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedNorm(StackedLayer):
    """Batch normalization of ``[K, N, C, *spatial]`` or layer normalization of ``[K, N, C]``, with
    statistics and affine parameters per model."""

    def __init__(self, models: int, channels: int, kind: str, eps: float = 1e-5, momentum: float = 0.1,
                 grouped: bool = False):
        super().__init__(models)
        if kind not in ("batchnorm", "layernorm"):
            raise ValueError(f"norm kind must be 'batchnorm' or 'layernorm', not {kind!r}")
        if grouped and kind != "batchnorm":
            raise ValueError("grouped=True is a batch-norm layout (K*C channels); layer norm is one call already")
        self.kind, self.channels, self.eps, self.momentum, self.grouped = kind, channels, eps, momentum, grouped
        self.weight = nn.Parameter(torch.ones(models, channels))
        self.bias = nn.Parameter(torch.zeros(models, channels))
        if kind == "batchnorm":
            self.register_buffer("running_mean", torch.zeros(models, channels))
            self.register_buffer("running_var", torch.ones(models, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (self.channels,), eps=self.eps) * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)
        if self.grouped:  # each of the K*C channels belongs to one model, so its statistics are that model's
            return models_first(F.batch_norm(channel_stacked(x), self.running_mean.view(-1), self.running_var.view(-1),
                                             self.weight.view(-1), self.bias.view(-1), self.training, self.momentum,
                                             self.eps), self.models)
        # One call per model: over K*C channels at once the kernel's vector remainder (K*C mod
        # the SIMD width) moves with K, and with it the last bits of model k's gradients.
        # Slices come from ``unbind`` (one backward op for all K), not ``x[k]``: each indexing
        # op's backward would allocate a zero gradient the size of the whole stack (9 models:
        # 14.8 vs 6.3 ms for one layer's forward and backward). The running statistics are
        # views, so batch_norm updates model k's in place.
        parts = zip(x.unbind(0), self.running_mean.unbind(0), self.running_var.unbind(0), self.weight.unbind(0),
                    self.bias.unbind(0))
        return torch.stack([F.batch_norm(x_k, mean, var, weight, bias, self.training, self.momentum, self.eps)
                            for x_k, mean, var, weight, bias in parts])


class StackedConv(WeightAndBias):
    """K convolutions (1-D or 2-D) on ``[K, N, C, *spatial]``: one call per model, or with ``grouped``
    one grouped call for all K (HFTA's way).

    One call per model is the default: on this project's CPU a grouped
    convolution over 9 models was no faster than 9 calls (265 vs 256 ms for a
    20-layer 1-D ResNet step, bench/README.md), and oneDNN picks another kernel
    for groups > 1 (depthwise when each group has one input channel), so model
    k's numbers would depend on K. One call per model keeps them bit-identical.
    ``grouped`` (a family's ``grouped_kernels``, with batch norm over K*C channels, StackedNorm) is for
    GPUs, where K calls of a small convolution leave the device idle between launches: model k then
    rounds as a member of its group, not as a model alone.
    """

    def __init__(self, models: int, dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, bias: bool = True, init: WeightInit | None = None,
                 grouped: bool = False):
        super().__init__(models)
        self.dims, self.stride, self.padding, self.grouped = dims, stride, padding, grouped
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(models, out_channels, in_channels, *(kernel_size,) * dims))
        self.bias = nn.Parameter(torch.empty(models, out_channels)) if bias else None
        self.init = init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        if self.grouped:  # group k of the K*C input channels is model k's input, weight rows k*O.. its filters
            bias = self.bias.view(-1) if self.bias is not None else None
            return models_first(conv(channel_stacked(x), self.weight.flatten(0, 1), bias, self.stride, self.padding,
                                     1, self.models), self.models)
        biases = self.bias.unbind(0) if self.bias is not None else [None] * self.models
        return torch.stack([conv(x_k, w_k, b_k, self.stride, self.padding)
                            for x_k, w_k, b_k in zip(x.unbind(0), self.weight.unbind(0), biases)])


def channel_stacked(x: torch.Tensor) -> torch.Tensor:
    """``[K, N, C, *spatial]`` as ``[N, K*C, *spatial]``: HFTA's layout, model k's channels the k-th group.

    A view, without a copy, where x came from ``models_first`` (directly, or through elementwise operations,
    which keep their input's memory order), so a network of grouped layers copies only where its layout
    changes (its input, a shortcut's padding).
    """
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def models_first(y: torch.Tensor, models: int) -> torch.Tensor:
    """``[N, K*C, *spatial]`` back to ``[K, N, C, *spatial]``, as a view (memory stays channel-stacked)."""
    return y.view(y.shape[0], models, -1, *y.shape[2:]).transpose(0, 1)


def broadcast_per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] tensor (a value per model) shaped to broadcast over a [K, ...] tensor ``like``, on its device."""
    return values.to(like.device).view(-1, *([1] * (like.dim() - 1)))


def per_model_grad_squares(parameters) -> list[torch.Tensor]:
    """||g_k||^2 of each parameter that has a gradient (each ``[K, ...]``), as [K] float64 tensors."""
    return [p.grad.detach().double().flatten(1).pow(2).sum(dim=1) for p in parameters if p.grad is not None]


def per_model_grad_norms(parameters) -> torch.Tensor:
    """||g_k|| over all of model k's parameters (each ``[K, ...]``), as a [K] float64 tensor."""
    squares = per_model_grad_squares(parameters)
    if not squares:
        raise ValueError("no parameter has a gradient")
    return total_norm(squares)


def total_norm(squares: list[torch.Tensor]) -> torch.Tensor:
    """The per-model norm over parameters from their squared norms, added one parameter at a time: a
    reduction across the stack could order model k's terms differently for another K, and its norm
    would then differ in the last bit."""
    total = squares[0]
    for square in squares[1:]:
        total = total + square
    return total.sqrt()


def initialize(model: nn.Module, seeds: list[int]) -> None:
    """Initialize model k of every stacked layer from ``seeds[k]`` alone (layers in registration order).

    The global generator is restored afterwards, so building a group leaves no
    trace on whatever draws from it next.
    """
    layers = [module for module in model.modules() if isinstance(module, StackedLayer)]
    wrong = sorted({layer.models for layer in layers} - {len(seeds)})
    if wrong:
        raise ValueError(f"the model stacks {wrong} models but {len(seeds)} seeds were given")
    with torch.random.fork_rng(devices=[]):
        for k, seed in enumerate(seeds):
            torch.manual_seed(seed)
            for layer in layers:
                layer.init_model(k)
