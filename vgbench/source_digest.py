"""One digest of source files, for the fingerprints that say which code made a stored thing.

Three things on disk are only as current as the code that made them: a cell's result
(``results.code_fingerprint``), a stored data set (``data.store.builder_fingerprint``) and a
pretrained RBM stack (``pretraining.cache.maker_fingerprint``). Each hashes its own set of
modules the same way, here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable


def source_digest(root: Path, files: Iterable[Path], *versions: str) -> str:
    """12 hex characters of sha256 over each file's path relative to ``root`` and its bytes (in sorted
    order), then ``versions`` (such as "torch==2.14.1"): any edit, rename or version change moves it."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for version in versions:
        digest.update(version.encode())
    return digest.hexdigest()[:12]
