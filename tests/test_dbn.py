"""DBN cells: the pretrained stack goes into the net before the first probe, is cached, and is logged."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vgbench.config import WandbSettings
from vgbench.data.store import StoredDataset
from vgbench.matrix import expand
from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining.cache import load_or_pretrain
from vgbench.pretraining.for_cell import PretrainingSettings, pretrain_into
from vgbench.training.run_group import run_cell

NO_WANDB = WandbSettings(mode="disabled")


def _dbn_cell(tiny_params, remedy: str):
    return next(c for c in expand(tiny_params.active) if c.family == "dbn" and c.remedy == remedy)


def _model(depth: int = 3, width: int = 16, seeds=(0,)):
    entry = FAMILIES.get("dbn")
    return entry.build(ModelIO((40,), 10), depth, Recipe(), entry.hparams(width=width), seeds)


def test_only_pretraining_cells_carry_the_pretraining_settings(tiny_params):
    pretrain, baseline = _dbn_cell(tiny_params, "pretrain"), _dbn_cell(tiny_params, "small_init")
    assert pretrain.recipe["pretrain"] == "rbm" and pretrain.pretrain["epochs"] == 1
    assert baseline.pretrain is None and baseline.recipe["pretrain"] == "none"
    # A change of the pretraining settings reruns only what depends on them.
    other = tiny_params.active.model_copy(update={"pretraining": PretrainingSettings(epochs=2)})
    ids = {c.cell_id for c in expand(other)}
    assert baseline.cell_id in ids and pretrain.cell_id not in ids


def test_pretrained_stack_is_loaded_cached_and_recorded(tiny_params, tiny_data, tmp_path):
    cell = _dbn_cell(tiny_params, "pretrain")
    first = run_cell(cell, tiny_data, tmp_path, NO_WANDB)
    record = first.pretraining
    assert record["cached"] is False and record["visible_units"] == "gaussian"
    assert len(record["reconstruction_error_train"]) == cell.depth == len(record["free_energy_gap"])
    stacks = sorted((tmp_path / "pretrained").glob("rbm-*"))
    assert [s.name for s in stacks] == [record["key"]]
    saved = json.loads((tmp_path / "cells" / cell.cell_id / "pretraining.json").read_text())
    assert len(saved["stats"]["layers"]) == cell.depth
    assert [layer["epochs"][-1]["reconstruction_error_val"] for layer in saved["stats"]["layers"]] == \
        pytest.approx(record["reconstruction_error_val"])
    # Another learning rate of the same (data, depth, width, seed) fine-tunes the same stack.
    other_rate = dataclasses.replace(cell, learning_rate=0.03)
    second = run_cell(other_rate, tiny_data, tmp_path, NO_WANDB)
    assert second.pretraining["cached"] is True and second.pretraining["key"] == record["key"]
    # The init probe saw the pretrained net: it differs from the random one of the baseline cell.
    baseline = run_cell(_dbn_cell(tiny_params, "small_init"), tiny_data, tmp_path, NO_WANDB)
    assert baseline.pretraining is None
    assert first.init_log10_dL_dh_first_last != pytest.approx(baseline.init_log10_dL_dh_first_last)


def test_a_stack_pretrained_on_data_made_or_loaded_by_other_data_code_is_not_reused(tiny_data, tmp_path):
    """The key held train.pt's sha256, which a rebuild by other data code can leave the same (torch.save is
    deterministic) while the inputs the RBMs read changed: standardization runs on loading. A change of the data
    code now changes the key (the manifest's ``builder``), so the retrained cells pretrain anew."""
    settings = PretrainingSettings(epochs=1)
    other = dataclasses.replace(tiny_data, manifest={**tiny_data.manifest, "builder": "0123456789ab"})
    records = [pretrain_into(_model(), settings, data, seed=0, dataset_settings={}, cache_root=tmp_path)
               for data in (tiny_data, tiny_data, other)]
    assert [record["cached"] for record in records] == [False, True, False]
    assert records[0]["key"] == records[1]["key"] != records[2]["key"]


def _stack_for(model, data: StoredDataset, settings: PretrainingSettings, root, k: int = 0):
    pretrain_into(model, settings, data, seed=0, dataset_settings={}, cache_root=root, k=k)
    [entry] = sorted(root.glob("rbm-*"))
    key_fields = json.loads((entry / "stats.json").read_text())["key_fields"]
    stack, cached = load_or_pretrain(root, key_fields, make=lambda: pytest.fail("not cached"))
    assert cached
    return stack


@pytest.mark.parametrize("visible_units", ["gaussian", "bernoulli"])
def test_the_net_computes_the_stack_s_up_pass(visible_units, tiny_data, tmp_path):
    model = _model(seeds=(0, 1))
    untouched = _model(seeds=(0, 1))
    settings = PretrainingSettings(epochs=1, visible_units=visible_units)
    stack = _stack_for(model, tiny_data, settings, tmp_path, k=1)  # into model 1 of two
    x = tiny_data.splits["validation"]["x"][:64]
    if visible_units == "bernoulli":
        # The RBM read training-range [0, 1]-scaled inputs; the net reads standardized ones and has
        # the scaling folded into its first layer. Rows inside the training range agree exactly.
        train = tiny_data.splits["train"]["x"]
        low, high = train.min(dim=0).values, train.max(dim=0).values
        x = x[((x >= low) & (x <= high)).all(dim=1)]
        assert len(x) > 0
        rbm_input = (x - low) / (high - low)
    else:
        rbm_input = x
    expected = stack.hidden_probabilities(rbm_input)
    h = x.expand(2, -1, -1)  # both models read the same rows
    for layer, before, want in zip(model.hidden, untouched.hidden, expected):
        h = torch.sigmoid(layer.linear(h))
        assert torch.allclose(h[1], want, atol=1e-5)
        # Model 0 keeps its own random weights (and no folded input scaling).
        assert torch.equal(layer.linear.weight[0], before.linear.weight[0])
        assert torch.equal(layer.linear.bias[0], before.linear.bias[0])
