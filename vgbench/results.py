"""Where cell results live and what makes one current.

``results/cells/<cell_id>/metrics.json`` is the source of truth for everything
downstream; ``grad_profile.json`` beside it holds every probe record. A result
is reused only if it was written for the same resolved config (the cell id)
*and* by the same vgbench code (the code fingerprint), so editing a model file
reruns its cells on the next ``dvc repro``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from functools import lru_cache
from pathlib import Path

import vgbench

PACKAGE_DIR = Path(vgbench.__file__).parent
# Code that only reads results cannot change them; leave it out of the fingerprint.
_NOT_TRAINING_CODE = ("report/", "cli.py")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative.startswith(_NOT_TRAINING_CODE):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def environment() -> dict:
    import lightning
    import torch

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "lightning": lightning.__version__,
        "vgbench": vgbench.__version__, "code_fingerprint": code_fingerprint(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        # CPU results can depend on the thread count (reduction order): keep it with them.
        "torch_threads": torch.get_num_threads(),
    }


def cell_dir(results_root: Path, cell_id: str) -> Path:
    return results_root / "cells" / cell_id


def read_metrics(results_root: Path, cell_id: str) -> dict | None:
    path = cell_dir(results_root, cell_id) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_done(results_root: Path, cell_id: str) -> bool:
    metrics = read_metrics(results_root, cell_id)
    return metrics is not None and metrics.get("environment", {}).get("code_fingerprint") == code_fingerprint()
