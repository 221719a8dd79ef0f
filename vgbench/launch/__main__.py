"""``python -m vgbench.launch UNIT.json``: one local worker (vgbench/launch/worker.py).

An entry module of its own: ``python -m vgbench.launch.worker`` would run the worker
module a second time as ``__main__`` after the package had imported it (Python warns).
"""

import sys

from vgbench.launch.worker import main

sys.exit(main())
