"""Pretrained stacks on disk, computed once and shared by every fine-tuning cell.

A stack depends only on the data, the widths, the seed, whether the first
layer is Gaussian and the ``PretrainSettings``, not on what is fine-tuned
afterwards, and on the code and torch that trained it (``maker_fingerprint``:
a stack made by other RBM code, or by another torch's rounding, is another
stack). Those resolved inputs (``stack_key_fields``) are hashed into the
entry's folder name, DomainBed-style, so any change of them gives another
entry and no stale stack can be picked up::

    <root>/<readable prefix>-<hash>/stack.pt     tensors (torch.save, loaded weights_only)
    <root>/<readable prefix>-<hash>/stats.json   key fields, stack.pt's sha256, training record

An entry is written to a temporary folder and renamed into place as a whole
(``atomic.replace_dir``). On reading, a missing or unreadable file, other key
fields, a checksum or shape mismatch all mean "recompute", never "trust".
Concurrent cells asking for the same key wait on a lock file, so one of them
pretrains and the others read its result.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import pickle
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from vgbench.atomic import replace_dir, write_json
from vgbench.source_digest import source_digest
from vgbench.pretraining.stack import PretrainedLayer, PretrainedStack, PretrainSettings

log = logging.getLogger(__name__)

STACK_FILE = "stack.pt"
STATS_FILE = "stats.json"
_FORMAT = 1  # bump when the files' layout changes; old entries then read as corrupt and are rebuilt
_HASH_CHARS = 16
# What reading a damaged entry raises: torch.load on a truncated or foreign file
# (RuntimeError, EOFError, UnpicklingError), json on a half file (ValueError),
# and a record that lacks a field or has the wrong type (KeyError, TypeError).
_UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


@lru_cache(maxsize=1)
def maker_fingerprint() -> str:
    """The code that trains a stack (every module of vgbench/pretraining) and the torch it runs on. The stacks
    are made on the CPU (the data sets live there), so the device is not part of it."""
    here = Path(__file__).parent
    return source_digest(here, here.glob("*.py"), f"torch=={torch.__version__}")


def stack_key_fields(data: Mapping[str, Any], widths: Sequence[int], seed: int,
                     settings: PretrainSettings, gaussian_first: bool) -> dict:
    """Everything a pretrained stack depends on, as plain JSON.

    ``data`` identifies the inputs exactly (e.g. the data set's name, its
    resolved settings and data seed, and the input scaling the pipeline
    applied); a ``"name"`` entry there is shown in the key.
    """
    return {"data": json.loads(json.dumps(dict(data), sort_keys=True)),
            "widths": [int(width) for width in widths], "seed": int(seed),
            "gaussian_first": bool(gaussian_first), "pretrain": settings.model_dump(mode="json"),
            "made_by": maker_fingerprint()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")[:48]


def stack_key(key_fields: Mapping[str, Any]) -> str:
    """``rbm-<data name>-<depth>x<width>-seed<seed>-<hash>``: readable prefix, hash of all fields.

    The prefix only helps a person browsing the cache; the hash of the sorted
    JSON of ``key_fields`` is what separates entries. Parts of the prefix whose
    fields are absent are left out.
    """
    canonical = json.dumps(key_fields, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_CHARS]
    parts = ["rbm"]
    data = key_fields.get("data")
    if isinstance(data, Mapping) and data.get("name") is not None:
        parts.append(_slug(str(data["name"])))
    widths = key_fields.get("widths")
    if isinstance(widths, list) and widths:
        parts.append(f"{len(widths)}x{widths[0]}" if len(set(widths)) == 1 else f"{len(widths)}layers")
    if "seed" in key_fields:
        parts.append(f"seed{key_fields['seed']}")
    return "-".join(parts + [digest])


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_entry(folder: Path, stack: PretrainedStack, key_fields: Mapping[str, Any]) -> None:
    tensors = {"format": _FORMAT,
               "weights": [layer.weight.detach().cpu() for layer in stack.layers],
               "hidden_biases": [layer.hidden_bias.detach().cpu() for layer in stack.layers],
               "visible_biases": [layer.visible_bias.detach().cpu() for layer in stack.layers],
               "gaussian_visible": [bool(layer.gaussian_visible) for layer in stack.layers]}
    with replace_dir(folder) as tmp:
        torch.save(tensors, tmp / STACK_FILE)
        write_json(tmp / STATS_FILE, {"format": _FORMAT, "key": folder.name, "key_fields": dict(key_fields),
                                      "stack_sha256": _file_sha256(tmp / STACK_FILE), "stats": stack.stats})


def _read_entry(folder: Path, key_fields: Mapping[str, Any]) -> PretrainedStack | None:
    """The stored stack, or None (with the reason logged) when it cannot be trusted."""
    stack_path, stats_path = folder / STACK_FILE, folder / STATS_FILE
    if not stack_path.is_file() or not stats_path.is_file():
        return None
    try:
        record = json.loads(stats_path.read_text())
        if record["format"] != _FORMAT or record["key_fields"] != json.loads(json.dumps(dict(key_fields))):
            raise ValueError("the entry was written for other key fields or another format")
        if record["stack_sha256"] != _file_sha256(stack_path):
            raise ValueError(f"{STACK_FILE} does not match the checksum in {STATS_FILE}")
        tensors = torch.load(stack_path, map_location="cpu", weights_only=True)
        layers = [PretrainedLayer(weight, hidden_bias, visible_bias, gaussian)
                  for weight, hidden_bias, visible_bias, gaussian in zip(
                      tensors["weights"], tensors["hidden_biases"], tensors["visible_biases"],
                      tensors["gaussian_visible"], strict=True)]
        _check_layers(layers, key_fields)
    except _UNREADABLE as error:
        log.warning("pretrained stack %s is unusable and will be recomputed: %s", folder, error)
        return None
    return PretrainedStack(layers, record["stats"])


def _check_layers(layers: list[PretrainedLayer], key_fields: Mapping[str, Any]) -> None:
    widths = key_fields.get("widths")
    if widths is not None and [layer.weight.shape[0] for layer in layers] != list(widths):
        raise ValueError(f"stored widths {[layer.weight.shape[0] for layer in layers]} differ from {widths}")
    for index, layer in enumerate(layers):
        num_hidden, num_visible = layer.weight.shape
        if layer.hidden_bias.shape != (num_hidden,) or layer.visible_bias.shape != (num_visible,):
            raise ValueError(f"layer {index}: bias shapes do not fit the weight {tuple(layer.weight.shape)}")
        if index > 0 and num_visible != layers[index - 1].weight.shape[0]:
            raise ValueError(f"layer {index} reads {num_visible} units, the layer below has "
                             f"{layers[index - 1].weight.shape[0]}")
        if not all(torch.isfinite(t).all() for t in (layer.weight, layer.hidden_bias, layer.visible_bias)):
            raise ValueError(f"layer {index} holds non-finite values")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # An advisory lock on a side file (not the entry, which replace_dir swaps out).
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_pretrain(root: Path, key_fields: Mapping[str, Any],
                     make: Callable[[], PretrainedStack]) -> tuple[PretrainedStack, bool]:
    """The cached stack for ``key_fields`` if a sound one exists, else ``make()`` stored and returned.

    Returns ``(stack, was_cached)``. ``make`` is called at most once, and not
    at all on a cache hit.
    """
    root = Path(root)
    key = stack_key(key_fields)
    folder = root / key
    with _exclusive(root / f".{key}.lock"):
        cached = _read_entry(folder, key_fields)
        if cached is not None:
            return cached, True
        stack = make()
        _write_entry(folder, stack, key_fields)
        return stack, False
