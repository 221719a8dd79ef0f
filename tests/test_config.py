"""params.yaml validation: every bad input is named with its key, value and what is allowed."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml

from tests.conftest import REPO
from vgbench.cli import main
from vgbench.config import ConfigError, load_params, parse_params
from vgbench.matrix import expand

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def broken(edit) -> dict:
    data = copy.deepcopy(RAW)
    edit(data)
    return data


def test_every_shipped_profile_is_valid_and_expands():
    for name in RAW["profiles"]:
        params = parse_params(RAW, profile=name)
        cells = expand(params.active)
        profile = params.active
        expected = sum(len(b.remedies) * len(b.depths) * len(profile.block_learning_rates(b))
                       for b in profile.matrix) * len(profile.seeds)
        assert len(cells) == expected


def test_default_profile_shows_the_phenomenon_by_design():
    default = parse_params(RAW, profile="default").active
    mlp = [b for b in default.matrix if b.family == "mlp"][0]
    assert {"small_init", "xavier", "he_relu", "leaky_relu", "elu", "selu_lecun", "batchnorm", "grad_clip",
            "residual", "modern"} <= set(mlp.remedies)
    assert min(mlp.depths) <= 3 and max(mlp.depths) >= 10  # one shallow, one deep
    assert len(default.seeds) >= 2 and default.trainer.accelerator == "cpu"
    assert "mnist1d" in default.datasets
    paper = parse_params(RAW, profile="paper").active
    assert len(paper.seeds) >= 5 and {"mnist", "fashion_mnist"} <= set(paper.datasets)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.update(extra_key=1), ["extra_key = 1: unknown key (allowed: profile, wandb, profiles)"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(depths=[2, 0]), ["depths", "[2, 0]", ">= 1"]),
    (lambda d: d["profiles"]["tiny"].update(learning_rates=[-0.1]), ["learning_rates", "-0.1", "> 0"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(family="cnn"), ["family", "'cnn'", "allowed", "mlp"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(remedies=["small_init", "dropout"]),
     ["remedies", "dropout", "allowed", "he_relu"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(dataset="imagenet"),
     ["dataset", "imagenet", "mnist1d"]),
    (lambda d: d["profiles"]["tiny"]["training"].update(max_epochs="ten"), ["training.max_epochs", "'ten'"]),
    (lambda d: d["profiles"]["tiny"]["training"].update(optimizer="rmsprop"), ["optimizer", "'sgd' or 'adam'"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(model={"width": 0}), ["width", "greater than 0"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(model={"heads": 4}),
     ["model.heads = 4: unknown key (allowed: ", "width"]),
    (lambda d: d["profiles"]["tiny"]["datasets"].update(mnist1d={"num_samples": 10}),
     ["num_samples", "10", "greater than or equal to 100"]),
    (lambda d: d.update(profile="huge"), ["profile", "'huge'", "allowed", "tiny"]),
    (lambda d: d["wandb"].update(mode="cloud"), ["wandb.mode", "'cloud'", "'offline'"]),
    (lambda d: d["profiles"]["tiny"].update(datasets={}), ["not configured", "mnist1d"]),
    (lambda d: d["profiles"]["tiny"]["pretraining"].update(k=0), ["profiles.tiny.pretraining.k = 0", "greater"]),
    (lambda d: d["profiles"]["tiny"]["pretraining"].update(visible_units="binary"),
     ["pretraining.visible_units = 'binary'", "'gaussian' or 'bernoulli'"]),
    (lambda d: d["profiles"]["tiny"].update(learning_rates=[float("inf")]),
     ["learning_rates", "inf", "finite and > 0"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][4].update(depths=[8, 9]),
     ["profiles.tiny.matrix.4", "depths: resnet depth", "6n+2", "not 9"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(model={"widht": 16}),
     ["profiles.tiny.matrix.0.model.widht = 16: unknown key (allowed: ", "width"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"name": "kubernetes"}),
     ["profiles.tiny.launcher.name = 'kubernetes'", "unknown launcher", "allowed", "'local'", "'slurm'"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"gpus": [0, 0]}),
     ["launcher.gpus = [0, 0]", "distinct"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"slurm": {"time_minutes": 0}}),
     ["launcher.slurm.time_minutes = 0", "greater than 0"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"slurm": {"time_minutes": 20, "task_minutes": 45}}),
     ["task_minutes = 45 is more than time_minutes = 20", "task_minutes <= time_minutes"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"slurm": {"partiton": "gpu"}}),
     ["launcher.slurm.partiton = 'gpu': unknown key (allowed: ", "partition"]),
    (lambda d: d["profiles"]["tiny"].update(trainer={"threads": 2}, launcher={"threads": 1}),
     ["launcher.threads = 1 but trainer.threads pins 2"]),
    (lambda d: d["profiles"]["tiny"].update(launcher={"group_size": 0}),
     ["launcher.group_size = 0", "greater than 0"]),
    # YAML's true is not an integer (lax validation read it as 1: seed 1, depth 1, one device).
    (lambda d: d["profiles"]["tiny"].update(seeds=[True, 0]), ["profiles.tiny.seeds.0 = True", "valid integer"]),
    (lambda d: d["profiles"]["tiny"].update(trainer={"devices": True}), ["profiles.tiny.trainer.devices", "True"]),
    # The same rate twice (1 and 1.0 too) would list the same cells twice.
    (lambda d: d["profiles"]["tiny"].update(learning_rates=[0.1, 0.1]), ["learning_rates", "listed twice"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][1].update(learning_rates=[1, 1.0]),
     ["profiles.tiny.matrix.1.learning_rates", "listed twice"]),
    # Every data set's problems, each under its data set's name, with the keys allowed there.
    (lambda d: d["profiles"]["tiny"]["datasets"].update(mnist1d={"num_sample": 5000},
                                                        adding={"validation_fraction": 2}),
     ["(2 problem(s))", "profiles.tiny.datasets.mnist1d.num_sample = 5000: unknown key (allowed: ", "num_samples",
      "profiles.tiny.datasets.adding.validation_fraction = 2: Input should be less than 1"]),
    # A milestone must fall on its own epoch between the first and the last (0 would divide the rate from the
    # start, max_epochs never acts).
    (lambda d: d["profiles"]["tiny"]["training"].update(max_epochs=4, lr_milestones=[0.1, 0.5]),
     ["lr_milestones = [0.1, 0.5] of max_epochs = 4 fall at epochs [0, 2]", "from 1 to 3"]),
    (lambda d: d["profiles"]["tiny"]["matrix"][0].update(training={"max_epochs": 2, "lr_milestones": [0.5, 0.9]}),
     ["matrix.0.training: lr_milestones = [0.5, 0.9] of max_epochs = 2 fall at epochs [1, 2]"]),
])
def test_bad_values_are_named(edit, expected):
    with pytest.raises(ConfigError) as error:
        parse_params(broken(edit))
    message = str(error.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_remedy_that_does_not_apply_to_the_family_is_refused():
    with pytest.raises(ConfigError, match=r"remedy 'irnn' does not apply to family 'mlp'"):
        parse_params(broken(lambda d: d["profiles"]["tiny"]["matrix"][0].update(remedies=["irnn"])))


APPENDED = len(RAW["profiles"]["tiny"]["matrix"])  # the index of a block _block appends


def _block(d, **block):
    d["profiles"]["tiny"]["matrix"].append({"remedies": ["small_init"], "depths": [5], **block})
    d["profiles"]["tiny"]["datasets"].setdefault(block["dataset"], {})


@pytest.mark.parametrize("block, expected", [
    (dict(family="rnn", dataset="mnist1d"), ["family 'rnn' reads ['sequence'] inputs", "'vector'"]),
    (dict(family="mlp", dataset="adding"), ["family 'mlp' reads", "'sequence' inputs"]),
    (dict(family="rnn", dataset="seq_mnist"), ["length 784; depths must be [784], got [5]"]),
    (dict(family="rnn", dataset="adding", training={"epochs": 3}), ["training keys ['epochs'] are unknown"]),
    (dict(family="rnn", dataset="adding", training={"batch_size": 0}), [f"  - profiles.tiny.matrix.{APPENDED}.training.batch_size = 0: Input should be greater than 0"]),
    (dict(family="rnn", dataset="adding", learning_rates=[-1.0]), ["learning rates must be finite and > 0, got [-1.0]"]),
    (dict(family="rnn", dataset="adding", depths=[5, 5]), ["depths are listed twice"]),
    (dict(family="mlp", dataset="mnist1d", training={"augment": "pad_crop_flip"}),
     [f"matrix.{APPENDED}.training.augment = 'pad_crop_flip' needs an image data set", "'vector'"]),
    (dict(family="mlp", dataset="mnist1d", training={"lr_milestones": [0.75, 0.5]}),
     ["lr_milestones must be increasing fractions", "[0.75, 0.5]"]),
])
def test_blocks_must_fit_their_family_and_data_set(block, expected):
    with pytest.raises(ConfigError) as error:
        parse_params(broken(lambda d: _block(d, **block)))
    for fragment in expected:
        assert fragment in str(error.value), f"{fragment!r} missing from:\n{error.value}"


def test_block_training_and_rates_replace_the_profile_s(tiny_params):
    cells = expand(tiny_params.active)
    rnn = [c for c in cells if c.family == "rnn"]
    mlp = [c for c in cells if c.family == "mlp"]
    assert rnn and {c.training["optimizer"] for c in rnn} == {"adam"}
    assert {c.training["optimizer"] for c in mlp} == {"sgd"}
    assert {c.learning_rate for c in rnn} == {0.01} and {c.learning_rate for c in mlp} == {0.1}
    # Per-length data sets are stored once per sequence length the matrix asks for.
    assert tiny_params.active.stored_datasets() == [("adding", 6), ("copy_memory", 3), ("mnist1d", None)]


def test_cli_rejects_bad_params_with_exit_2_and_writes_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(broken(lambda d: d["profiles"]["tiny"].update(seeds=[]))))
    for command in (["fetch"], ["train"], ["leaderboard"]):
        code = main([*command, "--params", str(params), "--profile", "tiny",
                     "--data-root", str(tmp_path / "data"), "--results-root", str(tmp_path / "results")])
        assert code == 2
        assert "profiles.tiny.seeds" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cli_reports_missing_and_invalid_files(tmp_path, capsys):
    assert main(["train", "--params", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [unclosed")
    assert main(["train", "--params", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_train_without_fetched_data_names_the_fix(tmp_path, capsys):
    code = main(["train", "--params", str(REPO / "params.yaml"), "--profile", "tiny",
                 "--data-root", str(tmp_path / "data"), "--results-root", str(tmp_path / "results")])
    assert code == 1
    captured = capsys.readouterr()
    # Checked before any work: one message naming every missing data set and the command that fixes it,
    # with the options that make it store them where this command reads them.
    fix = re.search(r"run `(vgbench fetch [^`]*)` first", captured.err)
    assert fix and shlex.split(fix[1]) == ["vgbench", "fetch", "adding", "copy_memory", "mnist1d", "--params",
                                           str(REPO / "params.yaml"), "--profile", "tiny", "--data-root",
                                           str(tmp_path / "data")], captured.err
    assert not (tmp_path / "results" / "launch").exists()
    assert main(shlex.split(fix[1])[1:]) == 0  # the command given works
    assert {p.name for p in (tmp_path / "data").iterdir()} >= {"adding", "copy_memory", "mnist1d"}


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    text = (REPO / "params.yaml").read_text()
    doubled = tmp_path / "params.yaml"
    doubled.write_text(text.replace("profile: default\n", "profile: default\nprofile: tiny\n", 1))
    line = text.splitlines().index("profile: default") + 1
    with pytest.raises(ConfigError) as error:
        load_params(doubled)
    assert f"key 'profile' is given twice: first on line {line}, again on line {line + 1}" in str(error.value)
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("    seeds: [0]\n", "    seeds: [0]\n    seeds: [5]\n", 1))
    with pytest.raises(ConfigError, match="key 'seeds' is given twice"):
        load_params(nested)
    # Anchors and aliases (the paper profile's RNN blocks) are not duplicates, and an alias is its anchor's value.
    rnn = [block for block in load_params(REPO / "params.yaml", "paper").active.matrix if block.family == "rnn"]
    assert len(rnn) == 4 and all(block.remedies == rnn[0].remedies and block.learning_rates == rnn[0].learning_rates
                                 and block.training == rnn[0].training for block in rnn)
    assert "gru" in rnn[0].remedies and rnn[0].training["optimizer"] == "adam"


def test_params_that_is_a_folder_or_binary_is_named(tmp_path, capsys):
    assert main(["train", "--params", str(tmp_path)]) == 2
    assert "is a folder; --params takes a params.yaml file" in capsys.readouterr().err
    binary = tmp_path / "params.pt"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", "--params", str(binary)]) == 2
    assert "not a text file" in capsys.readouterr().err


def test_the_cell_ids_the_readme_shows_are_cells_of_the_default_profile():
    """A cell id's hash is of its resolved config: an example in the README goes stale when a default does."""
    shown = re.findall(r"\b(?:mlp|rnn|dbn|resnet|highway)-[\w.-]+-s\d+-[0-9a-f]{10}\b",
                       (REPO / "README.md").read_text())
    ids = {cell.cell_id for cell in expand(parse_params(RAW, profile="default").active)}
    assert shown and set(shown) <= ids, sorted(set(shown) - ids)
