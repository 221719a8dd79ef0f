"""Which vector kernels torch's CPU operations run, pinned where a profile asks (``trainer.cpu_capability``).

torch dispatches its CPU operations to the best instruction set the CPU has: AVX-512 on one machine, AVX2
on another, and the two sum in another order, so the same cell rounds differently and its row can move
(README, "Across machines"). Two libraries choose for themselves: ATen's vectorized kernels (elementwise
operations, reductions, the optimizer), capped by ``ATEN_CPU_CAPABILITY``, and oneDNN's convolutions, capped
by ``ONEDNN_MAX_CPU_ISA``. Pinning both makes CPUs of different generations run the same kernels: on an
AVX-512 Zen 5, ATen at AVX2 gave the AVX2 machines' (Zen 1, Zen 3) MLP, RNN, DBN and highway tables in
every printed digit (its own AVX-512 kernels had moved 23 of 68 rows), and oneDNN at AVX2 the ResNet
rows too. MKL's matrix products keep their own dispatch, by CPU vendor: the same on those three AMD CPUs,
not known for an Intel one (README, "Across machines").

Both libraries read their variable once, at a process's first operation of their kind, so the pin must be
in a process's environment before it computes anything: the launchers put it there for their workers
(``environment``, ``pinned``), and every group checks what it got (``check``) instead of recording results
under a config they did not run with. The check asks each library what it runs, not what its variable
says: a process whose oneDNN ran a primitive before the variable was set keeps its first choice, and only
oneDNN's own report (``onednn_isa``) shows it. x86-64 only: other architectures have other kernel families
(NEON, SVE), and there the pin does not apply; each result records the kernels that ran (``cpu_capability``,
``onednn_isa``) and the cap asked for (``onednn_max_cpu_isa``).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

ENV = "ATEN_CPU_CAPABILITY"
ONEDNN_ENV = "ONEDNN_MAX_CPU_ISA"
# ATen's x86 levels, lowest first ("default": no vector kernels), each with oneDNN's name for it (its floor is
# SSE4.1; AVX512_CORE is the float32 level, where VNNI, BF16 and AMX speed up only other types).
ONEDNN_LEVELS = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
LEVELS = tuple(ONEDNN_LEVELS)  # what trainer.cpu_capability allows (config.py), in order
# What oneDNN calls those levels when it says what it runs (the "isa:" line of its verbose log; oneDNN 3).
ONEDNN_ISA_NAMES = {"SSE41": "Intel SSE4.1", "AVX2": "Intel AVX2",
                    "AVX512_CORE": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions"}
ISA_MARK = ",info,cpu,isa:"  # in the header line "onednn_verbose,v1,info,cpu,isa:Intel AVX2"
X86_64 = {"x86_64", "amd64"}


class CpuKernelsError(RuntimeError):
    """A process runs other CPU kernels than its cells' ``trainer.cpu_capability`` names."""


def applies() -> bool:
    """Does a pin apply on this machine (an x86-64 CPU)?"""
    return platform.machine().lower() in X86_64


def environment(capability: str | None) -> dict[str, str]:
    """The variables a worker process needs for ``capability`` (none where the profile does not pin one).
    Set whatever the launching machine is: a SLURM node may be another one, and checks for itself."""
    return {ENV: capability, ONEDNN_ENV: ONEDNN_LEVELS[capability]} if capability else {}


def pin_this_process(capability: str | None) -> None:
    """For a process that trains or times cells itself (``vgbench plan``, the bench/ scripts): call it before
    the process's first torch operation, as a worker's environment has the pin from its start."""
    os.environ.update(environment(capability))


@contextmanager
def pinned(capability: str | None) -> Iterator[None]:
    """This process's environment with the pin, restored afterwards (the serial launcher trains in the
    command's own process; its subprocesses, W&B's included, must not keep the setting)."""
    before = {key: os.environ.get(key) for key in environment(capability)}
    os.environ.update(environment(capability))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def running() -> str:
    """The kernels torch runs in this process, lower case ("avx2"), as ``trainer.cpu_capability`` spells them."""
    import torch

    return torch.backends.cpu.get_cpu_capability().lower()


@functools.cache
def onednn_isa() -> str | None:
    """The instruction set oneDNN's primitives run in this process, in oneDNN's words ("Intel AVX2"); None
    where this torch has no oneDNN, or where oneDNN did not say (a build without its verbose log, or a header
    spent earlier in the process by ``ONEDNN_VERBOSE``), which ``check`` refuses under a pin.

    torch exposes no getter, but oneDNN names its instruction set once per process, in the header of its
    verbose log, which it writes to standard output at the first primitive run while verbose is on: one
    small convolution (called through oneDNN directly, so torch's choice of backend cannot route around
    it) under verbose, its output caught at the file descriptor, reads that line. Cached, as oneDNN fixes
    its choice at its first primitive: asked again later in the process, the answer cannot differ."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None

    def convolve() -> None:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            torch.ops.aten.mkldnn_convolution(torch.ones(1, 8, 8, 8), torch.ones(8, 8, 3, 3), None, [1, 1],
                                              [1, 1], [1, 1], 1)

    lines = _standard_output_of(convolve).splitlines()
    # Anything else written meanwhile (another thread's output) goes on to where it was going.
    sys.stdout.write("".join(f"{line}\n" for line in lines if not line.startswith("onednn_verbose")))
    names = [line.partition(ISA_MARK)[2] for line in lines
             if line.startswith("onednn_verbose") and ISA_MARK in line]
    return names[0] if names else None


def _standard_output_of(action: Callable[[], None]) -> str:
    """What this process writes to file descriptor 1 (oneDNN writes there from C) while ``action`` runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 1)
        try:
            action()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        caught.seek(0)
        return caught.read().decode(errors="replace")


def check(capability: str | None) -> None:
    """Raise unless this process runs ``capability``'s kernels (where a pin applies), asking ATen
    (``running``) and oneDNN (``onednn_isa``) what they run: a variable set too late is caught too.

    Called before a group's first primitive, it reads oneDNN's answer pinned or not: the result records it
    (``results.environment``) after the fit, when a verbose log (``ONEDNN_VERBOSE``) has spent its header."""
    import torch

    isa = onednn_isa()
    if not capability or not applies():
        return
    now, onednn = running(), os.environ.get(ONEDNN_ENV)
    if now != capability:
        why = (f"this CPU has no {capability} kernels, or torch had already run an operation when {ENV} was set"
               if os.environ.get(ENV) == capability else
               f"{ENV} is {os.environ.get(ENV)!r}: it must be {capability!r} before torch runs its first operation "
               f"(vgbench's launchers set it for their workers; in your own Python, export it before starting)")
        raise CpuKernelsError(f"trainer.cpu_capability is {capability!r} but torch runs {now} kernels in this "
                              f"process: {why}")
    wanted = ONEDNN_ISA_NAMES[ONEDNN_LEVELS[capability]]
    if isa == wanted or not torch.backends.mkldnn.is_available():  # no oneDNN: nothing of it to pin
        return
    if isa is None:
        raise CpuKernelsError(f"trainer.cpu_capability is {capability!r} but oneDNN did not say which instruction "
                              f"set it runs in this process, so its pin ({ONEDNN_ENV}) cannot be confirmed: its "
                              f"verbose header was spent before vgbench asked (unset ONEDNN_VERBOSE), or this torch "
                              f"was built without oneDNN's verbose log")
    why = ("oneDNN had already run a primitive when it was set" if onednn == ONEDNN_LEVELS[capability] else
           f"it must be {ONEDNN_LEVELS[capability]!r} before oneDNN runs its first primitive (vgbench's launchers "
           f"set it for their workers; in your own Python, export it before starting)")
    raise CpuKernelsError(f"trainer.cpu_capability is {capability!r} but oneDNN runs {isa!r}, not {wanted!r}, in "
                          f"this process: {ONEDNN_ENV} is {onednn!r}; {why}")


def best_here() -> str:
    """The best level this machine's torch runs, asked of a fresh process (this one's may already be pinned)."""
    env = {key: value for key, value in os.environ.items() if key != ENV}
    completed = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                               env=env, capture_output=True, text=True, check=True)
    return completed.stdout.strip().lower()


def unavailable(capability: str | None, best: str | None = None) -> str | None:
    """Why ``capability`` cannot be pinned on a machine whose torch runs ``best`` at most (this one's where
    None), or None where it can or no pin applies: the command line refuses such a profile before training."""
    if not capability or not applies() or capability not in LEVELS:
        return None
    best = best or best_here()
    if best in LEVELS and LEVELS.index(capability) > LEVELS.index(best):
        allowed = ", ".join(LEVELS[:LEVELS.index(best) + 1])
        return (f"trainer.cpu_capability = {capability!r}: this CPU runs at most {best} kernels; allowed here: "
                f"{allowed}, or null for the best it has")
    return None
