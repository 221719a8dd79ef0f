"""The launcher axis: how ``vgbench train`` gets the cells of a profile trained.

A launcher takes a ``LaunchRequest`` (the cells to train, a snapshot of the
params file, where results go) and returns True once its cells have run (False:
it returned without waiting, as ``slurm --detach`` does); what happened to each
cell is read from the cell files afterwards, never from the launcher. What crosses the
seam to a worker is a ``WorkUnit``: cell ids plus the params snapshot and the
profile name, small and picklable; each worker loads its own data, claims each
cell before training it (``vgbench/claims.py``) and writes its results. So any
mix of launchers, launches and hand-run ``vgbench train`` can share a results
folder without training a cell twice.

- ``serial``: this process, one cell group after another (``launcher.name``'s default; the default profile
  runs ``local`` with two workers).
- ``local``: N worker processes on this machine, pinned to GPUs or given CPU threads.
- ``slurm``: submitit job arrays on a SLURM cluster (the only module importing submitit).
"""

from __future__ import annotations

from typing import Callable

from vgbench.registry import Registry

LAUNCHERS: Registry[Callable] = Registry("launcher")

# Importing a launcher module registers it (one line per launcher).
from vgbench.launch import local, serial, slurm  # noqa: E402,F401
