"""Greedy layer-wise pretraining of a stack of RBMs (a deep belief net's weights).

Hinton, Osindero & Teh 2006; Bengio, Lamblin, Popovici & Larochelle 2007:
train an RBM on the data, then a second RBM on the first one's hidden
activations, and so on, one layer at a time; the stack then initializes a deep
sigmoid network that is fine-tuned by backpropagation (``unroll.load_into_mlp``).
Each layer above the first reads the *mean* activations p(h | v) of the layer
below, not samples, as is standard practice (Bengio et al. 2007; Hinton 2010).

Per layer and per epoch (epoch 0 = before any update) the stack records the
reconstruction error on the training and validation sets and the free-energy
gap, mean F(val) - mean F(train) on equally many samples; a gap that keeps
growing is the guide's sign of overfitting (Hinton 2010, section 6).

Cost: with the default ``PretrainSettings`` a 20-layer width-64 stack on
4000 x 40 inputs takes about 3 s on one CPU thread; each epoch adds one
reconstruction and free-energy evaluation of the whole training set per layer.
The matrices are tiny (100 x 64), so more intra-op threads do not help, and on
busy cores they hurt badly (OMP_NUM_THREADS=2 on two loaded cores: 80-130 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from vgbench.pretraining.rbm import RBM


class PretrainSettings(BaseModel):
    """How each RBM of the stack is trained; every field is part of the cache key.

    The defaults aim at a few CPU seconds per stack on a few thousand samples of
    tens of features (20 layers of width 64 on 4000 x 40: about 3 s on one
    thread), with the values of Hinton's guide and of Hinton & Salakhutdinov's
    2006 MNIST code where they fit a run that short. They were checked on
    standardized real-valued data with a Gaussian first layer: all 20 layers
    then learn (reconstruction error falls, hidden units vary across samples).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1, description=(
        "passes over the training set per layer; on a few thousand samples most of the "
        "fall in reconstruction error happens within five CD-1 epochs"))
    learning_rate: float = Field(0.1, gt=0, description=(
        "step size of the CD update for weights and biases (0.1 in Hinton & "
        "Salakhutdinov's binary RBMs). Persistent CD and Gaussian visible units want "
        "less (Tieleman 2008; guide 13.2): PCD with a Gaussian first layer diverges "
        "at 0.1, which raises FloatingPointError"))
    k: int = Field(1, ge=1, description=(
        "Gibbs steps in the negative phase (CD-k / PCD-k); CD-1 is the guide's default"))
    persistent: bool = Field(False, description=(
        "persistent CD (Tieleman 2008): the negative chain continues across updates "
        "instead of restarting at the data; needs a smaller learning_rate than CD"))
    momentum: float = Field(0.9, ge=0, lt=1, description=(
        "velocity carried between updates. The guide starts at 0.5 and moves to 0.9 "
        "once learning settles; a five-epoch run has no time for the first stage, and "
        "0.9 from the start was stable with CD and kept the upper layers learning"))
    weight_decay: float = Field(2e-4, ge=0, description=(
        "L2 cost on the weights (not the biases), multiplied by the learning rate; "
        "2e-4 is the weight cost of Hinton & Salakhutdinov's MNIST RBMs"))
    batch_size: int = Field(100, ge=1, description=(
        "samples per CD update; the guide recommends 10 to 100 (section 4), and 100 "
        "costs 2.5x less time than 20 here for the same final reconstruction error"))


@dataclass
class PretrainedLayer:
    """One trained RBM: ``weight`` (hidden, visible) and ``hidden_bias`` unroll into nn.Linear."""

    weight: torch.Tensor
    hidden_bias: torch.Tensor
    visible_bias: torch.Tensor
    gaussian_visible: bool

    def to_rbm(self, generator: torch.Generator | None = None) -> RBM:
        generator = generator if generator is not None else torch.Generator(device=self.weight.device)
        return RBM.from_parameters(self.weight, self.visible_bias, self.hidden_bias,
                                   gaussian_visible=self.gaussian_visible, generator=generator)


@dataclass
class PretrainedStack:
    """The layers bottom-up and the JSON-able training record (``stats``)."""

    layers: list[PretrainedLayer]
    stats: dict = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return [layer.weight.shape[0] for layer in self.layers]

    def hidden_probabilities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """p(h | v) of every layer, each layer fed the previous one's probabilities."""
        activations, h = [], x.flatten(1)
        for layer in self.layers:
            h = layer.to_rbm().hidden_probabilities(h)
            activations.append(h)
        return activations


def _check_inputs(x_train: torch.Tensor, x_val: torch.Tensor, widths: Sequence[int],
                  gaussian_first: bool) -> None:
    if not widths or any(int(width) < 1 for width in widths):
        raise ValueError(f"widths={list(widths)}: need at least one layer, each of width >= 1")
    if x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"train has {x_train.shape[1]} features, validation {x_val.shape[1]}")
    if not gaussian_first and (x_train.min() < 0 or x_train.max() > 1):
        raise ValueError("Bernoulli visible units need inputs in [0, 1]: scale them with "
                         "scale_to_unit_interval, or pretrain with gaussian_first=True on standardized inputs")


# What ``_epoch_stats`` records per layer and epoch (the W&B table and the cell's record read them).
EPOCH_MONITORS = ("reconstruction_error_train", "reconstruction_error_val", "free_energy_gap")


def _epoch_stats(rbm: RBM, epoch: int, train: torch.Tensor, val: torch.Tensor,
                 train_subset: torch.Tensor, val_subset: torch.Tensor) -> dict:
    return {
        "epoch": epoch,
        "reconstruction_error_train": rbm.reconstruction_error(train).item(),
        "reconstruction_error_val": rbm.reconstruction_error(val).item(),
        "free_energy_gap": (rbm.free_energy(val_subset).mean() - rbm.free_energy(train_subset).mean()).item(),
    }


@torch.no_grad()
def pretrain_stack(x_train: torch.Tensor, x_val: torch.Tensor, widths: Sequence[int],
                   settings: PretrainSettings, seed: int, gaussian_first: bool) -> PretrainedStack:
    """Train one RBM per entry of ``widths``, bottom-up, each on the layer below's p(h | v).

    ``gaussian_first`` makes the first RBM's visible units Gaussian (inputs
    standardized to unit variance); otherwise inputs must lie in [0, 1]
    (``scale_to_unit_interval``). Layers above the first are always
    Bernoulli-Bernoulli. One generator seeded with ``seed`` drives the
    initialization, the minibatch order and every Gibbs sample, so the same
    call gives the same weights. A layer whose weights blow up raises
    FloatingPointError naming the layer and epoch.
    """
    train = x_train.flatten(1)
    val = x_val.flatten(1)
    if not train.is_floating_point():
        train, val = train.float(), val.float()
    _check_inputs(train, val, widths, gaussian_first)
    generator = torch.Generator(device=train.device).manual_seed(seed)
    # Hinton's monitor compares F on a fixed training subset as large as the validation set.
    subset_size = min(len(train), len(val))
    train_subset_rows = torch.randperm(len(train), generator=generator, device=train.device)[:subset_size]

    layers, layer_stats = [], []
    start = time.perf_counter()
    for index, width in enumerate(widths):
        layer_start = time.perf_counter()
        gaussian_visible = gaussian_first and index == 0
        rbm = RBM(train.shape[1], int(width), gaussian_visible=gaussian_visible,
                  generator=generator, dtype=train.dtype)
        rbm.init_visible_bias(train)
        subsets = (train[train_subset_rows], val[:subset_size])
        epochs = [_epoch_stats(rbm, 0, train, val, *subsets)]
        for epoch in range(1, settings.epochs + 1):
            order = torch.randperm(len(train), generator=generator, device=train.device)
            try:
                for batch_rows in order.split(settings.batch_size):
                    rbm.contrastive_divergence_update(
                        train[batch_rows], learning_rate=settings.learning_rate, k=settings.k,
                        momentum=settings.momentum, weight_decay=settings.weight_decay,
                        persistent=settings.persistent)
            except FloatingPointError as error:
                raise FloatingPointError(f"pretraining layer {index}, epoch {epoch}: {error}") from error
            epochs.append(_epoch_stats(rbm, epoch, train, val, *subsets))
        layers.append(PretrainedLayer(rbm.weight.clone(), rbm.hidden_bias.clone(),
                                      rbm.visible_bias.clone(), gaussian_visible))
        layer_stats.append({"layer": index, "visible_units": "gaussian" if gaussian_visible else "bernoulli",
                            "num_visible": rbm.num_visible, "num_hidden": rbm.num_hidden,
                            "seconds": time.perf_counter() - layer_start, "epochs": epochs})
        train, val = rbm.hidden_probabilities(train), rbm.hidden_probabilities(val)

    stats = {"seed": seed, "gaussian_first": gaussian_first, "widths": [int(w) for w in widths],
             "settings": settings.model_dump(), "seconds": time.perf_counter() - start, "layers": layer_stats}
    return PretrainedStack(layers, stats)
