"""Kernel calls that overlap on a GPU: one CUDA stream per call.

Where a stacked layer calls a kernel once per model (cuDNN's fused RNNs), or
once per few models (the rnn family's shared calls), a GPU would run the calls
one after another although none reads another's output, and a fused RNN over a
short batch leaves most of the GPU idle (its time steps are sequential).
Issuing call k on stream k lets the calls run side by side. Each call is the
same kernel on the same numbers as without streams, so the results are
bit-identical (the ``gpu`` test tier checks it); autograd runs each call's
backward on the stream of its forward. On CPU, or for one call, the calls run
inline.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

MAX_STREAMS = 32  # torch's pool per device and priority; more models share streams round robin


@functools.cache
def _streams(device_index: int, count: int) -> tuple[torch.cuda.Stream, ...]:
    return tuple(torch.cuda.Stream(device=device_index) for _ in range(count))


def per_model(call: Callable[..., torch.Tensor], arguments: Sequence[tuple],
              device: torch.device) -> list[torch.Tensor]:
    """``[call(*arguments[k]) for k]``; on a GPU each on its own stream, joined back to the current one."""
    if device.type != "cuda" or len(arguments) == 1:
        return [call(*args) for args in arguments]
    main = torch.cuda.current_stream(device)
    streams = _streams(device.index if device.index is not None else torch.cuda.current_device(),
                       min(len(arguments), MAX_STREAMS))
    outputs = []
    for k, args in enumerate(arguments):
        stream = streams[k % len(streams)]
        stream.wait_stream(main)  # its inputs were made on the current stream
        with torch.cuda.stream(stream):
            outputs.append(call(*args))
    for stream in streams:
        main.wait_stream(stream)
    for output in outputs:
        # Made on a side stream, read on the current one: not to be reused before that read is done.
        output.record_stream(main)
    return outputs
