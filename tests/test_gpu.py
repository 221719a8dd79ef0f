"""The GPU tier: run with `python -m pytest -m gpu` on a machine with CUDA (skipped elsewhere)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from vgbench.config import WandbSettings
from vgbench.matrix import expand
from vgbench.plan import data_shape
from vgbench.training.run_group import data_for, run_cell
from tests.test_stacking import (FAMILIES_TO_STACK, RESNETS, _deepest_default_cells, _first_cell_of,
                                 assert_a_group_trains_the_same_twice,
                                 assert_opt_in_computes_what_per_model_calls_do, assert_same_model_in_stacks,
                                 fused_rnn_cells, model_four_in_stack, with_grouped_kernels, with_shared_kernel_calls)
from tests.test_training import (assert_a_frozen_model_stays_and_the_others_step_as_if_alone,
                                 assert_augmentation_resumes_where_it_stopped, assert_windows_of_the_padded_images)

# cuBLAS is deterministic only with this workspace setting (Lightning sets it for deterministic trainers; the
# stacking tests below call the models directly), read when the first cuBLAS handle is made.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_cell_on_one_gpu_is_deterministic_and_learns(tiny_params, tiny_data, tmp_path):
    cell = next(c for c in expand(tiny_params.active) if c.family == "mlp" and c.remedy == "he_relu" and c.depth == 2)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1})
    first = run_cell(cell, tiny_data, tmp_path / "a", WandbSettings(mode="disabled"))
    second = run_cell(cell, tiny_data, tmp_path / "b", WandbSettings(mode="disabled"))
    assert first.history == second.history and first.test_metric == second.test_metric
    assert first.trainable and first.environment["cuda"] is not None
    assert first.environment["gpu"] == torch.cuda.get_device_name()


@pytest.mark.parametrize("family, dataset, remedy", [("mlp", "mnist1d", "he_relu"), ("rnn", "copy_memory", "gru")])
def test_under_16_mixed_the_probes_read_the_gradient_of_the_loss_unscaled(family, dataset, remedy, tiny_params,
                                                                           tiny_data_root, tmp_path):
    """16-mixed multiplies the loss by the GradScaler's scale (65536 at first) before backward. The first training
    probe (the same weights and batch under both precisions) reads the same ||dL/dh_t|| to float16's precision:
    the taps take the scale out, and copy memory's recall pass applies it (unscaled, its float16 gradients
    underflowed)."""
    cell = next(c for c in expand(tiny_params.active) if (c.family, c.dataset, c.remedy) == (family, dataset, remedy))
    first_probe = {}
    for precision in ("32-true", "16-mixed"):
        run = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1,
                                                 "precision": precision})
        run_cell(run, data_for(run, tiny_data_root, {}), tmp_path / precision, WandbSettings(mode="disabled"))
        records = json.loads((tmp_path / precision / "cells" / run.cell_id / "grad_profile.json").read_text())["records"]
        first_probe[precision] = next(record for record in records if record["phase"] == "train")
    assert first_probe["16-mixed"]["step"] == first_probe["32-true"]["step"] == 0
    assert first_probe["16-mixed"]["dL_dh_norm"] == pytest.approx(first_probe["32-true"]["dL_dh_norm"], rel=0.05)


@pytest.mark.parametrize("family, remedy", [("rnn", "gru"), ("rnn", "lstm"), ("resnet", "residual"),
                                            ("highway", "highway")])
def test_every_kernel_path_is_deterministic_on_a_gpu(family, remedy, tiny_params, tiny_data_root, tmp_path):
    """cuDNN's fused RNNs (unprobed steps), the unrolled loop (probed steps), convolutions."""
    cell = next(c for c in expand(tiny_params.active) if c.family == family and c.remedy == remedy)
    cell = dataclasses.replace(cell, trainer={**cell.trainer, "accelerator": "gpu", "devices": 1})
    data = data_for(cell, tiny_data_root, {})
    first = run_cell(cell, data, tmp_path / "a", WandbSettings(mode="disabled"))
    second = run_cell(cell, data, tmp_path / "b", WandbSettings(mode="disabled"))
    assert first.history == second.history and first.test_metric == second.test_metric
    assert first.init_log10_dL_dh_first_last == second.init_log10_dL_dh_first_last


def test_pad_crop_flip_runs_on_the_gpu():
    from vgbench.training.augment import pad_crop_flip

    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 6, device="cuda")
    out = pad_crop_flip(x)
    assert out.device == x.device
    assert_windows_of_the_padded_images(x, out)  # the CPU test's check, on what the GPU computed
    # With a CUDA generator of its own, as the training module keeps one per model.
    first = pad_crop_flip(x, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(first, pad_crop_flip(x, torch.Generator(device="cuda").manual_seed(0)))


def test_augmentation_resumes_on_the_gpu_where_it_stopped():
    """A checkpoint of CUDA generators, restored into a module still on the CPU (it raised: a CPU generator
    takes no CUDA state), draws on the GPU what the saving module would have drawn next."""
    assert_augmentation_resumes_where_it_stopped("cuda")


OPT_INS = {"+grouped": with_grouped_kernels, "+shared": with_shared_kernel_calls}


@pytest.mark.parametrize("family", [*FAMILIES_TO_STACK, "resnet+grouped", "rnn+shared"])
def test_a_group_trained_twice_on_a_gpu_is_bit_identical(family, tiny_params, tiny_data_root, tmp_path):
    """What a GPU does guarantee: the same group (recorded in each result) gives the same numbers; also for the
    resnet family's grouped_kernels (one grouped cuDNN convolution and batch norm for the K models) and the
    rnn family's models_per_kernel_call (one cuDNN call for several models)."""
    name, plus, opt_in = family.partition("+")
    base = _first_cell_of(tiny_params, name)
    assert_a_group_trains_the_same_twice(OPT_INS[plus + opt_in](base) if plus else base, "gpu",
                                         tiny_data_root, tmp_path)


@pytest.fixture
def deterministic():
    """Deterministic algorithms, as the cells train (these tests call the models directly)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("cell", _deepest_default_cells(), ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_default_profile_shapes_stack_on_a_gpu(cell, deterministic):
    """On a GPU, cuBLAS's batched product rounds a stack of one differently from a stack of several
    (bench/stack_identity.py measured relative differences of 1e-7 to 6e-4 of a tensor's largest value on
    an H200, and identical numbers for stacks of 5, 9 and 20): a model computes the same numbers in a
    stack of 9 as in one of 20, and the same as alone to float rounding only."""
    assert_same_model_in_stacks(cell, "cuda", reference=20)
    assert_same_model_in_stacks(cell, "cuda", reference=1, relative=1e-2)


@pytest.mark.parametrize("cell", RESNETS, ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_grouped_kernels_on_a_gpu_agree_with_one_call_per_model(cell, deterministic):
    """The same bound as a model alone against the same model in a stack (1% of a tensor's largest value)."""
    assert_opt_in_computes_what_per_model_calls_do(cell, with_grouped_kernels, "cuda", 1e-2)


@pytest.mark.parametrize("cell", fused_rnn_cells("cuda"), ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_shared_kernel_calls_on_a_gpu_agree_with_one_call_per_model(cell, deterministic):
    """cuDNN's calls of 3 models (nets of 3*H units with block-diagonal weights) against one call per model:
    the bound of a model alone against the same model in a stack (1% of a tensor's largest value)."""
    assert_opt_in_computes_what_per_model_calls_do(cell, with_shared_kernel_calls, "cuda", 1e-2)


@pytest.mark.parametrize("cell", [c for c in _deepest_default_cells() if c.family == "rnn"],
                         ids=lambda c: f"{c.family}-{c.remedy}-d{c.depth}")
def test_fused_rnn_calls_on_their_own_streams_compute_what_they_compute_in_turn(cell, monkeypatch):
    """vgbench/models/streams.py: model k's fused call on stream k is the same kernel on the same numbers."""
    import vgbench.models.rnn as rnn

    torch.manual_seed(0)
    x = torch.randn(9, 16, *data_shape(cell).input_shape, device="cuda")
    on_streams = model_four_in_stack(cell, 9, x, armed=False)
    monkeypatch.setattr(rnn, "per_model", lambda call, arguments, device: [call(*args) for args in arguments])
    in_turn = model_four_in_stack(cell, 9, x, armed=False)
    for (name, streamed), (_, sequential) in zip(on_streams, in_turn):
        assert torch.equal(streamed, sequential), name


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_frozen_model_stays_as_it_was_on_a_gpu(name):
    """The optimizer's device mask (vgbench/training/stacked_optim.py) on CUDA tensors."""
    assert_a_frozen_model_stays_and_the_others_step_as_if_alone(name, "cuda")
