"""Pretraining as part of a cell: the cell's stack from the cache (or trained once), loaded into its net.

The stack is keyed by everything it depends on: the stored training data
(its sha256 from the data manifest, and the data code that made and loads it), the widths, the cell's seed, the
visible-unit choice and the pretraining settings, and *not* by the learning
rate or anything else of fine-tuning. So the cells of one (data, depth,
width, seed) share one stack, and a change of the pretraining settings
reruns only the cells that pretrain (they carry the settings in their config;
the others do not).

Visible units of the first RBM (``visible_units``):

- ``gaussian`` (default): unit-variance Gaussian units on the standardized
  inputs the network reads (Hinton 2010, section 13.2); for real-valued data
  such as MNIST-1D.
- ``bernoulli``: binary units on inputs min-max scaled to [0, 1] with the
  training split's range (Hinton 2010, section 13: values in [0, 1] read as
  probabilities, as MNIST grey levels are). The network still reads the
  standardized inputs, so the scaling is folded into the first layer:
  W u + c with u = (x - low) / span is (W / span) x + (c - W low / span).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from vgbench.data.store import StoredDataset
from vgbench.models.mlp import DeepMLP
from vgbench.pretraining.cache import load_or_pretrain, stack_key, stack_key_fields
from vgbench.pretraining.inputs import scale_to_unit_interval, unit_interval_scaling
from vgbench.pretraining.stack import EPOCH_MONITORS, PretrainSettings, pretrain_stack
from vgbench.pretraining.unroll import load_into_mlp


class PretrainingSettings(PretrainSettings):
    """params.yaml ``pretraining``: the RBM recipe plus the first layer's visible units."""

    visible_units: Literal["gaussian", "bernoulli"] = Field(
        "gaussian", description="first RBM: gaussian on standardized inputs, or bernoulli on [0, 1]-scaled ones")

    def rbm_settings(self) -> PretrainSettings:
        return PretrainSettings(**self.model_dump(exclude={"visible_units"}))


def _fold_unit_scaling(model: DeepMLP, k: int, low: torch.Tensor, span: torch.Tensor) -> None:
    linear = model.hidden[0].linear
    with torch.no_grad():
        weight = linear.weight[k].clone()
        linear.weight[k].copy_(weight / span)
        linear.bias[k].sub_(weight @ (low / span))


def pretrain_into(model: DeepMLP, settings: PretrainingSettings, data: StoredDataset, seed: int,
                  dataset_settings: dict, cache_root: Path, k: int = 0) -> dict:
    """Load the pretrained stack of ``seed`` into model k of ``model``; return what the cell records about it."""
    train, val = data.splits["train"]["x"].flatten(1), data.splits["validation"]["x"].flatten(1)
    gaussian = settings.visible_units == "gaussian"
    if not gaussian:
        low, span = unit_interval_scaling(train)  # before train is replaced by its scaled copy
        train, val = scale_to_unit_interval(train, val)
    widths = [layer.linear.out_features for layer in model.hidden]
    # The stored bytes, and the code that made them and standardizes them on loading (``builder``: a stack
    # pretrained on inputs another data code standardized is another stack, though train.pt is the same).
    identity = {"name": data.name, "settings": dataset_settings, "length": data.manifest.get("length"),
                "train_sha256": data.manifest["sha256"]["train.pt"], "builder": data.manifest["builder"],
                "inputs": "standardized" if gaussian else "unit_interval"}
    key_fields = stack_key_fields(identity, widths, seed, settings.rbm_settings(), gaussian_first=gaussian)
    stack, cached = load_or_pretrain(
        cache_root, key_fields,
        lambda: pretrain_stack(train, val, widths, settings.rbm_settings(), seed, gaussian_first=gaussian))
    load_into_mlp(stack, model, k)
    if not gaussian:
        _fold_unit_scaling(model, k, low, span)
    final = [layer["epochs"][-1] for layer in stack.stats["layers"]]
    return {
        "key": stack_key(key_fields), "cached": cached, "visible_units": settings.visible_units,
        "seconds": stack.stats["seconds"],
        **{monitor: [row[monitor] for row in final] for monitor in EPOCH_MONITORS},
        "stats": stack.stats,
    }
