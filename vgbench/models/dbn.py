"""DBN-style stacks: deep sigmoid MLPs whose remedies include greedy RBM pretraining.

The network is the MLP family's ``DeepMLP`` (sigmoid units, N(0, 0.01^2)
weights at baseline); what makes it a family of its own is the question its
leaderboard answers, "is pretraining still worth it?": ``pretrain`` (Hinton,
Osindero & Teh 2006; Bengio et al. 2007) next to the modern remedies that keep
the stack sigmoid (``xavier`` init, ``batchnorm``, ``residual``). The pretrained
weights come from ``vgbench.pretraining`` (``recipe.pretrain == "rbm"``), loaded
by the training step before the first probe, so the init probe measures the
pretrained stack.
"""

from __future__ import annotations

from vgbench.models import FAMILIES, Family
from vgbench.models.mlp import MLPHParams, build_mlp
from vgbench.models.recipe import Recipe

FAMILIES.add("dbn", Family(
    "dbn", "deep sigmoid stack, random or greedily RBM-pretrained, fine-tuned by backprop", MLPHParams,
    build_mlp, base_recipe=Recipe(), trains_as="mlp"))
