"""Unrolling a pretrained RBM stack into a DeepMLP's hidden layers.

Hidden layer i of a DeepMLP computes act(norm(W_i h + b_i)); with a sigmoid
activation and no norm this is exactly RBM i's p(h | v), so copying each RBM's
weight (hidden, visible) and hidden bias into ``hidden[i].linear`` makes the
network's forward pass the stack's mean-field up-pass (Hinton & Salakhutdinov
2006; Bengio et al. 2007). The head is left as it is: it is trained from
scratch during fine-tuning. With another activation, a norm or skips the copy
still works but is only an initialization, not the DBN's up-pass.
"""

from __future__ import annotations

import torch

from vgbench.models.mlp import DeepMLP
from vgbench.pretraining.stack import PretrainedStack


def load_into_mlp(stack: PretrainedStack, model: DeepMLP, k: int = 0) -> None:
    """Copy every pretrained layer into model k of ``model.hidden[i].linear`` (in place).

    Raises ValueError, naming the layer, when the depths or any shape differ,
    before anything is copied.
    """
    if len(stack.layers) != len(model.hidden):
        raise ValueError(f"the pretrained stack has {len(stack.layers)} layers, "
                         f"the model {len(model.hidden)} hidden layers")
    for index, (pretrained, hidden) in enumerate(zip(stack.layers, model.hidden)):
        weight, bias = hidden.linear.weight[k], hidden.linear.bias[k]
        if pretrained.weight.shape != weight.shape or pretrained.hidden_bias.shape != bias.shape:
            raise ValueError(
                f"hidden.{index}.linear: the model's weight {tuple(weight.shape)} and bias "
                f"{tuple(bias.shape)} do not match the pretrained weight "
                f"{tuple(pretrained.weight.shape)} and hidden bias {tuple(pretrained.hidden_bias.shape)}")
    with torch.no_grad():
        for pretrained, hidden in zip(stack.layers, model.hidden):
            hidden.linear.weight[k].copy_(pretrained.weight)
            hidden.linear.bias[k].copy_(pretrained.hidden_bias)
