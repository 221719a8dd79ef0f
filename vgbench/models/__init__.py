"""The model-family axis.

A family is one module that registers a ``Family``: a builder taking the data's
shapes (``ModelIO``), the depth, a recipe, a pydantic model of the family's
own hyperparameters (validated with params.yaml) and the number of models K
to stack (vgbench/models/stacked.py: a cell group trains as one network).
``base_recipe`` is the family's vanishing baseline, the recipe that every
remedy overrides. ``Family.build`` initializes model k from seed k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from pydantic import BaseModel

from vgbench.models.recipe import Recipe
from vgbench.models.stacked import initialize
from vgbench.probes.taps import ProbedModel
from vgbench.registry import Registry

INPUT_KINDS = ("vector", "image", "sequence")


@dataclass(frozen=True)
class ModelIO:
    """What a network reads and writes, from the data set and the task."""

    input_shape: tuple[int, ...]  # one sample: (features,), (C, H, W) or (time, features)
    num_outputs: int              # classes, or 1 for a scalar regression target
    per_step: bool = False        # one output per time step (copy-memory) instead of one per sequence


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    hparams: type[BaseModel]
    builder: Callable[[ModelIO, int, Recipe, BaseModel, int], ProbedModel]  # (io, depth, recipe, hparams, K)
    depth_meaning: str = "hidden layers"
    depth_is_length: bool = False  # depth is the sequence length (recurrent nets)
    probed_state: str = "hidden layer"  # what one tapped state is: a hidden layer, a time step, a block
    inputs: frozenset[str] = frozenset({"vector", "image"})  # data kinds it can read (INPUT_KINDS)
    base_recipe: Recipe = Recipe()
    per_step_outputs: bool = False  # can give one output per time step (copy-memory)
    check_depth: Callable[[int], object] | None = None  # raises ValueError for a depth it cannot build
    # How the K models of a cell group share kernels (shown by `vgbench plan`).
    stacking: str = "one batched matrix product per layer for all K models"
    # Another family whose network this one builds for recipes without pretraining: such cells are
    # trained once, as that family's (vgbench/twins.py).
    trains_as: str | None = None

    def build(self, io: ModelIO, depth: int, recipe: Recipe, hparams: BaseModel,
              seeds: Sequence[int] = (0,)) -> ProbedModel:
        """One stacked network of ``len(seeds)`` models for ``io``, model k initialized from ``seeds[k]``
        alone; refuses per-time-step outputs the family cannot give."""
        if io.per_step and not self.per_step_outputs:
            able = " or ".join(name for name, family in FAMILIES.items() if family.per_step_outputs)
            raise ValueError(f"the {self.name} family gives one output per sample; "
                             f"per-time-step tasks need the {able} family")
        if not seeds:
            raise ValueError("a network stacks at least one model: give at least one seed")
        model = self.builder(io, depth, recipe, hparams, len(seeds))
        initialize(model, list(seeds))
        return model


FAMILIES: Registry[Family] = Registry("family")

# Importing a family module registers it (one line per family).
from vgbench.models import dbn, highway, mlp, resnet, rnn  # noqa: E402,F401
