"""The GPU tier: run with `python -m pytest -m gpu` on a machine with CUDA (skipped elsewhere)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vgbench.config import WandbSettings
from vgbench.matrix import expand
from vgbench.training.run_group import run_cell

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_cell_on_one_gpu_is_deterministic_and_learns(tiny_params, tiny_data, tmp_path):
    cell = next(c for c in expand(tiny_params.active) if c.family == "mlp" and c.remedy == "he_relu" and c.depth == 2)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1})
    first = run_cell(cell, tiny_data, tmp_path / "a", WandbSettings(mode="disabled"))
    second = run_cell(cell, tiny_data, tmp_path / "b", WandbSettings(mode="disabled"))
    assert first.history == second.history and first.test_metric == second.test_metric
    assert first.trainable and first.environment["cuda"] is not None


@pytest.mark.parametrize("family, remedy", [("rnn", "gru"), ("rnn", "lstm"), ("resnet", "residual"),
                                            ("highway", "highway")])
def test_every_kernel_path_is_deterministic_on_a_gpu(family, remedy, tiny_params, tiny_data_root, tmp_path):
    """cuDNN's fused RNNs (unprobed steps), the unrolled loop (probed steps), convolutions."""
    from vgbench.training.run_group import data_for

    cell = next(c for c in expand(tiny_params.active) if c.family == family and c.remedy == remedy)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1})
    data = data_for(cell, tiny_data_root, {})
    first = run_cell(cell, data, tmp_path / "a", WandbSettings(mode="disabled"))
    second = run_cell(cell, data, tmp_path / "b", WandbSettings(mode="disabled"))
    assert first.history == second.history and first.test_metric == second.test_metric
    assert first.init_log10_dL_dh_first_last == second.init_log10_dL_dh_first_last


def test_pad_crop_flip_runs_on_the_gpu():
    from vgbench.training.augment import pad_crop_flip

    x = torch.randn(8, 3, 32, 32, device="cuda")
    out = pad_crop_flip(x)
    assert out.device == x.device and out.shape == x.shape
    # With a CUDA generator of its own, as the training module keeps one per model.
    first = pad_crop_flip(x, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(first, pad_crop_flip(x, torch.Generator(device="cuda").manual_seed(0)))
