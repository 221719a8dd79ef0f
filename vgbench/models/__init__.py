"""The model-family axis.

A family is one module that registers a ``Family``: a builder taking
(input shape, number of classes, depth, recipe, family hparams) and a pydantic
model of its own hyperparameters, validated with params.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from vgbench.models.recipe import Recipe
from vgbench.probes.taps import ProbedModel
from vgbench.registry import Registry


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    hparams: type[BaseModel]
    build: Callable[[tuple[int, ...], int, int, Recipe, BaseModel], ProbedModel]
    depth_meaning: str = "hidden layers"


FAMILIES: Registry[Family] = Registry("family")

# Importing a family module registers it (one line per family).
from vgbench.models import mlp  # noqa: E402,F401
