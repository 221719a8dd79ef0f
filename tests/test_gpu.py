"""The GPU tier: run with `python -m pytest -m gpu` on a machine with CUDA (skipped elsewhere)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vgbench.config import WandbSettings
from vgbench.matrix import expand
from vgbench.training.run_cell import run_cell

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_cell_on_one_gpu_is_deterministic_and_learns(tiny_params, tiny_data, tmp_path):
    cell = next(c for c in expand(tiny_params.active) if c.remedy == "he_relu" and c.depth == 2)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1})
    first = run_cell(cell, tiny_data, tmp_path / "a", WandbSettings(mode="disabled"))
    second = run_cell(cell, tiny_data, tmp_path / "b", WandbSettings(mode="disabled"))
    assert first["history"] == second["history"] and first["test_metric"] == second["test_metric"]
    assert first["trainable"] and first["environment"]["cuda"] is not None
