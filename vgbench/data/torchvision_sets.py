"""MNIST, FashionMNIST and CIFAR-10, downloaded through torchvision.

The only network access in vgbench happens here, in ``vgbench fetch``. When the
download cannot happen, the error says which data sets work offline and where
to put the raw files by hand (torchvision's own layout under ``data/raw/``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from vgbench.data import DATASETS, DataShape, DatasetSettings, DatasetSpec, RawSplits, offline_names


class DatasetUnavailableError(RuntimeError):
    """A data set's raw files are neither on disk nor downloadable."""


# Where torchvision keeps each data set's files under data/raw/ (the raw files, and what older torchvision
# versions made from them, or the downloaded archive), and the raw files' names, for the by-hand instructions.
# By torchvision's class name: torchvision is imported when a data set is opened, not with vgbench (its import
# costs about 3 s here, in every `vgbench` command and worker that never reads an image).
_FOLDERS = {"MNIST": ("MNIST/raw", "MNIST/processed"), "FashionMNIST": ("FashionMNIST/raw", "FashionMNIST/processed"),
            "CIFAR10": ("cifar-10-batches-py",)}
_ARCHIVES = {"CIFAR10": "cifar-10-python.tar.gz"}
_RAW_FILES = {
    "MNIST": "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "FashionMNIST": "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "CIFAR10": "{data_batch_1..5,test_batch,batches.meta}",
}


def _files_on_disk(name: str, raw_dir: Path) -> list[str]:
    """What of this data set is already under ``raw_dir``, relative to it."""
    found = [f"{folder}/{path.name}" for folder in _FOLDERS[name] if (raw_dir / folder).is_dir()
             for path in sorted((raw_dir / folder).iterdir())]
    return found + [archive for archive in [_ARCHIVES.get(name)] if archive and (raw_dir / archive).is_file()]


def _open(name: str, raw_dir: Path, train: bool):
    """torchvision's data set ``name`` from the files on disk, else through its download, which also completes
    what is there: it unpacks archives placed by hand (MNIST's .gz files, CIFAR's tarball) without the network
    and fetches only files whose checksum fails. When that fails too, the error says whether files were there
    (then they cannot be used as they are) or nothing was (then the download is what failed)."""
    cls = getattr(importlib.import_module("torchvision.datasets"), name)
    by_hand = raw_dir / _FOLDERS[name][0] / _RAW_FILES[name]
    try:
        return cls(root=str(raw_dir), train=train, download=False)
    except Exception:  # not there, incomplete, or unreadable: torchvision's download sorts out which
        pass
    present = _files_on_disk(name, raw_dir)
    try:
        return cls(root=str(raw_dir), train=train, download=True)
    except Exception as error:  # URLError, HTTPError, socket errors, files it cannot read
        if present:
            raise DatasetUnavailableError(
                f"the {cls.__name__} files under {raw_dir} cannot be read or are incomplete "
                f"({type(error).__name__}: {error}; present: {', '.join(present)}). Delete them and run "
                f"`vgbench fetch` again, or replace them by hand as {by_hand}."
            ) from error
        raise DatasetUnavailableError(
            f"could not download {cls.__name__} into {raw_dir} ({type(error).__name__}: {error}). "
            f"Without network, use an offline data set ({', '.join(offline_names())}), or place the "
            f"raw files by hand as {by_hand} and run `vgbench fetch` again."
        ) from error


def _as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    data = dataset.data
    data = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
    x = data.float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 and x.shape[-1] != 3 else x  # MNIST: (N, 28, 28) -> (N, 1, 28, 28)
    if x.ndim == 4 and x.shape[-1] == 3:  # CIFAR: (N, 32, 32, 3) -> (N, 3, 32, 32)
        x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return x, y


def _builder(torchvision_name: str):
    def build(settings: DatasetSettings, raw_dir: Path, length: int | None = None) -> RawSplits:
        train_x, train_y = _as_tensors(_open(torchvision_name, raw_dir, train=True))
        test_x, test_y = _as_tensors(_open(torchvision_name, raw_dir, train=False))
        return RawSplits(train_x, train_y, test_x, test_y, num_classes=10)

    return build


def _fixed_shape(shape: DataShape):
    def data_shape(settings: DatasetSettings, length: int | None = None) -> DataShape:
        return shape

    return data_shape


BUILDERS = {}  # name -> build, also read by the pixel-sequence data sets
SHAPES = {}  # name -> shape hook, likewise
for _name, _torchvision_name, _summary, _shape, _cites in [
    ("mnist", "MNIST", "MNIST handwritten digits, 28x28 grey", DataShape((1, 28, 28), 60000, 10000, 10),
     ("lecun1998gradient",)),
    ("fashion_mnist", "FashionMNIST", "Fashion-MNIST clothing, 28x28 grey", DataShape((1, 28, 28), 60000, 10000, 10),
     ("xiao2017fashion",)),
    ("cifar10", "CIFAR10", "CIFAR-10 natural images, 32x32 colour", DataShape((3, 32, 32), 50000, 10000, 10),
     ("krizhevsky2009learning",)),
]:
    BUILDERS[_name], SHAPES[_name] = _builder(_torchvision_name), _fixed_shape(_shape)
    DATASETS.add(_name, DatasetSpec(_name, _summary, DatasetSettings, BUILDERS[_name], offline=False, kind="image",
                                    shape=SHAPES[_name], cites=_cites))
