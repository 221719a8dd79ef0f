"""The data store: MNIST-1D determinism and splits, checked loading, torchvision raw files, offline errors.

Every data root is a pytest tmp_path; nothing here reads or writes the repo's data/ and
nothing touches the network (downloads are made to fail through ``urllib.request.urlopen``).
"""

from __future__ import annotations

import copy
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from mnist1d.data import get_dataset_args, make_dataset

from tests.conftest import REPO
from vgbench.cli import main
from vgbench.data import DATASETS, DatasetSettings, offline_names
from vgbench.data.mnist1d import MNIST1DSettings
from vgbench.data.store import DataNotReadyError, load, prepare, sha256
from vgbench.data.torchvision_sets import DatasetUnavailableError

SMALL = MNIST1DSettings(num_samples=400)


# ----------------------------------------------------------------------------------------- helpers

def write_params(folder: Path, datasets: dict) -> Path:
    """A params.yaml whose active profile is the repo's `tiny` with ``datasets`` replaced."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = copy.deepcopy(raw["profiles"]["tiny"])
    tiny["datasets"] = datasets
    tiny["matrix"] = [block for block in tiny["matrix"] if block["dataset"] in datasets]
    data = {"profile": "tiny", "wandb": {"mode": "disabled"}, "profiles": {"tiny": tiny}}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    """torchvision's MNIST on-disk format: big-endian magic (0x0000 08 ndim), big-endian dims, uint8 data."""
    assert array.dtype == np.uint8
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def grey_images(n: int, offset: int) -> np.ndarray:
    """n distinct 28x28 images; pixel [0, 0] is offset + index, the rest a known ramp hitting 0 and 255."""
    images = (np.arange(n)[:, None, None] * 7 + np.arange(28 * 28).reshape(1, 28, 28)) % 256
    images[:, 0, 0] = offset + np.arange(n)
    images[:, 27, 27] = 255
    images[:, 27, 26] = 0
    return images.astype(np.uint8)


def write_mnist_raw(raw_root: Path, folder: str, train_n: int = 30, test_n: int = 10) -> dict:
    raw = raw_root / folder / "raw"
    files = {
        "train_x": grey_images(train_n, offset=0),
        "train_y": (np.arange(train_n) * 3 % 10).astype(np.uint8),
        "test_x": grey_images(test_n, offset=100),
        "test_y": (np.arange(test_n) * 7 % 10).astype(np.uint8),
    }
    write_idx(raw / "train-images-idx3-ubyte", files["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", files["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", files["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", files["test_y"])
    return files


def colour_images(n: int, offset: int) -> np.ndarray:
    """n images as CIFAR stores them, (n, 3072) in CHW order; channels differ so a bad permute shows."""
    images = np.zeros((n, 3, 32, 32), dtype=np.int64)
    ramp = np.arange(32 * 32).reshape(32, 32)
    images[:, 0] = (ramp + np.arange(n)[:, None, None]) % 256
    images[:, 1] = 255 - (ramp % 256)
    images[:, 2] = (ramp * 3) % 256
    images[:, 0, 0, 0] = offset + np.arange(n)
    return images.astype(np.uint8).reshape(n, 3072)


def write_cifar_raw(raw_root: Path, per_batch: int = 6, test_n: int = 10) -> dict:
    folder = raw_root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x = colour_images(5 * per_batch, offset=0)
    train_y = [int(i * 3 % 10) for i in range(5 * per_batch)]
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        # str keys: the real batches are Python 2 pickles that torchvision reads with encoding="latin1"
        entry = {"batch_label": f"training batch {b + 1} of 5", "data": train_x[part], "labels": train_y[part]}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    test_x = colour_images(test_n, offset=100)
    test_y = [int(i * 7 % 10) for i in range(test_n)]
    (folder / "test_batch").write_bytes(pickle.dumps({"batch_label": "testing batch 1 of 1", "data": test_x,
                                                      "labels": test_y}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    return {"train_x": train_x.reshape(-1, 3, 32, 32), "train_y": np.array(train_y),
            "test_x": test_x.reshape(-1, 3, 32, 32), "test_y": np.array(test_y)}


def row_index(stored_x: torch.Tensor, expected_x: torch.Tensor) -> list[int]:
    """For each stored row, the index of the identical row in ``expected_x`` (fails if there is none)."""
    lookup = {row.numpy().tobytes(): i for i, row in enumerate(expected_x.reshape(len(expected_x), -1))}
    assert len(lookup) == len(expected_x), "expected rows must be distinct for this check"
    indices = []
    for row in stored_x.reshape(len(stored_x), -1):
        key = row.numpy().tobytes()
        assert key in lookup, "a stored row is not one of the generator's / raw file's rows"
        indices.append(lookup[key])
    return indices


# ----------------------------------------------------------------------------------------- MNIST-1D

@pytest.fixture(scope="module")
def small_roots(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    """The same MNIST-1D settings prepared into two separate data roots."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    return first, second, prepare("mnist1d", SMALL, first), prepare("mnist1d", SMALL, second)


def test_mnist1d_is_byte_for_byte_deterministic(small_roots):
    first, second, manifest_a, manifest_b = small_roots
    assert set(manifest_a["sha256"]) == {"train.pt", "validation.pt", "test.pt", "stats.pt"}
    assert manifest_a["sha256"] == manifest_b["sha256"]
    assert manifest_a == manifest_b
    for name in manifest_a["sha256"]:
        assert (first / "mnist1d" / name).read_bytes() == (second / "mnist1d" / name).read_bytes()


def test_manifest_hashes_are_those_of_the_files_on_disk(small_roots):
    root, _, manifest, _ = small_roots
    folder = root / "mnist1d"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "stats.pt", "test.pt", "train.pt",
                                                        "validation.pt"]
    for name, digest in manifest["sha256"].items():
        assert sha256(folder / name) == digest
    assert manifest["settings"] == SMALL.model_dump()
    assert manifest["num_classes"] == 10 and manifest["input_shape"] == [40]


def test_mnist1d_split_sizes(small_roots):
    root, _, manifest, _ = small_roots
    sizes = manifest["sizes"]
    assert sizes["train"] + sizes["validation"] == 320  # the generator's 80% train part
    assert sizes["validation"] == round(320 * SMALL.validation_fraction) == 64
    assert sizes["test"] == 80  # the generator's 20%, untouched
    for split, n in sizes.items():
        tensors = torch.load(root / "mnist1d" / f"{split}.pt")
        assert tensors["x"].shape == (n, 40) and tensors["x"].dtype == torch.float32
        assert tensors["y"].shape == (n,) and tensors["y"].dtype == torch.int64


def test_mnist1d_validation_is_carved_from_the_generators_train_part(small_roots):
    root, _, _, _ = small_roots
    args = get_dataset_args()
    args.num_samples, args.seed = SMALL.num_samples, SMALL.seed
    generated = make_dataset(args)
    gen_x = torch.tensor(generated["x"], dtype=torch.float32)
    gen_y = torch.tensor(generated["y"], dtype=torch.long)
    stored = {s: torch.load(root / "mnist1d" / f"{s}.pt") for s in ("train", "validation", "test")}

    train_idx = row_index(stored["train"]["x"], gen_x)
    val_idx = row_index(stored["validation"]["x"], gen_x)
    assert not set(train_idx) & set(val_idx)  # disjoint
    assert sorted(train_idx + val_idx) == list(range(len(gen_y)))  # together: all of the train part
    assert torch.equal(stored["train"]["y"], gen_y[train_idx])
    assert torch.equal(stored["validation"]["y"], gen_y[val_idx])
    # test is the generator's test part, same order
    assert torch.equal(stored["test"]["x"], torch.tensor(generated["x_test"], dtype=torch.float32))
    assert torch.equal(stored["test"]["y"], torch.tensor(generated["y_test"], dtype=torch.long))


def test_mnist1d_stats_come_from_the_stored_train_split_only(small_roots):
    root, _, _, _ = small_roots
    stats = torch.load(root / "mnist1d" / "stats.pt")
    train_x = torch.load(root / "mnist1d" / "train.pt")["x"]
    val_x = torch.load(root / "mnist1d" / "validation.pt")["x"]
    assert torch.allclose(stats["mean"], train_x.mean(), rtol=0, atol=1e-7)
    assert torch.allclose(stats["std"], train_x.std(), rtol=0, atol=1e-7)
    with_val = torch.cat([train_x, val_x])
    assert abs(float(stats["mean"] - with_val.mean())) > 1e-5  # validation rows did not leak in


# ----------------------------------------------------------------------------------------- store.load

def test_load_standardizes_with_train_statistics(small_roots):
    root, _, manifest, _ = small_roots
    data = load("mnist1d", SMALL, root)
    train_x = data.splits["train"]["x"]
    assert abs(float(train_x.mean())) < 1e-5
    assert abs(float(train_x.std()) - 1.0) < 1e-5
    assert data.num_classes == 10 and data.input_shape == (40,)
    assert {s: len(t["y"]) for s, t in data.splits.items()} == manifest["sizes"]
    stats = torch.load(root / "mnist1d" / "stats.pt")
    raw_test = torch.load(root / "mnist1d" / "test.pt")
    assert torch.allclose(data.splits["test"]["x"], (raw_test["x"] - stats["mean"]) / stats["std"])
    assert torch.equal(data.splits["test"]["y"], raw_test["y"])


def test_load_refuses_other_settings(small_roots):
    root, _, _, _ = small_roots
    with pytest.raises(DataNotReadyError) as error:
        load("mnist1d", MNIST1DSettings(num_samples=400, split_seed=1), root)
    assert str(root / "mnist1d") in str(error.value) and "vgbench fetch mnist1d" in str(error.value)
    with pytest.raises(DataNotReadyError):
        load("mnist1d", MNIST1DSettings(), root)  # default num_samples 5000


def test_load_refuses_a_corrupted_file(small_roots, tmp_path):
    root, _, _, _ = small_roots
    shutil.copytree(root / "mnist1d", tmp_path / "mnist1d")
    target = tmp_path / "mnist1d" / "validation.pt"
    blob = bytearray(target.read_bytes())
    for at in (len(blob) // 2, len(blob) // 2 + 1):
        blob[at] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DataNotReadyError) as error:
        load("mnist1d", SMALL, tmp_path)
    assert str(target) in str(error.value) and "vgbench fetch mnist1d" in str(error.value)


def test_load_refuses_a_deleted_file(small_roots, tmp_path):
    root, _, _, _ = small_roots
    shutil.copytree(root / "mnist1d", tmp_path / "mnist1d")
    (tmp_path / "mnist1d" / "train.pt").unlink()
    with pytest.raises(DataNotReadyError) as error:
        load("mnist1d", SMALL, tmp_path)
    assert "train.pt" in str(error.value) and "vgbench fetch mnist1d" in str(error.value)


def test_load_refuses_a_missing_folder(tmp_path):
    with pytest.raises(DataNotReadyError) as error:
        load("mnist1d", SMALL, tmp_path)
    assert str(tmp_path / "mnist1d") in str(error.value) and "vgbench fetch mnist1d" in str(error.value)


# ----------------------------------------------------------------------------------------- torchvision

def check_images(root: Path, name: str, written: dict, shape: tuple[int, ...]) -> None:
    """The stored splits hold exactly the written images / 255 and their labels."""
    manifest_sizes = {"train": 24, "validation": 6, "test": 10}  # 30 train, 20% validation, 10 test
    stored = {s: torch.load(root / name / f"{s}.pt") for s in ("train", "validation", "test")}
    for split, n in manifest_sizes.items():
        assert stored[split]["x"].shape == (n, *shape)
        assert stored[split]["x"].dtype == torch.float32 and stored[split]["y"].dtype == torch.int64
    expected_train = torch.from_numpy(written["train_x"]).reshape(-1, *shape).float() / 255
    expected_test = torch.from_numpy(written["test_x"]).reshape(-1, *shape).float() / 255
    # test: untouched, in file order
    assert torch.equal(stored["test"]["x"], expected_test)
    assert torch.equal(stored["test"]["y"], torch.as_tensor(written["test_y"], dtype=torch.long))
    # train + validation: a partition of the written train images, each with its own label
    train_idx = row_index(stored["train"]["x"], expected_train)
    val_idx = row_index(stored["validation"]["x"], expected_train)
    assert sorted(train_idx + val_idx) == list(range(30))
    labels = torch.as_tensor(written["train_y"], dtype=torch.long)
    assert torch.equal(stored["train"]["y"], labels[train_idx])
    assert torch.equal(stored["validation"]["y"], labels[val_idx])
    for split in stored:
        assert float(stored[split]["x"].min()) >= 0 and float(stored[split]["x"].max()) <= 1


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_grey_raw_files_are_read_and_scaled(name, folder, tmp_path, no_network):
    written = write_mnist_raw(tmp_path / "raw", folder)
    manifest = prepare(name, DatasetSettings(), tmp_path)
    assert no_network == []  # the files on disk were used, no download attempted
    assert manifest["input_shape"] == [1, 28, 28] and manifest["num_classes"] == 10
    assert manifest["sizes"] == {"train": 24, "validation": 6, "test": 10}
    check_images(tmp_path, name, written, (1, 28, 28))
    stats = torch.load(tmp_path / name / "stats.pt")
    assert stats["mean"].shape == (1,) and stats["std"].shape == (1,)
    data = load(name, DatasetSettings(), tmp_path)
    assert data.splits["train"]["x"].shape == (24, 1, 28, 28)
    assert abs(float(data.splits["train"]["x"].mean())) < 1e-5


def test_cifar10_raw_files_are_read_scaled_and_channel_first(tmp_path, monkeypatch, no_network):
    # the written pickles are not the real ones, so their md5s differ; reading stays torchvision's own
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).exists())
    written = write_cifar_raw(tmp_path / "raw")
    manifest = prepare("cifar10", DatasetSettings(), tmp_path)
    assert no_network == []
    assert manifest["input_shape"] == [3, 32, 32] and manifest["num_classes"] == 10
    assert manifest["sizes"] == {"train": 24, "validation": 6, "test": 10}
    check_images(tmp_path, "cifar10", written, (3, 32, 32))
    stats = torch.load(tmp_path / "cifar10" / "stats.pt")
    train_x = torch.load(tmp_path / "cifar10" / "train.pt")["x"]
    assert torch.allclose(stats["mean"], train_x.mean(dim=(0, 2, 3)))  # one pair per channel
    assert torch.allclose(stats["std"], train_x.std(dim=(0, 2, 3)))
    data = load("cifar10", DatasetSettings(), tmp_path)
    per_channel = data.splits["train"]["x"].mean(dim=(0, 2, 3))
    assert per_channel.shape == (3,) and float(per_channel.abs().max()) < 1e-5


# ----------------------------------------------------------------------------------------- offline

def test_offline_download_failure_says_what_to_do(tmp_path, no_network):
    with pytest.raises(DatasetUnavailableError) as error:
        prepare("mnist", DatasetSettings(), tmp_path)
    message = str(error.value)
    assert no_network, "the download path was not exercised"
    assert offline_names() == ["adding", "copy_memory", "mnist1d", "seq_mnist1d", "perm_seq_mnist1d"]
    assert "adding, copy_memory, mnist1d, seq_mnist1d, perm_seq_mnist1d" in message
    assert str(tmp_path / "raw" / "MNIST" / "raw") in message
    assert "vgbench fetch" in message
    assert not (tmp_path / "mnist").exists()


def _html_page_as_labels(raw: Path) -> tuple[str, bool]:
    write_mnist_raw(raw, "MNIST")
    (raw / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"<html>404 Not Found</html>")
    return "MNIST", False  # all four files there: torchvision tries no download, and reading fails


def _one_file_missing(raw: Path) -> tuple[str, bool]:
    write_mnist_raw(raw, "MNIST")
    (raw / "MNIST" / "raw" / "train-images-idx3-ubyte").unlink()
    return "MNIST", True  # torchvision tries to fetch what is missing


def _corrupted_cifar_batch(raw: Path) -> tuple[str, bool]:
    write_cifar_raw(raw)
    (raw / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"<html>404 Not Found</html>")
    return "CIFAR10", True  # a checksum fails: torchvision fetches the archive again


def _damaged_legacy_processed_mnist(raw: Path) -> tuple[str, bool]:
    (raw / "MNIST" / "processed").mkdir(parents=True)
    for name in ("training.pt", "test.pt"):  # what torchvision < 0.8 made, which today's still reads first
        (raw / "MNIST" / "processed" / name).write_bytes(b"<html>404 Not Found</html>")
    return "MNIST", False


@pytest.mark.parametrize("damage", [_html_page_as_labels, _one_file_missing, _corrupted_cifar_batch,
                                    _damaged_legacy_processed_mnist],
                         ids=["html page", "one file missing", "corrupted cifar batch", "damaged legacy files"])
def test_unusable_raw_files_are_named_as_such_not_as_a_failed_download(damage, tmp_path, no_network):
    """Files on disk that torchvision cannot use are named, with what is there, even where torchvision tried to
    complete them by download (offline here); the message once said "could not download" about them."""
    name, downloads = damage(tmp_path / "raw")
    dataset = {"MNIST": "mnist", "CIFAR10": "cifar10"}[name]
    present = sorted(str(path.relative_to(tmp_path / "raw")) for path in (tmp_path / "raw").rglob("*")
                     if path.is_file())
    with pytest.raises(DatasetUnavailableError) as error:
        prepare(dataset, DatasetSettings(), tmp_path)
    message = str(error.value)
    assert message.startswith(f"the {name} files under {tmp_path / 'raw'} cannot be read or are incomplete")
    assert f"present: {', '.join(present)})" in message
    assert "vgbench fetch" in message and "could not download" not in message
    assert bool(no_network) == downloads
    assert not (tmp_path / dataset).exists()


def _gzip(path: Path) -> str:
    """``path`` gzipped beside itself (the original removed); the archive's md5."""
    import gzip
    import hashlib

    archive = path.with_name(path.name + ".gz")
    archive.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return hashlib.md5(archive.read_bytes()).hexdigest()


def test_archives_placed_by_hand_are_unpacked_offline(tmp_path, no_network, monkeypatch):
    """MNIST's four .gz files as the mirrors serve them, and CIFAR-10's tarball beside a half-unpacked folder
    (an interrupted fetch): torchvision's download step unpacks them without the network, once their
    checksums match the ones it knows (here, of these small stand-ins)."""
    import hashlib
    import tarfile

    from torchvision import datasets as tv

    raw = tmp_path / "raw"
    mnist = write_mnist_raw(raw, "MNIST")
    resources = [(f"{name}.gz", _gzip(raw / "MNIST" / "raw" / name))
                 for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                              "t10k-labels-idx1-ubyte")]
    monkeypatch.setattr(tv.MNIST, "resources", resources)
    cifar = write_cifar_raw(raw)
    with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(raw / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    tarball_md5 = hashlib.md5((raw / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(tv.CIFAR10, "tgz_md5", tarball_md5)
    checksums = {name: hashlib.md5((raw / "cifar-10-batches-py" / name).read_bytes()).hexdigest()
                 for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch", "batches.meta"]}
    monkeypatch.setattr(tv.CIFAR10, "train_list", [[f"data_batch_{b}", checksums[f"data_batch_{b}"]]
                                                   for b in range(1, 6)])
    monkeypatch.setattr(tv.CIFAR10, "test_list", [["test_batch", checksums["test_batch"]]])
    monkeypatch.setattr(tv.CIFAR10, "meta", {**tv.CIFAR10.meta, "md5": checksums["batches.meta"]})
    (raw / "cifar-10-batches-py" / "data_batch_3").unlink()  # the unpacking stopped before its end
    assert sorted(p.name for p in (raw / "MNIST" / "raw").iterdir()) == [f"{name}.gz" for name in sorted(
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))]
    for dataset, expected in (("mnist", mnist), ("cifar10", cifar)):
        prepare(dataset, DatasetSettings(), tmp_path)
        stored = torch.load(tmp_path / dataset / "test.pt", weights_only=True)
        assert stored["y"].tolist() == list(map(int, expected["test_y"]))
    assert no_network == []


def test_cli_fetch_offline_returns_1_with_the_message(tmp_path, no_network, capsys):
    params = write_params(tmp_path, {"mnist1d": {}, "mnist": {}})
    data_root = tmp_path / "data"
    code = main(["fetch", "mnist", "--params", str(params), "--data-root", str(data_root)])
    captured = capsys.readouterr()
    assert code == 1
    assert no_network
    assert captured.err.startswith("error: could not download MNIST")
    assert "mnist1d" in captured.err and str(data_root / "raw" / "MNIST" / "raw") in captured.err
    assert not (data_root / "mnist").exists()
    assert not any(p.name.startswith(".mnist") for p in data_root.iterdir())  # no temporary left either


@pytest.mark.parametrize("name, expected", [
    ("nosuch", ["unknown dataset 'nosuch'", *DATASETS.names()]),
    ("cifar10", ["'cifar10' is not configured in profile 'tiny'", "['mnist1d']"]),
])
def test_cli_fetch_refuses_unknown_or_unconfigured(name, expected, tmp_path, no_network, capsys):
    params = write_params(tmp_path, {"mnist1d": {}})
    data_root = tmp_path / "data"
    code = main(["fetch", name, "--params", str(params), "--data-root", str(data_root)])
    captured = capsys.readouterr()
    assert code == 2
    for text in expected:
        assert text in captured.err
    assert not data_root.exists()
    assert no_network == []


def test_cli_fetch_mnist1d_then_up_to_date(tmp_path, no_network, capsys):
    params = write_params(tmp_path, {"mnist1d": {"num_samples": 400}})
    data_root = tmp_path / "data"
    assert main(["fetch", "--params", str(params), "--data-root", str(data_root)]) == 0
    first = capsys.readouterr().out
    assert "mnist1d: wrote" in first and "'train': 256" in first
    before = (data_root / "mnist1d" / "manifest.json").read_text()
    assert main(["fetch", "mnist1d", "--params", str(params), "--data-root", str(data_root)]) == 0
    assert "mnist1d: up to date" in capsys.readouterr().out
    assert (data_root / "mnist1d" / "manifest.json").read_text() == before
    assert load("mnist1d", SMALL, data_root).manifest["sizes"] == {"train": 256, "validation": 64, "test": 80}
    assert no_network == []
