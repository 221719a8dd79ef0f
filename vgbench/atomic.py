"""Write files and folders so that a reader never sees half of one.

Every file vgbench keeps (results, data sets, RBM stacks, reports) goes to a
temporary sibling first and is renamed into place, so an interrupted run leaves
either the old file or the new one. The data reaches the disk (``fsync``)
before the rename: otherwise a power cut can leave the rename done and the data
not, an empty file under the final name, on file systems that order the two
freely (XFS, ext4 with ``noauto_da_alloc``, many network file systems). The
epoch checkpoint, which Lightning writes, and a claim (claims.py, linked into
place) are synced with ``sync_file`` first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a write to an open handle (a full disk) does not say which file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def sync_file(path: Path | str) -> None:
    """Put a file another writer made (savefig, torch.save, Lightning's checkpoint) on the disk before it is
    renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            sync_file(path)


@contextmanager
def replace_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        _sync_files(tmp)
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:  # the new folder did not go in: the old one goes back
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged(root: Path | str, whole_folders: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder inside ``root`` to write a set of outputs into; on success move
    them into ``root`` (files one by one with ``os.replace``, each of ``whole_folders`` as a whole, its old
    contents dropped), on failure drop them all: ``root`` keeps either the whole old set or the whole new
    one, never a mix (the slow, failure-prone work happens before the first rename)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".staged."))
    try:
        yield tmp
        _sync_files(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp).parts[0] not in whole_folders)
        for path in files:  # every destination folder exists (or fails) before the first rename
            (root / path.relative_to(tmp)).parent.mkdir(parents=True, exist_ok=True)
        for folder in whole_folders:
            if (tmp / folder).is_dir():
                with replace_dir(root / folder) as target:
                    os.rmdir(target)
                    os.replace(tmp / folder, target)
        for path in files:
            os.chmod(path, 0o644)
            os.replace(path, root / path.relative_to(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
