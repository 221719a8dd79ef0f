"""Recurrent nets: the vanishing gradient through time.

Depth is the sequence length T: the gradient of a loss read at the end must
travel back through every step (Bengio, Simard & Frasconi 1994; Hochreiter
1991). One class covers the vanilla RNN (``recipe.cell="rnn"``, activation from
the recipe: tanh, sigmoid, ReLU; with identity recurrent init it is the IRNN of
Le, Jaitly & Hinton 2015), the LSTM (Hochreiter & Schmidhuber 1997, with the
forget gate of Gers et al. 2000) and the GRU (Cho et al. 2014).

The weights of K stacked models are ``[K, gates * hidden, ...]`` tensors laid
out as PyTorch's ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` lay out theirs. Unprobed
LSTM and GRU steps run PyTorch's fused kernels (cuDNN on GPUs, where vanilla
RNNs do too), one call per model on that model's slice (on a GPU each on a
CUDA stream of its own, so that the K calls overlap): on this project's
2-core CPU nine fused LSTM calls took 45 ms where one Python loop over time for
all nine stacked models took 65-75 ms (a step is too small for batching the
models to pay for the loop's per-op cost); a vanilla RNN's CPU "fused" kernel
is itself a loop over time, and there the batched loop wins (README.md, Cell groups;
bench/README.md).
With the opt-in ``models_per_kernel_call`` P > 1, one call runs P models as a
single net of P*H units whose weights are block-diagonal, checked so that the
models never mix (vgbench/models/shared_calls.py): the same function in a
K/P-th of the calls, at P times the arithmetic (for GPUs, where a small
model's call leaves the device idle; slower on this CPU).
On probe steps, and for what the fused kernels cannot do (sigmoid units, layer
normalization), the same equations run as one Python loop over time for all K
models with batched matrix products: the probes need ||dL/dh_t|| for every t,
which only a tensor per step can give (a fused output sequence only carries
each step's direct gradient). Both paths compute the same function; a test
holds them to float tolerance. With a call per model, model k's arithmetic does
not depend on K (tests/test_stacking.py); with shared calls it agrees with it
to float rounding.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vgbench.activations import ACTIVATIONS
from vgbench.models import FAMILIES, Family, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.models.shared_calls import shared_fused_calls
from vgbench.models.stacked import StackedLayer, StackedLinear
from vgbench.models.streams import per_model
from vgbench.probes.taps import ProbedModel
from vgbench.probes.theory import Recurrent

LSTM_FORGET_BIAS = 1.0  # Gers, Schmidhuber & Cummins 2000; Jozefowicz et al. 2015


class RNNHParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(64, gt=0, description="units in the recurrent state")
    models_per_kernel_call: int = Field(
        1, ge=1, description="unprobed fused steps: models of a cell group that share one fused-kernel call, "
                             "as one recurrent net with block-diagonal weights (1: a call per model). Fewer, "
                             "larger calls, for GPUs where a small model's call leaves the device idle, at that "
                             "many times the arithmetic; a cell's numbers then depend on its group, not on its "
                             "config alone. No effect where the unrolled loop runs (probed steps, sigmoid units, "
                             "layer norm, vanilla RNNs on CPU)")


GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # blocks stacked in the weights, in PyTorch's order
# The fused kernels, called with one net's flat weights as nn.RNN / nn.LSTM / nn.GRU call them.
FUSED = {("rnn", "tanh"): torch._VF.rnn_tanh, ("rnn", "relu"): torch._VF.rnn_relu,
         ("lstm", "tanh"): torch._VF.lstm, ("gru", "tanh"): torch._VF.gru}


class RecurrentWeights(StackedLayer):
    """W_ih, W_hh, b_ih, b_hh of K models; each gate's block initialised apart, as the recipe says."""

    def __init__(self, models: int, in_features: int, hidden_size: int, recipe: Recipe):
        super().__init__(models)
        self.recipe, self.hidden_size, self.blocks = recipe, hidden_size, GATES[recipe.cell]
        rows = self.blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(models, rows, in_features))
        self.weight_hh = nn.Parameter(torch.empty(models, rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(models, rows))
        self.bias_hh = nn.Parameter(torch.zeros(models, rows))

    def init_model(self, k: int) -> None:
        with torch.no_grad():
            for block in self.weight_ih[k].chunk(self.blocks):
                self.recipe.init_weight(block)
            for block in self.weight_hh[k].chunk(self.blocks):
                self.recipe.init_recurrent_weight(block)
            self.bias_ih[k].zero_()
            self.bias_hh[k].zero_()
            if self.recipe.cell == "lstm":
                self.bias_ih[k, self.hidden_size:2 * self.hidden_size] = LSTM_FORGET_BIAS


class RecurrentNet(ProbedModel):
    def __init__(self, models: int, io: ModelIO, recipe: Recipe, hidden_size: int, models_per_kernel_call: int = 1):
        if len(io.input_shape) != 2:
            raise ValueError(f"the rnn family reads (time, features) sequences, got input shape {io.input_shape}")
        if recipe.norm == "batchnorm":
            raise ValueError("batchnorm does not apply to the rnn family (statistics differ per time step); "
                             "use layernorm")
        activation = recipe.activation if recipe.cell == "rnn" else "tanh"
        super().__init__(activation, models)
        self.cell, self.hidden_size, self.per_step = recipe.cell, hidden_size, io.per_step
        self.models_per_kernel_call = min(models_per_kernel_call, models)
        self.rnn = RecurrentWeights(models, io.input_shape[1], hidden_size, recipe)
        self.fused = FUSED.get((recipe.cell, activation)) if recipe.norm == "none" else None
        self.activation = recipe.make_activation() if recipe.cell == "rnn" else nn.Tanh()
        # Layer normalization of the summed input of each step (Ba, Kiros & Hinton 2016);
        # for the GRU, of the recurrent term, which its reset gate scales.
        self.norm = recipe.make_norm(models, self.rnn.blocks * hidden_size)
        self.head = StackedLinear(models, hidden_size, io.num_outputs)

    def _step(self, t: int, projected: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
        """One time step of all K models: (new h, new c); ``projected`` is W_ih x_t + b_ih, ``[K, N, G*H]``."""
        recurrent = torch.baddbmm(self.rnn.bias_hh.unsqueeze(1), h, self.rnn.weight_hh.transpose(1, 2))
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
        """The hidden states ``[K, N, T, H]``, one step at a time for all K models, each one tapped."""
        models, n, steps, _ = x.shape
        # Every step's input at once; unbound once, so the backward pass stacks the steps'
        # gradients in one go instead of adding each into a zero tensor of the whole sequence.
        projected = torch.baddbmm(self.rnn.bias_ih.unsqueeze(1), x.flatten(1, 2),
                                  self.rnn.weight_ih.transpose(1, 2)).view(models, n, steps, -1).unbind(2)
        h = x.new_zeros(models, n, self.hidden_size)
        c = h if self.cell == "lstm" else None
        states = []
        for t in range(steps):
            h, c = self._step(t, projected[t], h, c)
            states.append(self.taps.hidden(t, h))
        return torch.stack(states, dim=2)

    def fused_calls(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden states ``[K, N, T, H]`` from PyTorch's fused kernel: one call per model (on a GPU the
        calls overlap, each on a CUDA stream of its own, vgbench/models/streams.py), or per
        ``models_per_kernel_call`` models as one block-diagonal net (vgbench/models/shared_calls.py)."""
        weights = (self.rnn.weight_ih, self.rnn.weight_hh, self.rnn.bias_ih, self.rnn.bias_hh)
        if self.models_per_kernel_call > 1:
            return shared_fused_calls(self._fused_call, self.rnn.blocks, self.models_per_kernel_call, x, weights)
        # Each model's own slices, as nn.LSTM would call the kernel with them (unbound once: their
        # backward stacks the K gradients in one go).
        alone = list(zip(x.unbind(0), zip(*(w.unbind(0) for w in weights))))
        return torch.cat(per_model(lambda x_k, w_k: self._fused_call(x_k, w_k, 1), alone, x.device))

    def _fused_call(self, inputs: torch.Tensor, weights: Sequence[torch.Tensor], models: int) -> torch.Tensor:
        """One fused call of one net (one model, or ``models`` as one block-diagonal net) over ``inputs``
        ``[N, T, models*F]``: the states ``[models, N, T, H]``."""
        weights = list(weights)
        low = _precision_to_cast_by_hand(inputs, self.cell)
        with torch.autocast("cpu", enabled=False) if low is not None else contextlib.nullcontext():
            if low is not None:
                inputs, weights = inputs.to(low), [w.to(low) for w in weights]
            h0 = inputs.new_zeros(1, inputs.shape[0], models * self.hidden_size)
            hx = (h0, h0) if self.cell == "lstm" else h0
            states = self.fused(inputs, hx, weights, True, 1, 0.0, self.training, False, True)[0]
        return states.unflatten(2, (models, self.hidden_size)).permute(2, 0, 1, 3)

    def uses_fused(self, x: torch.Tensor) -> bool:
        """The fused kernel on unprobed steps where it exists and pays: always on GPUs (cuDNN); on CPU
        for the LSTM and GRU only, since torch's CPU kernel for a vanilla RNN is itself a loop over
        time, and nine of them cost more than one batched loop (bench/README.md)."""
        return (self.fused is not None and not self.taps.armed
                and (x.device.type != "cpu" or self.cell != "rnn"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.fused_calls(x) if self.uses_fused(x) else self.unrolled(x)
        if self.per_step:
            return self.head(states.flatten(1, 2)).unflatten(1, states.shape[1:3])
        return self.head(states[:, :, -1])

    weights_per_state = False  # (at T = 2 the two lists are as long, and their ratio would be ih over hh)

    def probe_weights(self) -> list[tuple[str, nn.Parameter]]:
        # Two matrices shared by all steps: their gradients sum over time, so the
        # per-step picture comes from dL/dh_t, not from these.
        return [("rnn.weight_ih", self.rnn.weight_ih), ("rnn.weight_hh", self.rnn.weight_hh)]

    def mean_field(self) -> Recurrent | str:
        if self.cell != "rnn":
            return f"{self.cell.upper()} gates"
        if not isinstance(self.norm, nn.Identity):
            return "normalization"
        if ACTIVATIONS[self.taps.activation].rectifier:
            return "rectifier units in an RNN keep their on/off pattern from step to step (not independent steps)"
        return Recurrent(self.rnn.weight_ih, self.rnn.weight_hh, self.rnn.bias_ih + self.rnn.bias_hh,
                         self.taps.activation)


def _precision_to_cast_by_hand(inputs: torch.Tensor, cell: str) -> torch.dtype | None:
    """The CPU autocast dtype (bf16-mixed, 16-mixed) where the fused call must be given inputs and weights
    already cast, else None (then autocast casts it, or no autocast is on).

    - GRU: torch's CPU autocast lists no GRU op, so the fused GRU would run in float32 while the fused
      LSTM (which autocast casts whole) and every network's matrix products ran in the lower precision: a
      bf16 row of GRUs beside a bf16 row of LSTMs would not be one precision. Given cast inputs, torch
      runs its GRU kernel in that precision, as it runs the LSTM's.
    - LSTM, on CPUs whose oneDNN has no LSTM primitive in that precision (no AVX-512 BF16/FP16: AVX2
      machines, the CI's among them): autocast casts the fused LSTM's oneDNN call without asking whether
      oneDNN can run it there, and the call fails ("could not create a primitive descriptor for the LSTM
      forward propagation primitive"; nn.LSTM fails alike). Given the inputs and weights already cast,
      torch asks and picks its native kernel: the same LSTM in the same precision, where autocast had
      meant it."""
    if inputs.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    if cell == "gru":
        return dtype
    supported = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
                 torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    return dtype if cell == "lstm" and supported is not None and not supported() else None


def build_rnn(io: ModelIO, depth: int, recipe: Recipe, hparams: RNNHParams, models: int) -> RecurrentNet:
    return RecurrentNet(models, io, recipe, hparams.hidden_size, hparams.models_per_kernel_call)


FAMILIES.add("rnn", Family(
    "rnn", "recurrent net (vanilla/IRNN, LSTM, GRU) on sequences", RNNHParams, build_rnn,
    depth_meaning="sequence length (copy-memory: the delay T)", depth_is_length=True,
    inputs=frozenset({"sequence"}), base_recipe=Recipe(activation="tanh"), probed_state="time step",
    per_step_outputs=True,
    stacking="unprobed LSTM/GRU steps (and vanilla RNN steps on GPUs): PyTorch's fused kernel once per "
             "model (or per model.models_per_kernel_call models, as one block-diagonal net), the calls "
             "overlapping on CUDA streams on a GPU; otherwise one loop over time with batched matrix "
             "products for all K"))
