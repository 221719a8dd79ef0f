"""Greedy layer-wise RBM pretraining, the pre-2010 answer to the vanishing gradient.

Hinton, Osindero & Teh 2006 and Bengio, Lamblin, Popovici & Larochelle 2007
initialize a deep sigmoid net with a stack of RBMs, each trained on the hidden
activations of the one below; Hinton 2010 ("A practical guide to training
RBMs") gives the training recipe followed here.

- ``rbm``: one RBM (Bernoulli or unit-variance Gaussian visible units), CD-k and PCD.
- ``stack``: ``PretrainSettings`` and ``pretrain_stack``, with per-epoch monitors.
- ``inputs``: ``scale_to_unit_interval`` for Bernoulli visible units.
- ``unroll``: ``load_into_mlp``, the stack into a DeepMLP's hidden layers.
- ``cache``: ``load_or_pretrain``, one stack on disk per resolved input.
"""

from vgbench.pretraining.cache import load_or_pretrain, stack_key, stack_key_fields
from vgbench.pretraining.inputs import scale_to_unit_interval
from vgbench.pretraining.rbm import RBM
from vgbench.pretraining.stack import PretrainedLayer, PretrainedStack, PretrainSettings, pretrain_stack
from vgbench.pretraining.unroll import load_into_mlp

__all__ = ["RBM", "PretrainSettings", "PretrainedLayer", "PretrainedStack", "pretrain_stack",
           "scale_to_unit_interval", "load_into_mlp", "load_or_pretrain", "stack_key", "stack_key_fields"]
