"""Names vgbench gives things in W&B, defined once for the loggers and the readers.

A cell's run id is derived from its cell id, so a restarted or rerun cell
resumes the same run instead of making a second one of the same name.
"""

from __future__ import annotations

import re

RUN_ID_LIMIT = 64  # W&B's limit on a run id


def cell_run_id(cell_id: str) -> str:
    """The cell id with characters W&B does not allow in ids (the dots of ``lr0.1``) as ``_``.

    The config hash at the end of a cell id is kept whole when the id must be shortened.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", cell_id)
    if len(safe) <= RUN_ID_LIMIT:
        return safe
    prefix, _, config_hash = safe.rpartition("-")
    return f"{prefix[:RUN_ID_LIMIT - len(config_hash) - 1]}-{config_hash}"
