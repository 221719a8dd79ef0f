"""Several small RNNs in one fused-kernel call, without letting them mix (the rnn family's
``models_per_kernel_call``).

A fused RNN kernel (cuDNN's on a GPU) runs one net. P models of H units become
one net of P*H units whose weights are block-diagonal: gate g of model p is a
block of rows that reads only model p's columns, so the net computes the P
models' functions side by side, at P times the arithmetic, in one call instead
of P. On a GPU a small model's call leaves the device idle, so fewer, larger
calls can pay; on a CPU they cannot (bench/README.md).

The zeros that keep the models apart are multiplied in inside the kernel, and
0 * inf is nan: a model whose numbers blow up reaches every model of its call,
forwards through its states (an IRNN's unbounded state, weights that
overflowed) and backwards through its state gradients (a gradient exploding
through time, or a diverged model's masked loss, whose gradient is 0 * inf). So
a shared call is trusted only where it cannot have mixed models: its outputs
finite (forward) and its weights' gradients finite (backward). A call that
fails either check is made again one model at a time, which gives every model
what a call of its own gives, the culprit its own non-finite numbers included.
Each check costs one wait for the device per pass, and only shared calls pay it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from vgbench.models.streams import per_model

# (inputs [N, T, models*F], [W_ih, W_hh, b_ih, b_hh] of one net, models) -> states [models, N, T, H]
FusedCall = Callable[[torch.Tensor, Sequence[torch.Tensor], int], torch.Tensor]


def block_diagonal(weights: torch.Tensor, gates: int) -> torch.Tensor:
    """P models' ``[gates*H, C]`` matrices as one ``[gates*P*H, P*C]`` matrix in PyTorch's gate order: gate g of
    model p is rows ``(g*P + p)*H ...`` and reads columns ``p*C ...`` only. The zeros are selected, not
    multiplied in, so a non-finite weight stays in its own model's block; the gradient of each model's
    block is the dense gradient's block, exactly."""
    models, rows, columns = weights.shape
    per_gate = weights.view(models, gates, rows // gates, columns).transpose(0, 1)  # [G, P, H, C]
    own = torch.eye(models, dtype=torch.bool, device=weights.device).view(1, models, 1, models, 1)
    return torch.where(own, per_gate.unsqueeze(3), 0.0).reshape(models * rows, models * columns)


def gate_major(biases: torch.Tensor, gates: int) -> torch.Tensor:
    """P models' ``[gates*H]`` vectors as one ``[gates*P*H]`` vector, in ``block_diagonal``'s row order."""
    models, rows = biases.shape
    return biases.view(models, gates, rows // gates).transpose(0, 1).reshape(models * rows)


def calls_of(models: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of each call: ``size`` models each, the last one what is left."""
    return [(start, min(start + size, models)) for start in range(0, models, size)]


def one_by_one(call: FusedCall, x: torch.Tensor, weights: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Models start..stop-1, a call each: ``[stop - start, N, T, H]``."""
    return torch.cat([call(x[k], [w[k] for w in weights], 1) for k in range(start, stop)])


def shared(call: FusedCall, gates: int, x: torch.Tensor, weights: Sequence[torch.Tensor], start: int,
           stop: int) -> torch.Tensor:
    """Models start..stop-1 in one call (inputs ``[N, T, P*F]``, block-diagonal weights): ``[P, N, T, H]``."""
    if stop - start == 1:
        return one_by_one(call, x, weights, start, stop)
    w_ih, w_hh, b_ih, b_hh = (w[start:stop] for w in weights)
    return call(x[start:stop].permute(1, 2, 0, 3).flatten(2),
                [block_diagonal(w_ih, gates), block_diagonal(w_hh, gates), gate_major(b_ih, gates),
                 gate_major(b_hh, gates)], stop - start)


def checked(call: FusedCall, gates: int, size: int, x: torch.Tensor,
            weights: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[bool]]:
    """Each call's states, and whether it stayed shared: a call with a non-finite output is made again one
    model at a time (one wait for the device, after all calls are issued, so that they overlap on a GPU)."""
    calls = calls_of(x.shape[0], size)
    outputs = per_model(lambda start, stop: shared(call, gates, x, weights, start, stop), calls, x.device)
    finite = torch.stack([output.isfinite().all() for output in outputs]).tolist()
    return ([output if ok else one_by_one(call, x, weights, start, stop)
             for output, ok, (start, stop) in zip(outputs, finite, calls)], finite)


class SharedFusedCalls(torch.autograd.Function):
    """The backward check needs a say in the gradients: a call's graph is built inside, on detached copies
    of the weights, and its gradients are replaced, model by model, where they are not all finite."""

    @staticmethod
    def forward(ctx, call: FusedCall, gates: int, size: int, x: torch.Tensor, *weights: torch.Tensor):
        ctx.call, ctx.size, ctx.x = call, size, x
        # Mixed precision: the backward's calls must run as the forward's did (autocast is off in backward).
        ctx.autocast = [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                        if torch.is_autocast_enabled(device)]
        ctx.leaves = [w.detach().requires_grad_() for w in weights]
        with torch.enable_grad():
            ctx.outputs, ctx.shared = checked(call, gates, size, x, ctx.leaves)
        return torch.cat([output.detach() for output in ctx.outputs])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        call, x, leaves, calls = ctx.call, ctx.x, ctx.leaves, calls_of(ctx.x.shape[0], ctx.size)
        grads = list(torch.autograd.grad(ctx.outputs, leaves, [grad[start:stop] for start, stop in calls]))
        finite = torch.stack([torch.stack([g[start:stop].isfinite().all() for g in grads]).all()
                              for start, stop in calls]).tolist()
        for (start, stop), was_shared, ok in zip(calls, ctx.shared, finite):
            if was_shared and not ok:
                again = [leaf.detach().requires_grad_() for leaf in leaves]
                with torch.enable_grad(), contextlib.ExitStack() as autocast:
                    for device, dtype in ctx.autocast:
                        autocast.enter_context(torch.autocast(device, dtype=dtype))
                    states = one_by_one(call, x, again, start, stop)
                for g, own in zip(grads, torch.autograd.grad(states, again, grad[start:stop])):
                    g[start:stop] = own[start:stop]
        del ctx.outputs, ctx.leaves
        return (None, None, None, None, *grads)


def shared_fused_calls(call: FusedCall, gates: int, size: int, x: torch.Tensor,
                       weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The K models' states ``[K, N, T, H]`` from calls of ``size`` models, checked both ways (module doc)."""
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        return SharedFusedCalls.apply(call, gates, size, x, *weights)
    return torch.cat(checked(call, gates, size, x, weights)[0])  # no backward: the forward check alone
