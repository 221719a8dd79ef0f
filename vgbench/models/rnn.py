"""Recurrent nets: the vanishing gradient through time.

Depth is the sequence length T: the gradient of a loss read at the end must
travel back through every step (Bengio, Simard & Frasconi 1994; Hochreiter
1991). One class covers the vanilla RNN (``recipe.cell="rnn"``, activation from
the recipe: tanh, sigmoid, ReLU; with identity recurrent init it is the IRNN of
Le, Jaitly & Hinton 2015), the LSTM (Hochreiter & Schmidhuber 1997, with the
forget gate of Gers et al. 2000) and the GRU (Cho et al. 2014).

The weights live in PyTorch's own ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``, and
unprobed steps run their fused kernels (cuDNN on GPUs; on CPU an LSTM step is
~6x faster than a Python loop). On probe steps, and for what the fused kernels
cannot do (sigmoid units, layer normalization), the same equations run as a
Python loop over time with the same parameters: the probes need
||dL/dh_t|| for every t, which only a tensor per step can give (a fused
output sequence only carries each step's direct gradient). Both paths compute
the same function; a test holds them to float tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vgbench.models import FAMILIES, Family, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.probes.taps import ProbedModel

LSTM_FORGET_BIAS = 1.0  # Gers, Schmidhuber & Cummins 2000; Jozefowicz et al. 2015


class RNNHParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(64, gt=0, description="units in the recurrent state")


FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(ProbedModel):
    def __init__(self, io: ModelIO, recipe: Recipe, hidden_size: int):
        if len(io.input_shape) != 2:
            raise ValueError(f"the rnn family reads (time, features) sequences, got input shape {io.input_shape}")
        if recipe.norm == "batchnorm":
            raise ValueError("batchnorm does not apply to the rnn family (statistics differ per time step); "
                             "use layernorm")
        super().__init__("tanh" if recipe.cell != "rnn" else recipe.activation)
        self.cell, self.hidden_size, self.per_step = recipe.cell, hidden_size, io.per_step
        extra = {"nonlinearity": recipe.activation} if recipe.cell == "rnn" and recipe.activation in ("tanh", "relu") else {}
        self.rnn = FUSED[recipe.cell](io.input_shape[1], hidden_size, batch_first=True, **extra)
        self.fused_ok = recipe.norm == "none" and (recipe.cell != "rnn" or bool(extra))
        self.activation = recipe.make_activation() if recipe.cell == "rnn" else nn.Tanh()
        blocks = self.rnn.weight_ih_l0.shape[0] // hidden_size  # gate blocks stacked in the weights: 1, 4 or 3
        # Layer normalization of the summed input of each step (Ba, Kiros & Hinton 2016);
        # for the GRU, of the recurrent term, which its reset gate scales.
        self.norm = recipe.make_norm(blocks * hidden_size)
        for block in self.rnn.weight_ih_l0.chunk(blocks):
            recipe.init_weight(block)
        for block in self.rnn.weight_hh_l0.chunk(blocks):
            recipe.init_recurrent_weight(block)
        nn.init.zeros_(self.rnn.bias_ih_l0)
        nn.init.zeros_(self.rnn.bias_hh_l0)
        if recipe.cell == "lstm":
            with torch.no_grad():
                self.rnn.bias_ih_l0[hidden_size:2 * hidden_size] = LSTM_FORGET_BIAS
        self.head = nn.Linear(hidden_size, io.num_outputs)

    def _step(self, t: int, projected: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
        """One time step: (new h, new c); ``projected`` is W_ih x_t + b_ih."""
        recurrent = F.linear(h, self.rnn.weight_hh_l0, self.rnn.bias_hh_l0)
        if self.cell == "gru":
            r_z_x, n_x = projected.split([2 * self.hidden_size, self.hidden_size], dim=-1)
            r_z_h, n_h = self.norm(recurrent).split([2 * self.hidden_size, self.hidden_size], dim=-1)
            reset, update = torch.sigmoid(r_z_x + r_z_h).chunk(2, dim=-1)
            z = self.taps.preactivation(t, n_x + reset * n_h)
            return (1 - update) * torch.tanh(z) + update * h, None
        summed = self.norm(projected + recurrent)
        if self.cell == "rnn":
            return self.activation(self.taps.preactivation(t, summed)), None
        i, f, g, o = summed.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(self.taps.preactivation(t, g))
        return torch.sigmoid(o) * torch.tanh(c), c

    def unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden states (batch, time, hidden), one step at a time, each one tapped."""
        projected = F.linear(x, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0)  # every step's input at once
        h = x.new_zeros(x.shape[0], self.hidden_size)
        c = h if self.cell == "lstm" else None
        states = []
        for t in range(x.shape[1]):
            h, c = self._step(t, projected[:, t], h, c)
            states.append(self.taps.hidden(t, h))
        return torch.stack(states, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.rnn(x)[0] if self.fused_ok and not self.taps.armed else self.unrolled(x)
        return self.head(states) if self.per_step else self.head(states[:, -1])

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        # Two matrices shared by all steps: their gradients sum over time, so the
        # per-step picture comes from dL/dh_t, not from these.
        return [("rnn.weight_ih_l0", self.rnn.weight_ih_l0), ("rnn.weight_hh_l0", self.rnn.weight_hh_l0)]


def build_rnn(io: ModelIO, depth: int, recipe: Recipe, hparams: RNNHParams) -> RecurrentNet:
    return RecurrentNet(io, recipe, hparams.hidden_size)


FAMILIES.add("rnn", Family(
    "rnn", "recurrent net (vanilla/IRNN, LSTM, GRU) on sequences", RNNHParams, build_rnn,
    depth_meaning="sequence length (copy-memory: the delay T)", depth_is_length=True,
    inputs=frozenset({"sequence"}), base_recipe=Recipe(activation="tanh"), probed_state="time step",
    per_step_outputs=True))
