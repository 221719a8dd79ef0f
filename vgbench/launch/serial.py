"""``serial``: every cell in this process, one after another."""

from __future__ import annotations

from vgbench.launch import LAUNCHERS
from vgbench.launch.request import LaunchRequest
from vgbench.launch.worker import run_unit


@LAUNCHERS.register("serial")
def launch_serial(request: LaunchRequest) -> bool:
    run_unit(request.unit([cell.cell_id for cell in request.cells]))
    return True
