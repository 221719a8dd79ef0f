"""The stored form of a data set: ``data/<name>/`` (``data/<name>/T<length>/`` per length).

Files: ``{train,validation,test}.pt`` (dicts with ``x`` float32 and ``y``: int64
labels, or float32 targets for regression), ``stats.pt`` (train-only
standardization mean/std), ``manifest.json`` (the settings that made them,
task, shapes, class count, baseline metric, the data-building code's fingerprint and sha256 of every
file). Validation is carved from train with ``split_seed``; test is left untouched.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vgbench import atomic
from vgbench.source_digest import source_digest
from vgbench.data import DATASETS, DatasetSettings, RawSplits, validation_count

if TYPE_CHECKING:  # config imports this module (through pretraining)
    from vgbench.config import Profile

SPLITS = ("train", "validation", "test")


class DataNotReadyError(RuntimeError):
    """A stored data set is missing, stale or corrupted; the message names the fix."""


def settings_hash(settings: DatasetSettings) -> str:
    text = json.dumps(settings.model_dump(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Third-party packages whose code generates data (MNIST-1D's templates and transforms); torchvision only
# reads files, so its version changes no byte.
GENERATOR_PACKAGES = ("mnist1d",)


@functools.lru_cache(maxsize=1)
def builder_fingerprint() -> str:
    """The code that turns settings into stored bytes: every module of vgbench/data (a data set's build may
    call another's, as the sequential tasks do) and the generator packages' versions. Stored data made by
    other code is stale like data of other settings (``vgbench fetch`` rebuilds it), so a cell's result
    never comes from data the current code would not make."""
    here = Path(__file__).parent
    return source_digest(here, here.glob("*.py"),
                         *(f"{package}=={importlib.metadata.version(package)}" for package in GENERATOR_PACKAGES))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def standardization_stats(train_x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean/std for images (N, C, H, W) and per-feature for sequences (N, T, F);
    one global pair for signals (N, L)."""
    dims = {4: [0, 2, 3], 3: [0, 1]}.get(train_x.ndim, list(range(train_x.ndim)))
    return {"mean": train_x.mean(dim=dims), "std": train_x.std(dim=dims).clamp_min(1e-8)}


def split_validation(raw: RawSplits, settings: DatasetSettings) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(settings.split_seed)
    order = torch.randperm(len(raw.train_y), generator=generator)
    n_val = validation_count(len(order), settings.validation_fraction)
    val, train = order[:n_val], order[n_val:]
    return {
        "train": {"x": raw.train_x[train], "y": raw.train_y[train]},
        "validation": {"x": raw.train_x[val], "y": raw.train_y[val]},
        "test": {"x": raw.test_x, "y": raw.test_y},
    }


def folder_for(name: str, data_root: Path, length: int | None = None) -> Path:
    return data_root / name if length is None else data_root / name / f"T{length}"


def label(name: str, length: int | None = None) -> str:
    """How commands name a stored data set: ``adding`` or ``adding@T50``."""
    return name if length is None else f"{name}@T{length}"


def prepare(name: str, settings: DatasetSettings, data_root: Path, length: int | None = None) -> dict:
    """Build data set ``name`` (at sequence ``length`` for per-length ones) and store it; return the manifest."""
    spec = DATASETS.get(name)
    if spec.per_length != (length is not None):
        raise ValueError(f"data set {name!r}: a length is {'required' if spec.per_length else 'not allowed'} "
                         f"(got {length!r})")
    raw = spec.build(settings, data_root / "raw", length)
    splits = split_validation(raw, settings)
    num_classes = raw.num_classes
    baseline = raw.baseline_metric if raw.baseline_metric is not None else 1.0 / num_classes
    with atomic.replace_dir(folder_for(name, data_root, length)) as folder:
        for split, tensors in splits.items():
            torch.save(tensors, folder / f"{split}.pt")
        torch.save(standardization_stats(splits["train"]["x"]), folder / "stats.pt")
        manifest = {
            "name": name,
            "settings": settings.model_dump(),
            "settings_hash": settings_hash(settings),
            "builder": builder_fingerprint(),
            "length": length,
            "task": spec.task,
            "kind": spec.kind,
            "standardize": spec.standardize,
            "num_classes": num_classes,
            "baseline_metric": baseline,
            "input_shape": list(splits["train"]["x"].shape[1:]),
            "sizes": {split: len(t["y"]) for split, t in splits.items()},
            "sha256": {p.name: sha256(p) for p in sorted(folder.glob("*.pt"))},
        }
        atomic.write_json(folder / "manifest.json", manifest)
    return manifest


MANIFEST_KEYS = ("settings", "settings_hash", "sha256", "kind", "standardize", "num_classes", "input_shape")


def _read_manifest(path: Path) -> dict | None:
    """The manifest at ``path``, None when there is none; ValueError(why) when it is not a usable one."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest] if isinstance(manifest, dict) else MANIFEST_KEYS
    if missing:
        raise ValueError(f"{path} lacks {missing} (not a vgbench manifest, or an older one)")
    return manifest


def _inspect(name: str, settings: DatasetSettings, data_root: Path, length: int | None,
             check_files: bool) -> tuple[dict | None, str | None]:
    """The stored manifest and why the data set cannot be used as it is (None when it can); the
    files' checksums are compared only with ``check_files``."""
    folder = folder_for(name, data_root, length)
    try:
        manifest = _read_manifest(folder / "manifest.json")
    except ValueError as error:
        return None, str(error)
    if manifest is None:
        return None, f"{folder} is missing"
    if manifest["settings_hash"] != settings_hash(settings):
        return manifest, (f"{folder} was made with settings {manifest['settings']}, "
                          f"the profile asks for {settings.model_dump()}")
    if manifest.get("builder") != builder_fingerprint():
        return manifest, (f"{folder} was made by other data-building code (builder {manifest.get('builder')}, "
                          f"now {builder_fingerprint()}: vgbench/data or {', '.join(GENERATOR_PACKAGES)} changed)")
    for file, digest in manifest["sha256"].items() if check_files else ():
        if not (folder / file).is_file():
            return manifest, f"{folder / file} is missing (listed in the manifest)"
        if sha256(folder / file) != digest:
            return manifest, f"{folder / file} does not match its sha256 in the manifest (damaged or replaced)"
    return manifest, None


def problem(name: str, settings: DatasetSettings, data_root: Path, length: int | None = None) -> str | None:
    """Why the stored data set cannot be used as it is (missing, another settings' data, a damaged or
    missing file, an unreadable manifest); None when it can. ``vgbench fetch`` rebuilds whatever has one."""
    return _inspect(name, settings, data_root, length, check_files=True)[1]


def ensure(profile: Profile, data_root: Path, names: list[str] | None = None, *, force: bool = False,
           say: Callable[[str], None] = lambda line: None) -> None:
    """Make every stored data set that ``profile`` needs usable in ``data_root``, or only those of
    ``names``: each one missing, made with other settings or damaged is built anew (all of them with
    ``force``); ``say`` hears a line per data set. What ``vgbench fetch`` does, and what a test or a bench
    script does before it trains; a data set that cannot be built here raises its own error
    (``DatasetUnavailableError`` for a torchvision set nobody placed)."""
    for name, length in profile.stored_datasets(names):
        settings, where = profile.dataset_settings(name), folder_for(name, data_root, length)
        why = problem(name, settings, data_root, length)  # verifies every file against the manifest
        if why is None and not force:
            say(f"{label(name, length)}: up to date in {where}")
            continue
        if why is not None and (where / "manifest.json").exists():
            say(f"{label(name, length)}: rebuilding: {why}")
        manifest = prepare(name, settings, data_root, length)
        say(f"{label(name, length)}: wrote {where} {manifest['sizes']}")


@dataclass(frozen=True)
class StoredDataset:
    name: str
    splits: dict[str, dict[str, torch.Tensor]]  # standardized where the data set asks for it
    num_classes: int
    input_shape: tuple[int, ...]
    manifest: dict

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def baseline_metric(self) -> float:
        return self.manifest["baseline_metric"]


def load(name: str, settings: DatasetSettings, data_root: Path, length: int | None = None,
         verify: bool = True) -> StoredDataset:
    """Load ``data/<name>/`` (or its ``T<length>/``), standardized with its train statistics.

    Refuses a missing folder, an unreadable manifest, one made with other settings and (with
    ``verify``) files that do not match the manifest's checksums, naming the command that fixes it.
    """
    folder = folder_for(name, data_root, length)
    manifest, why = _inspect(name, settings, data_root, length, check_files=verify)
    if why is not None:
        raise DataNotReadyError(f"{why}: run `vgbench fetch {name}` (or `dvc repro fetch`)")
    stats = _load_tensors(folder / "stats.pt", name)
    shape = {"image": [1, -1, 1, 1], "sequence": [1, 1, -1]}.get(manifest["kind"], [1])
    mean, std = stats["mean"].reshape(shape), stats["std"].reshape(shape)
    splits = {}
    for split in SPLITS:
        tensors = _load_tensors(folder / f"{split}.pt", name)
        x = (tensors["x"] - mean) / std if manifest["standardize"] else tensors["x"]
        splits[split] = {"x": x, "y": tensors["y"]}
    return StoredDataset(name, splits, manifest["num_classes"], tuple(manifest["input_shape"]), manifest)


def _load_tensors(path: Path, name: str) -> dict:
    """A stored split or statistics file: tensors only (``weights_only=True``, never arbitrary pickles)."""
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise DataNotReadyError(f"{path} is not a vgbench data file torch can load ({type(error).__name__}): "
                                f"run `vgbench fetch --force {name}`") from None
