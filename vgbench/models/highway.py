"""Fully connected highway networks and their plain and residual twins (Srivastava, Greff &
Schmidhuber 2015, "Training Very Deep Networks", NeurIPS; first as "Highway Networks", arXiv:1505.00387).

An input projection ``Linear(in, width)`` + activation brings the data to the
layer width (the paper's plain first layer, needed because a highway layer
keeps its width), then ``depth`` layers of width ``width``, then a linear
classifier. What a layer computes depends on ``recipe.skip``:

- ``"highway"``: y = H(x) * T(x) + x * (1 - T(x)), with H(x) = act(norm(W_H x + b_H))
  and the transform gate T(x) = sigmoid(W_T x + b_T). With b_T < 0 the gates
  start mostly closed, so each layer starts near the identity and the gradient
  reaches the input side through the carry path (the LSTM idea, across depth);
- ``"none"``: y = H(x), the plain net of the paper's comparison (no gate);
- ``"residual"``: y = x + H(x) (He et al. 2016), the gate fixed open on both paths.

Each layer is one probed state. Highway layers also report their mean gate
opening through ``taps.gate``, which the paper uses (Fig. 2) to show that
trained networks keep most gates closed on most inputs.
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


class HighwayHParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The paper's depth study on MNIST used thin layers of 50 highway blocks (and
    # 71 units for plain layers, to match the ~5000 parameters of a gated layer).
    # Here every skip setting keeps width 50, so that a remedy changes only the
    # skip path and the plain net is no wider than its highway twin.
    width: int = Field(50, gt=0, description="units per layer (50 as in the paper's depth study)")
    # The paper starts b_T negative, from -1 to -3 and more negative for deeper
    # nets, so that layers begin by carrying their input. Any float is allowed:
    # a positive bias is the ablation where layers start out transforming.
    gate_bias: float = Field(-2.0, description="initial transform-gate bias b_T (paper: -1 to -3)")


class GatedLayer(nn.Module):
    """One layer: the transform H, and the gate T when the recipe asks for highway layers."""

    def __init__(self, models: int, width: int, recipe: Recipe, gate_bias: float):
        super().__init__()
        self.linear = StackedLinear(models, width, width, init=recipe.init_weight)  # W_H, b_H
        self.norm = recipe.make_norm(models, width)
        self.activation = recipe.make_activation()
        self.gate = None
        if recipe.skip == "highway":
            self.gate = StackedLinear(models, width, width, init=recipe.init_weight, bias_value=gate_bias)  # W_T, b_T


class HighwayNet(ProbedModel):
    def __init__(self, models: int, in_features: int, num_outputs: int, depth: int, recipe: Recipe,
                 width: int, gate_bias: float):
        super().__init__(recipe.activation, models)
        self.skip = recipe.skip
        self.projection = StackedLinear(models, in_features, width, init=recipe.init_weight)
        self.projection_activation = recipe.make_activation()
        self.layers = nn.ModuleList(GatedLayer(models, width, recipe, gate_bias) for _ in range(depth))
        self.head = StackedLinear(models, width, num_outputs)  # PyTorch default init, as in the mlp family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.projection_activation(self.projection(x.flatten(2)))
        for index, layer in enumerate(self.layers):
            z = self.taps.preactivation(index, layer.norm(layer.linear(h)))
            transformed = layer.activation(z)
            if layer.gate is not None:
                t = self.taps.gate(index, torch.sigmoid(layer.gate(h)))
                out = transformed * t + h * (1 - t)
            elif self.skip == "residual":
                out = h + transformed
            else:
                out = transformed
            h = self.taps.hidden(index, out)
        return self.head(h)

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"layers.{i}.linear.weight", layer.linear.weight) for i, layer in enumerate(self.layers)]

    def mean_field(self) -> Chain | str:
        """The plain twin is a fully connected stack after its input projection (state 0 of the chain)."""
        if self.skip != "none":
            return f"{self.skip} skips"
        if not isinstance(self.layers[0].norm, nn.Identity):
            return "normalization"
        layers = [(self.projection.weight, self.projection.bias)]
        layers += [(layer.linear.weight, layer.linear.bias) for layer in self.layers]
        return Chain(layers, self.taps.activation, first_probed=1)


def build_highway(io: ModelIO, depth: int, recipe: Recipe, hparams: HighwayHParams, models: int) -> HighwayNet:
    return HighwayNet(models, math.prod(io.input_shape), io.num_outputs, depth, recipe,
                      hparams.width, hparams.gate_bias)


FAMILIES.add("highway", Family(
    "highway",
    "fully connected highway net (gated skips), or its plain / residual twin (Srivastava et al. 2015)",
    HighwayHParams, build_highway, depth_meaning="hidden layers", probed_state="hidden layer",
    inputs=frozenset({"vector", "image"}),
    # tanh + Xavier: at depth 50 this plain net stops learning on MNIST-1D while its
    # highway twin trains (measured; with ReLU + He the plain net trains at 50 layers,
    # so the comparison would show nothing about the skip path).
    base_recipe=Recipe(activation="tanh", init="xavier", norm="none", skip="none")))
