"""Two kernel paths that might make a GPU group step faster, timed against today's before any model uses them.

1. **LSTM weights laid out for cuDNN.** Today model k's fused call reads its slices of the stacked
   ``[K, ...]`` weights, and cuDNN copies them into its own layout at every call (0.6 ms of host time per
   call on an H200, bench/README.md; PyTorch's check for a ready layout looks from the start of the
   weights' storage, so in a stack only model 0 could pass it). Here the K models' weights live in one
   ``[K, P]`` buffer, each row laid out as cuDNN wants (offsets read off ``torch._cudnn_rnn_flatten_weight``
   for one model), the stacked weights are strided views into it, and model k's call hands row k to cuDNN
   as its weight buffer (``torch._cudnn_rnn``): nothing to copy.
2. **A grouped convolution for the ResNet** (HFTA's way): one ``conv2d`` with ``groups=K`` over
   ``[N, K*C, H, W]`` instead of K calls, the layout copies included.
3. **Several LSTMs in one fused call** (the rnn family's ``models_per_kernel_call``): P models as one net of
   P*H units with block-diagonal weights, K/P calls for P times the arithmetic, for P from 1 (today) to K,
   at the default profile's shape (H = 32) and the paper profile's (H = 128, batch 64, K = 15).
4. **A whole residual block channel-stacked** (the resnet family's ``grouped_kernels``): grouped
   convolutions *and* one batch norm over K*C channels, activations kept as ``[N, K*C, ...]``, against the
   default ``StackedConv``/``StackedNorm`` (one call per model each): what the ResNet gains from the
   layout, not from the convolution alone.

Per path: ms per forward + backward (median of ``--repeats`` after warm-up, CUDA-synchronized) and the
largest difference from today's path relative to the largest value (0: bit-identical). The LSTM buffer part
needs CUDA; the others also run on CPU (the shared calls there at the default profile's shape only).

    python bench/gpu_paths.py                      # on a GPU (bench/gpu_session.sh stage gpu_paths)
    python bench/gpu_paths.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as the cells train

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vgbench.models import FAMILIES, ModelIO  # noqa: E402
from vgbench.models.recipe import Recipe  # noqa: E402
from vgbench.models.streams import per_model  # noqa: E402

LSTM_MODE = 2  # cuDNN's mode number for an LSTM (torch.backends.cudnn.rnn.get_cudnn_mode("LSTM"))


def timed(step, repeats: int, device: str) -> float:
    """Median ms of ``step()`` (forward and backward) after three warm-up calls."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def cudnn_lstm_layout(features: int, hidden: int) -> tuple[int, list[int]]:
    """(elements, offsets of W_ih, W_hh, b_ih, b_hh) of one LSTM's weights in cuDNN's flat buffer."""
    weights = [torch.zeros(4 * hidden, features, device="cuda"), torch.zeros(4 * hidden, hidden, device="cuda"),
               torch.zeros(4 * hidden, device="cuda"), torch.zeros(4 * hidden, device="cuda")]
    flat = torch._cudnn_rnn_flatten_weight(weights, 4, features, LSTM_MODE, hidden, 0, 1, True, False)
    offsets = [(w.data_ptr() - flat.data_ptr()) // w.element_size() for w in weights]
    if not all(0 <= offset < flat.numel() for offset in offsets):
        raise RuntimeError(f"the weights were not re-pointed into cuDNN's buffer (offsets {offsets})")
    return flat.numel(), offsets


def lstm_paths(models: int, batch: int, steps: int, features: int, hidden: int, repeats: int) -> None:
    torch.manual_seed(0)
    shapes = [(4 * hidden, features), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    stacked = [torch.randn(models, *shape, device="cuda").mul_(0.1).requires_grad_() for shape in shapes]
    x = torch.randn(models, batch, steps, features, device="cuda")
    h0 = torch.zeros(1, batch, hidden, device="cuda")

    # The buffer path: [K, P] rows in cuDNN's layout (P padded to 256 bytes), the weights strided views.
    size, offsets = cudnn_lstm_layout(features, hidden)
    row = -(-size // 64) * 64
    buffer = torch.zeros(models, row, device="cuda")
    views = []
    for weight, offset in zip(stacked, offsets):
        inner = weight.shape[1:]
        strides = (row, *torch.empty(inner).stride())
        view = buffer.as_strided((models, *inner), strides, offset)
        view.copy_(weight.detach())
        views.append(torch.nn.Parameter(view))

    def today():
        args = list(zip(x.unbind(0), *(w.unbind(0) for w in stacked)))
        out = per_model(lambda x_k, *flat: torch._VF.lstm(x_k, (h0, h0), list(flat), True, 1, 0.0, True, False,
                                                          True)[0], args, x.device)
        return torch.stack(out)

    def from_buffer():
        args = list(zip(x.unbind(0), buffer.unbind(0), *(w.unbind(0) for w in views)))
        out = per_model(lambda x_k, buf_k, *flat: torch._cudnn_rnn(
            x_k, list(flat), 4, buf_k, h0, h0, LSTM_MODE, hidden, 0, 1, True, 0.0, True, False, [], None)[0],
            args, x.device)
        return torch.stack(out)

    def separate():
        for k in range(models):
            lstms[k](x[k])[0].pow(2).mean().backward()

    lstms = [torch.nn.LSTM(features, hidden, batch_first=True).cuda() for _ in range(models)]
    times, values = {}, {}
    for name, forward, params in (("today: slices, copied per call", today, stacked),
                                  ("cuDNN-laid-out buffer", from_buffer, views)):
        def step(forward=forward, params=params):
            for p in params:
                p.grad = None
            forward().pow(2).mean().backward()
        times[name] = timed(step, repeats, "cuda")
        step()
        values[name] = [forward().detach(), *(p.grad.clone() for p in params)]
    times[f"{models} separate nn.LSTM"] = timed(separate, repeats, "cuda")
    difference = relative_difference(values["cuDNN-laid-out buffer"], values["today: slices, copied per call"])
    print(f"LSTM K={models}, batch {batch}, T={steps}, hidden {hidden}: forward+backward ms "
          f"(buffer vs today: max rel. difference {difference:.2g})")
    for name, ms in times.items():
        print(f"  {name:34}{ms:8.2f}")


def shared_rnn_calls(models: int, batch: int, steps: int, hidden: int, calls_of: list[int], device: str,
                     repeats: int) -> None:
    """The production LSTM (``RecurrentNet.fused_calls``, unprobed) with calls of P models, P in ``calls_of``:
    forward + backward ms, and the largest difference from one call per model."""
    entry = FAMILIES.get("rnn")
    x = torch.randn(models, batch, steps, 2, device=device)  # the adding task's two features
    print(f"LSTM K={models}, batch {batch}, T={steps}, hidden {hidden} on {device}: forward+backward ms per "
          f"call size P (calls of P models as one block-diagonal net)")
    reference = None
    for size in calls_of:
        torch.manual_seed(0)
        model = entry.build(ModelIO((steps, 2), 1, False), steps, Recipe(cell="lstm"),
                            entry.hparams(hidden_size=hidden, models_per_kernel_call=size), list(range(models)))
        model = model.to(device)

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model.fused_calls(x).pow(2).mean().backward()
            return [p.grad for p in model.rnn.parameters()]

        ms = timed(step, repeats, device)
        values = [model.fused_calls(x).detach(), *step()]
        reference = reference or (ms, values)
        print(f"  P = {size:2d}, {-(-models // size):2d} call(s): {ms:8.2f}   ({reference[0] / ms:.2f}x)   "
              f"max rel. difference {relative_difference(values, reference[1]):.2g}")


def conv_paths(models: int, batch: int, device: str, repeats: int) -> None:
    print(f"3x3 convolution, K={models}, batch {batch}: forward+backward ms (per-model calls | one grouped call)")
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        torch.manual_seed(0)
        x = torch.randn(models, batch, channels, size, size, device=device)
        weight = (0.1 * torch.randn(models, channels, channels, 3, 3, device=device)).requires_grad_()

        def per_call():
            return torch.stack([F.conv2d(x_k, w_k, padding=1) for x_k, w_k in zip(x.unbind(0), weight.unbind(0))])

        def grouped():
            flat = x.transpose(0, 1).reshape(batch, models * channels, size, size)
            out = F.conv2d(flat, weight.reshape(models * channels, channels, 3, 3), padding=1, groups=models)
            return out.view(batch, models, channels, size, size).transpose(0, 1)

        values, times = [], []
        for forward in (per_call, grouped):
            def step(forward=forward):
                weight.grad = None
                forward().pow(2).mean().backward()
            times.append(timed(step, repeats, device))
            step()
            values.append([forward().detach(), weight.grad.clone()])
        print(f"  {channels:3d} channels {size:2d}x{size:<2d} {times[0]:8.2f} | {times[1]:8.2f}   "
              f"max rel. difference {relative_difference(values[1], values[0]):.2g}")


def block_paths(models: int, batch: int, device: str, repeats: int) -> None:
    """A whole residual block (conv, BN, ReLU, conv, BN, + x, ReLU) as the ResNet trains it by default
    (``StackedConv`` and ``StackedNorm``: one kernel call per model) against the same parameters with
    ``grouped=True``, the resnet family's ``grouped_kernels``: HFTA's channel-stacked layout, activations
    ``[N, K*C, ...]`` in memory, grouped convolutions and one batch norm over K*C channels (per-model
    statistics, since each channel belongs to one model). A grouped convolution alone leaves the K
    batch-norm calls and the layout copies in place; this is the layout's whole gain."""
    import copy

    from vgbench.models.stacked import StackedConv, StackedNorm

    print(f"residual block, K={models}, batch {batch}: forward+backward ms (one call per model | "
          "grouped_kernels: grouped conv + one batch norm)")
    for dims, channels, size in ((1, 16, 40), (2, 16, 32), (2, 64, 8)):  # MNIST-1D's ResNet; CIFAR's stages
        torch.manual_seed(0)
        spatial = (size,) * dims
        per_model = torch.nn.ModuleList(
            [StackedConv(models, dims, channels, channels, 3, padding=1, bias=False) for _ in range(2)]
            + [StackedNorm(models, channels, "batchnorm") for _ in range(2)]).to(device)
        for layer in per_model:
            for k in range(models):
                layer.init_model(k)
        grouped = copy.deepcopy(per_model)
        for layer in grouped:
            layer.grouped = True
        x = torch.randn(models, batch, channels, *spatial, device=device)

        def block(layers):
            conv1, conv2, norm1, norm2 = layers
            return torch.relu(norm2(conv2(torch.relu(norm1(conv1(x))))) + x)

        values, times = [], []
        for layers in (per_model, grouped):
            def step(layers=layers):
                for p in layers.parameters():
                    p.grad = None
                block(layers).pow(2).mean().backward()
            times.append(timed(step, repeats, device))
            step()
            values.append([block(layers).detach(), *(p.grad.clone() for p in layers.parameters())])
        print(f"  {dims}-D {channels:3d} channels, size {size:2d} {times[0]:8.2f} | {times[1]:8.2f}   "
              f"({times[0] / times[1]:.2f}x) max rel. difference {relative_difference(values[1], values[0]):.2g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--models", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)  # as the cells train
    if args.device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
        for steps in (50, 200):  # the default profile's T = 50; the paper's adding task starts at 100
            lstm_paths(args.models, 128, steps, 2, 128, args.repeats)
        shared_rnn_calls(15, 64, 100, 128, [1, 2, 3, 5, 15], "cuda", args.repeats)  # the paper profile's adding row
    shared_rnn_calls(args.models, 50, 50, 32, [1, 3, args.models], args.device, args.repeats)  # the default's
    conv_paths(args.models, 128, args.device, args.repeats)
    block_paths(args.models, 128, args.device, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
