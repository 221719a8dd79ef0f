"""The sequence tasks: generators, closed-form baselines, sequential views and per-length storage."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_data import write_mnist_raw, write_params
from vgbench.cli import main
from vgbench.data import DATASETS
from vgbench.data import adding, copy_memory, mnist1d
from vgbench.data.sequential import PermutationSettings, SequentialMNIST1DSettings
from vgbench.data.store import DataNotReadyError, load, prepare
from vgbench.data.synthetic import SyntheticSettings, split_generator
from vgbench.tasks import RECALL_LENGTH, TASKS


def test_adding_problem_inputs_and_targets():
    x, y = adding.generate(500, 30, torch.Generator().manual_seed(0))
    assert x.shape == (500, 30, 2) and y.shape == (500,)
    values, markers = x[..., 0], x[..., 1]
    assert float(values.min()) >= 0 and float(values.max()) <= 1
    assert torch.equal(markers.sum(dim=1), torch.full((500,), 2.0))
    assert torch.equal(markers[:, :15].sum(dim=1), torch.ones(500))  # one marker in each half
    assert torch.allclose(y, (values * markers).sum(dim=1))


def test_adding_constant_predictor_scores_one_sixth():
    _, y = adding.generate(40000, 10, torch.Generator().manual_seed(1))
    task = TASKS.get("regression")
    constant = torch.ones(1, len(y), 1)  # E[U1 + U2] = 1, one model: outputs [K, N, 1]
    mse = task.finish([float(v) for v in task.sums(constant, y[None])])["mse"]
    assert mse == pytest.approx(adding.CONSTANT_PREDICTOR_MSE, rel=0.02)
    assert adding.CONSTANT_PREDICTOR_MSE == pytest.approx(2 / 12)


def test_copy_memory_layout():
    delay = 7
    x, y = copy_memory.generate(50, delay, torch.Generator().manual_seed(0))
    total = delay + 20
    assert x.shape == (50, total, 10) and y.shape == (50, total)
    symbols = x.argmax(dim=-1)
    assert torch.equal(x.sum(dim=-1), torch.ones(50, total))  # one-hot
    data = symbols[:, :RECALL_LENGTH]
    assert int(data.max()) < copy_memory.DATA_SYMBOLS
    assert (symbols[:, RECALL_LENGTH:delay + RECALL_LENGTH - 1] == copy_memory.BLANK).all()
    assert (symbols[:, delay + RECALL_LENGTH - 1] == copy_memory.DELIMITER).all()
    assert (symbols[:, delay + RECALL_LENGTH:] == copy_memory.BLANK).all()
    assert (y[:, :delay + RECALL_LENGTH] == copy_memory.BLANK).all()
    assert torch.equal(y[:, -RECALL_LENGTH:], data)


@pytest.mark.parametrize("delay", [1, 10, 100])
def test_copy_memory_memoryless_baseline_matches_its_closed_form(delay):
    x, y = copy_memory.generate(200, delay, torch.Generator().manual_seed(2))
    # The memoryless strategy: certain blank until the recall, then uniform over the 8 data symbols.
    logits = torch.full((200, delay + 20, 10), -1e9)
    logits[:, :-RECALL_LENGTH, copy_memory.BLANK] = 0.0
    logits[:, -RECALL_LENGTH:, :copy_memory.DATA_SYMBOLS] = 0.0
    task = TASKS.get("copy_memory")
    metrics = task.finish([float(v) for v in task.sums(logits[None], y[None])])  # one model: [K=1, N, T, ...]
    expected = 10 * math.log(8) / (delay + 20)
    assert copy_memory.memoryless_cross_entropy(delay) == pytest.approx(expected)
    assert metrics["cross_entropy"] == pytest.approx(expected, rel=1e-6)
    assert float(task.loss(logits[None], y[None])) == pytest.approx(expected, rel=1e-6)
    # Stacked with a second model that recalls perfectly: loss and sums are per model.
    perfect = torch.nn.functional.one_hot(y, 10).float() * 100.0
    stacked, targets = torch.stack([logits, perfect]), torch.stack([y, y])
    assert task.loss(stacked, targets).tolist() == pytest.approx([expected, 0.0], rel=1e-6, abs=1e-9)
    sums = torch.stack([v.double() for v in task.sums(stacked, targets)])  # [sums, K]
    memoryless, recalled = (task.finish(column.tolist()) for column in sums.T)
    assert memoryless["cross_entropy"] == pytest.approx(expected, rel=1e-6)
    assert recalled["cross_entropy"] == pytest.approx(0.0, abs=1e-9) and recalled["recall_accuracy"] == 1.0


def test_generators_are_seeded_per_split_and_length():
    a = split_generator("adding", 0, 50, "train").initial_seed()
    assert a == split_generator("adding", 0, 50, "train").initial_seed()
    others = {split_generator(*args).initial_seed() for args in
              [("adding", 0, 50, "test"), ("adding", 1, 50, "train"), ("adding", 0, 51, "train"),
               ("copy_memory", 0, 50, "train")]}
    assert a not in others and len(others) == 4
    raw = adding.build(SyntheticSettings(train_size=20, test_size=20), None, 8)
    again = adding.build(SyntheticSettings(train_size=20, test_size=20), None, 8)
    assert torch.equal(raw.train_x, again.train_x) and not torch.equal(raw.train_x, raw.test_x)


def test_sequential_mnist1d_is_mnist1d_read_one_step_at_a_time(tmp_path):
    settings = SequentialMNIST1DSettings(num_samples=200)
    plain = DATASETS.get("seq_mnist1d").build(settings, tmp_path, 60)
    reference = mnist1d.build(settings, tmp_path, 60)
    assert plain.train_x.shape == (160, 60, 1) and plain.test_x.shape == (40, 60, 1)
    assert torch.equal(plain.train_x.squeeze(-1), reference.train_x)
    assert torch.equal(plain.train_y, reference.train_y)
    permuted = DATASETS.get("perm_seq_mnist1d").build(settings, tmp_path, 60)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(settings.permutation_seed))
    assert torch.equal(permuted.train_x.squeeze(-1), reference.train_x[:, order])
    assert torch.equal(permuted.test_x.squeeze(-1), reference.test_x[:, order])
    assert not torch.equal(permuted.train_x, plain.train_x)


def test_pixel_mnist_is_784_steps(tmp_path, no_network):
    written = write_mnist_raw(tmp_path / "raw", "MNIST")
    manifest = prepare("seq_mnist", PermutationSettings(), tmp_path)
    assert no_network == []
    assert manifest["input_shape"] == [784, 1] and manifest["kind"] == "sequence"
    stored = torch.load(tmp_path / "seq_mnist" / "test.pt")
    expected = torch.from_numpy(written["test_x"]).reshape(-1, 784).float() / 255
    assert torch.equal(stored["x"].squeeze(-1), expected)
    prepare("perm_seq_mnist", PermutationSettings(permutation_seed=3), tmp_path)
    permuted = torch.load(tmp_path / "perm_seq_mnist" / "test.pt")["x"].squeeze(-1)
    order = torch.randperm(784, generator=torch.Generator().manual_seed(3))
    assert torch.equal(permuted, expected[:, order])


def test_per_length_storage_and_loading(tmp_path):
    settings = SyntheticSettings(train_size=50, test_size=20)
    manifest = prepare("adding", settings, tmp_path, length=12)
    assert (tmp_path / "adding" / "T12" / "manifest.json").is_file()
    assert manifest["task"] == "regression" and manifest["length"] == 12
    assert manifest["baseline_metric"] == pytest.approx(1 / 6) and manifest["num_classes"] == 0
    assert manifest["sizes"] == {"train": 40, "validation": 10, "test": 20}
    data = load("adding", settings, tmp_path, length=12)
    assert data.task == "regression" and data.input_shape == (12, 2)
    stored = torch.load(tmp_path / "adding" / "T12" / "train.pt")
    assert torch.equal(data.splits["train"]["x"], stored["x"])  # the task's inputs are not standardized
    assert data.splits["train"]["y"].dtype == torch.float32
    with pytest.raises(DataNotReadyError, match="adding/T13 is missing"):
        load("adding", settings, tmp_path, length=13)
    with pytest.raises(ValueError, match="a length is required"):
        prepare("adding", settings, tmp_path)
    with pytest.raises(ValueError, match="a length is not allowed"):
        prepare("mnist1d", mnist1d.MNIST1DSettings(num_samples=200), tmp_path, length=5)


def test_sequences_are_standardized_per_feature(tmp_path):
    settings = SequentialMNIST1DSettings(num_samples=200)
    prepare("seq_mnist1d", settings, tmp_path, length=30)
    data = load("seq_mnist1d", settings, tmp_path, length=30)
    train = data.splits["train"]["x"]
    assert train.shape == (128, 30, 1)  # 160 train, 20% of them held out
    assert abs(float(train.mean())) < 1e-5 and float(train.std()) == pytest.approx(1.0, rel=1e-3)


def test_copy_memory_manifest_baseline(tmp_path):
    manifest = prepare("copy_memory", SyntheticSettings(train_size=20, test_size=10), tmp_path, length=30)
    assert manifest["baseline_metric"] == pytest.approx(10 * math.log(8) / 50)
    assert manifest["task"] == "copy_memory" and manifest["input_shape"] == [50, 10]


def test_cli_fetch_builds_each_length_the_matrix_asks_for(tmp_path, capsys):
    params = write_params(tmp_path, {"mnist1d": {"num_samples": 200}, "adding": {"train_size": 30, "test_size": 10},
                                     "copy_memory": {"train_size": 30, "test_size": 10}})
    data_root = tmp_path / "data"
    assert main(["fetch", "adding", "copy_memory", "--params", str(params), "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "adding@T6: wrote" in out and "copy_memory@T3: wrote" in out
    assert sorted(p.name for p in (data_root / "adding").iterdir()) == ["T6"]
    assert not (data_root / "mnist1d").exists()
    assert main(["fetch", "adding", "--params", str(params), "--data-root", str(data_root)]) == 0
    assert "adding@T6: up to date" in capsys.readouterr().out
