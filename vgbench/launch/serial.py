"""``serial``: every cell in this process, one after another."""

from __future__ import annotations

from vgbench import cpu_kernels
from vgbench.launch import LAUNCHERS
from vgbench.launch.request import LaunchRequest
from vgbench.launch.worker import run_unit


@LAUNCHERS.register("serial")
def launch_serial(request: LaunchRequest) -> bool:
    with cpu_kernels.pinned(request.params.active.trainer.cpu_capability):  # before this process's first kernel
        run_unit(request.unit([cell.cell_id for cell in request.cells]))
    return True
