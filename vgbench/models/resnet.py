"""CIFAR-style residual networks and their plain counterparts (He, Zhang, Ren & Sun 2016, CVPR, Sec. 4.2).

The network of 6n+2 weighted layers: a 3x3 stem convolution, three stages of n
basic blocks (two 3x3 convolutions each) with width, 2*width, 4*width filters
and stride 2 at the first block of stages 2 and 3, global average pooling and a
linear classifier. The paper's depths are 20, 32, 44, 56 and 110.

``recipe.skip == "residual"`` adds the identity shortcuts of option A (no
parameters: subsample and zero-pad the new channels), so the residual and the
plain network have exactly the same layers and parameters, which is the
comparison of the paper's Fig. 6: only the shortcut differs. Batch normalization
follows each convolution when ``recipe.norm == "batchnorm"`` (the paper's
setting); with no norm the convolutions get a bias instead.

One class serves images (C, H, W) with 2-D convolutions and vector data
(features,) as one channel of length ``features`` with 1-D convolutions, so
MNIST-1D runs the same architecture as CIFAR-10. K models stack
(vgbench/models/stacked.py; its convolutions run one call per model, or one
grouped call for all K with ``grouped_kernels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vgbench.models import FAMILIES, Family, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.models.stacked import StackedConv, StackedLinear, StackedNorm
from vgbench.probes.taps import ProbedModel



class ResNetHParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # 16 in the paper; smaller widths keep the tests and the tiny profile cheap.
    width: int = Field(16, gt=0, description="filters of the first stage (stages: width, 2*width, 4*width)")
    grouped_kernels: bool = Field(
        False, description="a cell group's convolutions and batch norms as one grouped call for all its models "
                           "(HFTA's channel-stacked layout; fewer kernel launches, for GPUs) instead of one call "
                           "per model: a cell's numbers then depend on its group, not on its config alone")


def blocks_per_stage(depth: int) -> int:
    """n of a 6n+2-layer network; raises for any other depth."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth counts layers and must be 6n+2 with n >= 1 (8, 14, 20, ...; "
                         f"the paper uses 20, 32, 44, 56, 110), not {depth}")
    return (depth - 2) // 6


def conv3(models: int, in_channels: int, out_channels: int, stride: int, dims: int, recipe: Recipe,
          grouped: bool) -> StackedConv:
    """K 3x3 (or length-3) convolutions, their weights initialised by the recipe."""
    return StackedConv(models, dims, in_channels, out_channels, 3, stride=stride, padding=1,
                       bias=recipe.norm != "batchnorm",  # batchnorm's shift makes a bias redundant
                       init=recipe.init_weight, grouped=grouped)


def conv_norm(models: int, channels: int, recipe: Recipe, grouped: bool) -> nn.Module:
    if recipe.norm == "batchnorm":
        return StackedNorm(models, channels, "batchnorm", grouped=grouped)
    if recipe.norm == "layernorm":
        # Refused rather than silently dropped: a "layernorm" cell would otherwise
        # be the no-norm network under another name.
        raise ValueError("the resnet family supports norm 'batchnorm' or 'none', not 'layernorm'")
    return nn.Identity()


class ZeroPadShortcut(nn.Module):
    """Option A identity shortcut: subsample by ``stride``, zero-pad to ``out_channels``; no parameters.

    He et al. chose it for CIFAR so that residual and plain nets have equal
    parameter counts; the padded channels carry nothing, the rest is identity.
    Reads ``[K, N, C, *spatial]``.
    """

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and x.shape[2] == self.out_channels:
            return x  # nothing to subsample or pad: no copy (most blocks of a stage)
        spatial = (slice(None, None, self.stride),) * (x.dim() - 3)
        x = x[(slice(None), slice(None), slice(None), *spatial)]
        # F.pad lists (before, after) pairs from the last dimension backwards; channels come last.
        return F.pad(x, (0, 0) * (x.dim() - 3) + (0, self.out_channels - x.shape[2]))


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm (+ shortcut) then act; ``shortcut`` is None in the plain network."""

    def __init__(self, models: int, in_channels: int, out_channels: int, stride: int, dims: int, recipe: Recipe,
                 grouped: bool):
        super().__init__()
        self.conv1 = conv3(models, in_channels, out_channels, stride, dims, recipe, grouped)
        self.norm1 = conv_norm(models, out_channels, recipe, grouped)
        self.activation1 = recipe.make_activation()
        self.conv2 = conv3(models, out_channels, out_channels, 1, dims, recipe, grouped)
        self.norm2 = conv_norm(models, out_channels, recipe, grouped)
        self.activation2 = recipe.make_activation()
        self.shortcut = ZeroPadShortcut(out_channels, stride) if recipe.skip == "residual" else None

    def last_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the block's last nonlinearity (after the shortcut is added, as in the paper)."""
        z = self.norm2(self.conv2(self.activation1(self.norm1(self.conv1(x)))))
        return z if self.shortcut is None else z + self.shortcut(x)


class CifarResNet(ProbedModel):
    """6n+2 layers in ``dims``-dimensional convolutions; one probed state per block (3n).

    Tensors are ``[K, N, C, *spatial]``: K stacked models (vgbench/models/stacked.py).
    """

    def __init__(self, models: int, in_channels: int, num_outputs: int, depth: int, recipe: Recipe, width: int,
                 dims: int, grouped: bool = False):
        super().__init__(recipe.activation, models)
        if recipe.skip not in ("none", "residual"):
            raise ValueError(f"the resnet family supports skip 'residual' or 'none', not {recipe.skip!r}")
        n = blocks_per_stage(depth)
        self.dims = dims
        self.stem = nn.Sequential(conv3(models, in_channels, width, 1, dims, recipe, grouped),
                                  conv_norm(models, width, recipe, grouped), recipe.make_activation())
        blocks, channels = [], width
        for stage in range(3):
            out_channels = width * 2 ** stage
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(models, channels, out_channels, stride, dims, recipe, grouped))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = StackedLinear(models, channels, num_outputs)  # PyTorch default init, as in the mlp family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1 and x.dim() == 3:
            x = x.unsqueeze(2)  # [K, N, features] -> one channel of length features
        h = self.stem(x)
        for index, block in enumerate(self.blocks):
            z = self.taps.preactivation(index, block.last_preactivation(h))
            h = self.taps.hidden(index, block.activation2(z))
        return self.head(h.mean(dim=tuple(range(3, h.dim()))))  # global average pooling

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"blocks.{i}.conv1.weight", block.conv1.weight) for i, block in enumerate(self.blocks)]


def build_resnet(io: ModelIO, depth: int, recipe: Recipe, hparams: ResNetHParams, models: int) -> CifarResNet:
    if len(io.input_shape) == 1:
        in_channels, dims = 1, 1
    elif len(io.input_shape) == 3:
        in_channels, dims = io.input_shape[0], 2
    else:
        raise ValueError(f"the resnet family reads (features,) or (C, H, W) samples, not {io.input_shape}")
    return CifarResNet(models, in_channels, io.num_outputs, depth, recipe, hparams.width, dims,
                       hparams.grouped_kernels)


FAMILIES.add("resnet", Family(
    "resnet", "CIFAR-style ResNet of 6n+2 conv layers, or its plain twin (He et al. 2016)",
    ResNetHParams, build_resnet, depth_meaning="layers (6n+2)", probed_state="residual block",
    check_depth=blocks_per_stage,
    stacking="convolutions and batch norm: one call per model (a grouped convolution was no faster on CPU "
             "and rounds differently per K), or one grouped call with model.grouped_kernels; the rest of the "
             "step is shared",
    inputs=frozenset({"vector", "image"}),
    base_recipe=Recipe(activation="relu", init="he", norm="none", skip="none")))
