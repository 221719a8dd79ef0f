"""Does a model compute the same numbers whatever the size of the stack it trains in?

For one network per family of the default profile (at its block's deepest depth), model 0 (seed 0) is
built in stacks of K = 1, 2, 5, 9 and 20 models and given the same input; its output and parameter
gradients are compared, bit for bit, with K = 1 and with K = 9. On this CPU every pair is identical
(tests/test_stacking.py asserts it for all 31 default networks); on a GPU cuBLAS picks its batched-product
kernel by shape and batch count, so this script shows where the rounding moves and by how much
(relative to the largest value of the tensor compared). Deterministic algorithms are on throughout.

    python bench/stack_identity.py                  # CPU
    python bench/stack_identity.py --device cuda    # what bench/gpu_session.sh runs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from vgbench.config import load_params  # noqa: E402
from vgbench.matrix import expand  # noqa: E402
from vgbench.plan import build_model, data_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = (("mlp", "he_relu"), ("rnn", "small_init"), ("rnn", "lstm"), ("rnn", "layernorm"), ("resnet", "residual_bn"),
         ("highway", "highway"))
SIZES = (1, 2, 5, 9, 20)


def model_zero(cell, k: int, x: torch.Tensor, device: str, armed: bool) -> list[torch.Tensor]:
    """Model 0's output and parameter gradients in a stack of ``k`` (seeds 0..k-1), on input ``x[:k]``."""
    shape = data_shape(cell)
    model = build_model(dataclasses.replace(cell, seed=0), shape, seeds=list(range(k))).to(device)
    if armed:
        model.taps.arm()
    out = model(x[:k])
    out.pow(2).flatten(1).mean(dim=1).sum().backward()
    model.taps.disarm()
    return [out.detach()[0]] + [p.grad[0] for p in model.parameters()]


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """0.0 when every tensor is bit-identical; else the largest |a - b| / max |b| over the tensors."""
    worst = 0.0
    for u, v in zip(a, b):
        if not torch.equal(u, v):
            worst = max(worst, ((u - v).abs().max() / v.abs().max().clamp_min(1e-30)).item())
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    cells = expand(load_params(args.params, profile="default").active)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"model 0 in stacks of K = {SIZES} on {name}; 0 = bit-identical, else max relative difference")
    print(f"{'network':28}{'path':>9}" + "".join(f"{f'K={k} vs 1':>12}" for k in SIZES[1:])
          + "".join(f"{f'K={k} vs 9':>12}" for k in SIZES if k not in (1, 9)))
    for family, remedy in CASES:
        cell = max((c for c in cells if (c.family, c.remedy) == (family, remedy)), key=lambda c: c.depth)
        torch.manual_seed(0)
        x = torch.randn(max(SIZES), 16, *data_shape(cell).input_shape).to(args.device)
        for armed in (False, True):
            runs = {k: model_zero(cell, k, x, args.device, armed) for k in SIZES}
            diffs = [largest_difference(runs[k], runs[1]) for k in SIZES[1:]]
            diffs += [largest_difference(runs[k], runs[9]) for k in SIZES if k not in (1, 9)]
            print(f"{f'{family}-{remedy}-d{cell.depth}':28}{'probed' if armed else 'plain':>9}"
                  + "".join(f"{d:12.1e}" if d else f"{'0':>12}" for d in diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
