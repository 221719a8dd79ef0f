"""Read an offline W&B run back from disk, the way `wandb sync` would see it.

wandb 0.31 no longer ships a Python reader for its transaction log
(``wandb.sdk.internal.datastore`` is gone: wandb-core, in Go, writes it), so
this is a small one. The ``run-<id>.wandb`` file is a LevelDB-style log:

- a 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version 0;
- 32 KiB blocks of chunks, each with a 7-byte header: checksum (uint32 LE),
  length (uint16 LE), type (1 full, 2 first, 3 middle, 4 last); a block tail
  shorter than a chunk header is zero padding;
- each reassembled payload is one ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    raw = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(raw, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    records, pending, offset = [], None, FILE_HEADER.size
    while offset + CHUNK_HEADER.size <= len(raw):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER.size:  # zero padding at a block's end
            offset += room
            continue
        _checksum, length, kind = CHUNK_HEADER.unpack_from(raw, offset)
        if kind == 0 and length == 0:  # zero-filled tail (preallocated or padded)
            offset += room
            continue
        data = raw[offset + CHUNK_HEADER.size: offset + CHUNK_HEADER.size + length]
        offset += CHUNK_HEADER.size + length
        if kind == FULL:
            pending = None
            payloads = [data]
        elif kind == FIRST:
            pending, payloads = bytearray(data), []
        elif kind == MIDDLE:
            pending += data
            payloads = []
        elif kind == LAST:
            payloads, pending = [bytes(pending + data)], None
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at offset {offset}")
        for payload in payloads:
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def _value(item) -> object:
    """An item's value: ``value_json``, or (history items) one of the typed fields."""
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind is None or item.value_json:
        return json.loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _put(target: dict, item) -> None:
    """Set an item in ``target``; a nested key (a logged media object) becomes nested dicts."""
    if not item.nested_key:
        target[item.key] = _value(item)
        return
    *parents, last = item.nested_key
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = _value(item)


def _drop(target: dict, item) -> None:
    if not item.nested_key:
        target.pop(item.key, None)
        return
    *parents, last = item.nested_key
    for part in parents:
        target = target.get(part, {})
    target.pop(last, None)


@dataclass
class OfflineRun:
    """What an offline run recorded: its run record, config, history rows, summary and files."""

    directory: Path
    run: pb.RunRecord
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def files(self) -> Path:
        return self.directory / "files"

    def table(self, key: str) -> dict:
        """The JSON of a logged ``wandb.Table`` (``{"columns": [...], "data": [[...], ...]}``)."""
        ref = self.summary[key]
        assert ref["_type"] == "table-file", ref
        return json.loads((self.files / ref["path"]).read_text())

    def table_rows(self, key: str) -> list[dict]:
        table = self.table(key)
        return [dict(zip(table["columns"], row)) for row in table["data"]]


def _apply(target: dict, change) -> None:
    """Apply a config or summary record (its ``update`` and ``remove`` items) to ``target``."""
    for item in change.update:
        _put(target, item)
    for item in change.remove:
        _drop(target, item)


def read_run(directory: Path) -> OfflineRun:
    """Parse ``<directory>/run-*.wandb`` (an ``offline-run-*`` folder)."""
    [log] = sorted(Path(directory).glob("run-*.wandb"))
    run = None
    config: dict = {}
    history: list[dict] = []
    summary: dict = {}
    exit_code = None
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            for item in record.run.config.update:
                _put(config, item)
        elif kind == "config":
            _apply(config, record.config)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _put(row, item)
            history.append(row)
        elif kind == "summary":
            _apply(summary, record.summary)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert run is not None, f"{log} has no run record"
    # W&B stores each config value as {"value": ..., "desc": ...}; keep the values.
    config = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in config.items()}
    return OfflineRun(Path(directory), run, config, history, summary, exit_code)


def offline_runs(wandb_dir: Path) -> list[Path]:
    """``offline-run-*`` folders under ``wandb_dir`` (the WANDB_DIR; W&B adds a ``wandb/`` level)."""
    return sorted(Path(wandb_dir).rglob("offline-run-*"))


_ENV_TO_CLEAR = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT",
                 "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_DISABLED")


@contextmanager
def wandb_dir_env(directory: Path):
    """Point WANDB_DIR at ``directory`` for the duration, with no account settings around.

    wandb reads the environment once per process, when its setup singleton is
    made, so the singleton is torn down on entry and exit: otherwise a second
    test's WANDB_DIR would be ignored in favour of the first one's.
    """
    import wandb

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DIR", str(directory))
        patch.setenv("WANDB_SILENT", "true")
        for name in _ENV_TO_CLEAR:
            patch.delenv(name, raising=False)
        wandb.teardown()
        try:
            yield directory
        finally:
            wandb.teardown()
