"""Deep fully connected nets: the classic setting of the vanishing gradient.

Depth counts hidden layers. Hidden layer l computes
``h_l = act(norm(W_l h_{l-1} + b_l))`` and, with ``skip="residual"``, adds
``h_{l-1}`` (He et al. 2016) for every layer whose input has the same width.
Every layer holds K stacked models (``[K, N, features]``, vgbench/models/stacked.py).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vgbench.models import FAMILIES, Family, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.models.stacked import StackedLinear
from vgbench.probes.taps import ProbedModel
from vgbench.probes.theory import Chain


class MLPHParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(64, gt=0, description="units per hidden layer")


class HiddenLayer(nn.Module):
    def __init__(self, models: int, fan_in: int, width: int, recipe: Recipe):
        super().__init__()
        self.linear = StackedLinear(models, fan_in, width, init=recipe.init_weight)
        self.norm = recipe.make_norm(models, width)
        self.activation = recipe.make_activation()


class DeepMLP(ProbedModel):
    def __init__(self, models: int, in_features: int, num_outputs: int, depth: int, recipe: Recipe, width: int):
        super().__init__(recipe.activation, models)
        self.residual = recipe.skip == "residual"
        self.hidden = nn.ModuleList(
            HiddenLayer(models, in_features if i == 0 else width, width, recipe) for i in range(depth))
        # The classifier keeps PyTorch's default init in every remedy, so that the
        # remedies differ only in the hidden stack they are about.
        self.head = StackedLinear(models, width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)
        for index, layer in enumerate(self.hidden):
            z = self.taps.preactivation(index, layer.norm(layer.linear(h)))
            out = layer.activation(z)
            if self.residual and out.shape == h.shape:
                out = out + h
            h = self.taps.hidden(index, out)
        return self.head(h)

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"hidden.{i}.linear.weight", layer.linear.weight) for i, layer in enumerate(self.hidden)]

    def mean_field(self) -> Chain | str:
        if self.residual:
            return "residual skips"
        if not isinstance(self.hidden[0].norm, nn.Identity):
            return "normalization"
        return Chain([(layer.linear.weight, layer.linear.bias) for layer in self.hidden], self.taps.activation)


def build_mlp(io: ModelIO, depth: int, recipe: Recipe, hparams: MLPHParams, models: int) -> DeepMLP:
    return DeepMLP(models, math.prod(io.input_shape), io.num_outputs, depth, recipe, hparams.width)


FAMILIES.add("mlp", Family("mlp", "deep fully connected classifier", MLPHParams, build_mlp))
