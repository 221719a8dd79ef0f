"""The matrix as one pure function: ``expand(profile) -> list[CellSpec]``.

A cell is the unit of work and of caching. Its id is a readable prefix plus a
hash of its fully resolved config (recipe, family hparams, data settings,
training, trainer and probe settings), so a changed setting never reuses a
stale result and an unchanged one never reruns (DomainBed's ``sweep.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from vgbench.config import Profile
from vgbench.remedies import REMEDIES


@dataclass(frozen=True)
class CellSpec:
    family: str
    remedy: str
    dataset: str
    depth: int
    seed: int
    learning_rate: float
    recipe: dict[str, Any] = field(hash=False)
    model: dict[str, Any] = field(hash=False)
    dataset_settings: dict[str, Any] = field(hash=False)
    training: dict[str, Any] = field(hash=False)
    trainer: dict[str, Any] = field(hash=False)
    probes: dict[str, Any] = field(hash=False)
    pretrain: dict[str, Any] | None = field(default=None, hash=False)  # only for cells that pretrain

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @cached_property  # a sha256 of the whole config, asked for per cell by every consumer of the matrix
    def config_hash(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @cached_property
    def cell_id(self) -> str:
        return (f"{self.family}-{self.remedy}-{self.dataset}-d{self.depth}"
                f"-lr{self.learning_rate:g}-s{self.seed}-{self.config_hash}")


def expand(profile: Profile) -> list[CellSpec]:
    """Every (block, remedy, depth, learning rate, seed) of the profile, in a stable order."""
    cells = []
    for block in profile.matrix:
        hparams = block.family_hparams().model_dump()
        data_settings = profile.dataset_settings(block.dataset).model_dump()
        training = profile.block_training(block).model_dump()
        for remedy in block.remedies:
            recipe = REMEDIES.get(remedy).recipe(block.family).as_dict()
            for depth in block.depths:
                for learning_rate in profile.block_learning_rates(block):
                    for seed in profile.seeds:
                        cells.append(CellSpec(
                            family=block.family, remedy=remedy, dataset=block.dataset, depth=depth,
                            seed=seed, learning_rate=learning_rate, recipe=recipe, model=hparams,
                            dataset_settings=data_settings,
                            training=training, trainer=profile.trainer.model_dump(),
                            probes=profile.probes.model_dump(),
                            pretrain=profile.pretraining.model_dump() if recipe["pretrain"] != "none" else None))
    ids = [cell.cell_id for cell in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("the matrix lists the same cell twice (a family/data set/depth repeated?)")
    return cells
