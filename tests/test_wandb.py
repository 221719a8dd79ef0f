"""W&B with no account: offline runs, read back from disk as `wandb sync` would upload them.

One tiny cell is trained with ``mode="offline"`` and its ``run-*.wandb``
transaction log is parsed (``tests/wandb_offline.py``): config, group,
per-epoch validation accuracy, probe norms, summary and the init-profile table
must all match the cell's own result files. The leaderboard stage's run must
carry the same rows as ``results/leaderboard.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.wandb_offline import offline_runs, read_run, wandb_dir_env
from vgbench import wandb_names as names
from vgbench.findings import CLAIMS
from vgbench.config import WandbSettings
from vgbench.matrix import expand
from vgbench.probes.theory import SOURCE as THEORY_SOURCE
from vgbench.report.build import build_leaderboard
from vgbench import results
from vgbench.results import cell_state
from vgbench.training.run_group import run_cell

OFFLINE = WandbSettings(mode="offline")
NO_WANDB = WandbSettings(mode="disabled")


def _cell(params, remedy: str, depth: int):
    return next(c for c in expand(params.active) if c.family == "mlp" and c.remedy == remedy and c.depth == depth)


def _single_run(wandb_dir: Path, job_type: str):
    runs = [read_run(folder) for folder in offline_runs(wandb_dir)]
    matching = [run for run in runs if run.run.job_type == job_type]
    assert len(matching) == 1, f"expected one {job_type} run under {wandb_dir}, found {[r.directory for r in runs]}"
    return matching[0]


@pytest.fixture(scope="module")
def offline_cell(tiny_params, tiny_data, tmp_path_factory):
    """A tiny he_relu cell trained with W&B offline: (cell, metrics, grad profile, the run read back, WANDB_DIR).

    Every W&B file goes under a temporary WANDB_DIR, never into the repository's
    wandb/; the working directory is elsewhere, so a run that ignored WANDB_DIR
    would be found there.
    """
    root = tmp_path_factory.mktemp("offline-cell")
    elsewhere = root / "cwd"
    elsewhere.mkdir()
    with wandb_dir_env(root / "wandb-root") as wandb_dir, pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        cell = _cell(tiny_params, "he_relu", 6)
        results_root = root / "results"
        metrics = run_cell(cell, tiny_data, results_root, OFFLINE, profile="tiny")
    folder = results_root / "cells" / cell.cell_id
    assert json.loads((folder / "metrics.json").read_text())["test_metric"] == metrics.test_metric
    profile = json.loads((folder / "grad_profile.json").read_text())
    assert not list(elsewhere.rglob("offline-run-*")), "the cell's run ignored WANDB_DIR"
    return cell, metrics, profile, _single_run(wandb_dir, names.CELL_JOB), wandb_dir


def test_offline_run_is_written_under_wandb_dir_and_finished(offline_cell):
    cell, metrics, _, run, wandb_dir = offline_cell
    assert run.directory.is_relative_to(wandb_dir)
    assert run.directory.name.endswith(run.run.run_id)
    assert metrics.wandb["run_id"] == run.run.run_id
    assert Path(metrics.wandb["run_dir"]) == run.files
    assert run.exit_code == 0  # run.finish() was reached: `wandb sync` uploads it as finished


def test_offline_run_config_and_group_identify_the_cell(offline_cell):
    cell, metrics, _, run, _ = offline_cell
    assert run.run.project == "vgbench"
    assert run.run.display_name == cell.cell_id
    # Grouped by profile and family, tagged for run-set filters (vgbench/wandb_names.py owns the names).
    assert run.run.run_group == names.group("tiny", cell.family) == "tiny/mlp"
    assert list(run.run.tags) == ["profile:tiny", "remedy:he_relu", "dataset:mnist1d", "depth:6",
                                  f"machine:{names.machine_tag(results.environment())}"]
    assert run.run.job_type == names.CELL_JOB
    assert run.config["cell_id"] == cell.cell_id
    assert run.config["recipe"] == cell.recipe
    for key, value in cell.as_dict().items():
        assert run.config[key] == value, key
    # The cell group it trained in (here a group of one), as its metrics.json records it.
    assert run.config["cell_group"] == metrics.group.model_dump()
    assert run.config["cell_group"]["size"] == 1 and run.config["cell_group"]["cells"] == [cell.cell_id]


def test_offline_run_history_has_validation_accuracy_per_epoch(offline_cell):
    cell, metrics, _, run, _ = offline_cell
    rows = [row for row in run.history if names.val_metric("accuracy") in row]
    assert [row["epoch"] for row in rows] == list(range(cell.training["max_epochs"]))
    assert [row[names.val_metric("accuracy")] for row in rows] == pytest.approx(
        [epoch["val_accuracy"] for epoch in metrics.history], rel=1e-6)


def test_offline_run_history_has_the_probe_norms_of_grad_profile_json(offline_cell):
    _, _, profile, run, _ = offline_cell
    records = profile["records"]
    layers = len(records[0]["dL_dh_norm"])
    assert layers >= 6
    rows = [row for row in run.history if names.probe_layer(0) in row]
    assert len(rows) == len(records) > 2  # one logged row per probe record, init first
    assert records[0]["phase"] == "init"
    for row, record in zip(rows, records):
        assert row[names.STEP] == record["step"]
        logged = [row[names.probe_layer(i)] for i in range(layers)]
        assert logged == pytest.approx(record["dL_dh_norm"], rel=1e-9)
        assert names.probe_layer(layers) not in row
        assert row[names.PROBE_LOG10_RATIO] == pytest.approx(math.log10(record["dL_dh_first_last_ratio"]), rel=1e-9)


def test_a_gradient_that_vanished_to_zero_reaches_wandb_as_minus_infinity_as_in_metrics_json(
        tiny_params, tiny_data, tmp_path):
    """The most vanished cell of all: weights of std 1e-50, which float32 stores as exact zeros, pass no
    gradient at all to the first layer, so its first/last ratio is exactly 0 on any machine. metrics.json
    records log10 of it as -inf; the W&B run must say the same in its history (the probe chart) and summary,
    not NaN (a missing point) or None."""
    cell = _cell(tiny_params, "small_init", 6)
    cell = dataclasses.replace(cell, recipe={**cell.recipe, "init_std": 1e-50})
    with wandb_dir_env(tmp_path / "wandb-root") as wandb_dir:
        metrics = run_cell(cell, tiny_data, tmp_path / "results", OFFLINE, profile="tiny")
    assert metrics.init_log10_dL_dh_first_last == metrics.final_log10_dL_dh_first_last == -math.inf
    assert metrics.failure == "vanished"
    run = _single_run(wandb_dir, names.CELL_JOB)
    probed = [row[names.PROBE_LOG10_RATIO] for row in run.history if names.PROBE_LOG10_RATIO in row]
    records = json.loads((tmp_path / "results" / "cells" / cell.cell_id / "grad_profile.json").read_text())["records"]
    assert probed == [-math.inf] * len(records) and len(records) > 2
    assert run.summary["init_log10_dL_dh_first_last"] == run.summary["final_log10_dL_dh_first_last"] == -math.inf
    # The first layer's weight gradient is 0 too (x^T times a zero dL/dh): -inf in both records.
    assert run.summary["init_log10_weight_grad_first_last"] == metrics.init_log10_weight_grad_first_last == -math.inf
    assert run.summary["failure"] == "vanished"


def test_offline_run_summary_has_the_cell_metrics(offline_cell):
    _, metrics, _, run, _ = offline_cell
    assert run.summary["test_metric"] == pytest.approx(metrics.test_metric, rel=1e-12)
    assert run.summary["cell_id"] == metrics.cell_id
    assert run.summary["failure"] == metrics.failure
    assert run.summary["trainable"] == metrics.trainable
    assert run.summary["init_log10_dL_dh_first_last"] == pytest.approx(
        metrics.init_log10_dL_dh_first_last, rel=1e-9)


def test_offline_run_grad_profile_init_table_matches_the_init_record(offline_cell):
    _, _, profile, run, _ = offline_cell
    init = profile["records"][0]
    reference = run.summary["grad_profile_init"]
    assert reference["_type"] == "table-file"
    path = run.files / reference["path"]
    assert path.is_file() and path.parent == run.files / "media" / "table"
    rows = run.table_rows(names.GRAD_PROFILE_INIT)
    assert [row["layer"] for row in rows] == list(range(1, len(init["dL_dh_norm"]) + 1))  # as the figures
    assert [row["dL_dh_norm"] for row in rows] == pytest.approx(init["dL_dh_norm"], rel=1e-12)
    assert [row["weight_grad_norm"] for row in rows] == pytest.approx(init["weight_grad_norm"], rel=1e-12)
    assert [row["dead_fraction"] for row in rows] == pytest.approx(init["dead_fraction"], rel=1e-12)


# -- the leaderboard stage's run ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_results(tiny_params, tiny_data, tmp_path_factory) -> Path:
    """Results of a few tiny cells (two remedies at both depths); no W&B while training."""
    root = tmp_path_factory.mktemp("leaderboard-results")
    for remedy in ("small_init", "he_relu"):
        for depth in (2, 6):
            run_cell(_cell(tiny_params, remedy, depth), tiny_data, root, NO_WANDB)
    return root


def test_leaderboard_tables_match_leaderboard_csv(tiny_params, trained_results, tmp_path):
    params = tiny_params.model_copy(update={"wandb": OFFLINE})
    with wandb_dir_env(tmp_path / "wandb-root") as wandb_dir:
        build_leaderboard(params, trained_results, log_to_wandb=True)
    csv = pd.read_csv(trained_results / "leaderboard.csv")
    assert sorted(zip(csv.remedy, csv.depth)) == [("he_relu", 2), ("he_relu", 6), ("small_init", 2), ("small_init", 6)]

    run = _single_run(wandb_dir, names.LEADERBOARD_JOB)
    assert run.run.display_name == names.leaderboard_run_name("tiny") == "leaderboard-tiny"
    # Its id names the leaderboard it logs (the W&B Report's leaderboard panels filter to that id).
    assert run.run.run_id == names.leaderboard_run_id("tiny", (trained_results / "leaderboard.json").read_bytes())
    assert run.config["profile"] == "tiny"
    assert run.exit_code == 0
    rows = run.table_rows(names.LEADERBOARD)
    assert [(r["remedy"], r["depth"]) for r in rows] == list(zip(csv.remedy, csv.depth))
    assert [r["test_metric_mean"] for r in rows] == pytest.approx(list(csv.test_metric_mean), rel=1e-9)
    # The CSV adds its provenance as columns (report/provenance.py); the W&B run has its own record.
    assert set(run.table(names.LEADERBOARD)["columns"]) == {c for c in csv.columns if not c.startswith("provenance_")}
    for row, (_, expected) in zip(rows, csv.iterrows()):
        for column in ("learning_rate", "n", "trainable_rate", "init_log10_dL_dh_first_last"):
            value = expected[column]
            if isinstance(value, float) and math.isnan(value):
                assert row[column] is None or math.isnan(row[column]), column
            else:
                assert row[column] == pytest.approx(value, rel=1e-9), column

    ranking = run.table_rows(names.RANKING)
    assert sorted(r["remedy"] for r in ranking) == ["he_relu", "small_init"]
    assert [r["rank"] for r in ranking] == [1, 2]
    # The tie-aware columns travel too (one seed per cell here: no interval, so each rank is exact).
    assert [r["rank_range"] for r in ranking] == ["1", "2"]
    rows = run.table_rows(names.LEADERBOARD)
    assert {"test_metric_ci_low", "test_metric_ci_high", "lr_grid_edge", "converged_rate"} <= set(rows[0])
    # The published claims with their verdicts (vgbench/findings.py), one row each, as claims.md has them.
    claims = run.table_rows(names.CLAIMS)
    assert len(claims) == len(CLAIMS.names()) and {r["claim"] for r in claims} == set(CLAIMS.names())
    written = json.loads((trained_results / "leaderboard.json").read_text())["claims"]
    assert {r["claim"]: (r["verdict"], r["evidence"]) for r in claims} == {
        name: (claim["verdict"], claim["evidence"]) for name, claim in written.items()}
    he_relu = next(r for r in claims if r["claim"] == "he2015_relu_he_init")
    assert "he_relu d6" in he_relu["evidence"]
    assert "| `he2015_relu_he_init` |" in (trained_results / "claims.md").read_text()
    assert {r["theory"] for r in rows} == {THEORY_SOURCE}  # both remedies are MLPs the mean field predicts
    figures = sorted(key for key in run.summary if key.startswith("figures/"))
    assert figures == ["figures/depth_mlp_mnist1d", "figures/grad_profile_mlp_mnist1d_d6"]
    assert all((run.files / run.summary[figure]["path"]).is_file() for figure in figures)
    # The headline numbers, as DVC's metrics file has them, in the run's summary (W&B's runs table).
    assert run.summary[names.HEADLINE] == json.loads((trained_results / "metrics.json").read_text())

    # The same results reported again are the same leaderboard: logged into the same run (wandb sync resumes
    # it), where a name alone would have made a second run of that name.
    with wandb_dir_env(tmp_path / "wandb-root"):
        build_leaderboard(params, trained_results, log_to_wandb=True)
    again = [read_run(folder) for folder in offline_runs(wandb_dir)]
    assert len(again) == 2 and {r.run.run_id for r in again} == {run.run.run_id}
    assert run.summary[names.HEADLINE]["mlp/mnist1d"]["leader"] == "he_relu"


def test_disabled_mode_writes_no_run(tiny_params, trained_results, tmp_path):
    params = tiny_params.model_copy(update={"wandb": NO_WANDB})
    copy = tmp_path / "results"
    shutil.copytree(trained_results / "cells", copy / "cells")
    with wandb_dir_env(tmp_path / "wandb-root") as wandb_dir:
        build_leaderboard(params, copy, log_to_wandb=True)
    assert (copy / "leaderboard.csv").is_file()
    assert offline_runs(wandb_dir) == []


def test_cells_are_not_tied_to_a_wandb_mode(tiny_params, trained_results):
    """The W&B mode is not part of a cell's config: switching it never reruns a cell."""
    ids = {mode: [cell.cell_id for cell in expand(tiny_params.model_copy(
        update={"wandb": WandbSettings(mode=mode)}).active)] for mode in ("offline", "disabled", "online")}
    assert ids["offline"] == ids["disabled"] == ids["online"]
    cell = _cell(tiny_params.model_copy(update={"wandb": OFFLINE}), "small_init", 2)
    assert "wandb" not in json.dumps(dataclasses.asdict(cell))
    # trained_results trained it with W&B disabled; under offline W&B it is done, not to train again.
    assert cell_state(trained_results, cell.cell_id).state == "done"


def test_a_cell_run_without_its_profile_is_refused_before_training(tiny_params, tiny_data, tmp_path):
    """The W&B group is <profile>/<family>: a caller that logs to W&B must say which profile."""
    cell = _cell(tiny_params, "he_relu", 2)
    with wandb_dir_env(tmp_path / "wandb-root"), pytest.raises(ValueError, match="needs profile="):
        run_cell(cell, tiny_data, tmp_path / "results", OFFLINE)
    assert not (tmp_path / "results" / "cells" / cell.cell_id / "metrics.json").exists()


def test_the_keys_the_report_plots_are_in_a_real_cell_run(offline_cell):
    """tests/test_wandb_report.py holds every plotted key to this set; here the set to a real offline run."""
    _, _, _, run, _ = offline_cell
    logged = {key for row in run.history for key in row}
    assert {names.STEP, names.PROBE_LOG10_RATIO, names.PROBE_TOTAL_NORM, names.TRAIN_LOSS,
            names.val_metric("accuracy"), names.val_metric("loss")} <= logged
    assert names.GRAD_PROFILE_INIT in run.summary
    columns = run.table(names.GRAD_PROFILE_INIT)["columns"]  # what the report's profile chart plots
    assert columns == [names.PROFILE_INDEX, *names.PROFILE_COLUMNS] and "dL_dh_norm" in columns


def test_a_cell_retrained_by_other_code_or_on_another_machine_is_another_w_and_b_run():
    """The run id is the cell id, the training code's fingerprint and the machine's tag: a stale cell's
    retraining is a new run (with the cell id alone, `wandb sync` appended it to the old one), and so is a
    second machine's training of the same cell (synced to one project, the two merged into one run); the
    config hash survives shortening."""
    short = "mlp-he_relu-mnist1d-d20-lr0.1-s0-0123456789"
    assert names.cell_run_id(short, "abcdef123456", "9c1e") == "mlp-he_relu-mnist1d-d20-lr0_1-s0-0123456789-abcdef-9c1e"
    assert names.cell_run_id(short, "abcdef123456", "9c1e") != names.cell_run_id(short, "fedcba654321", "9c1e")
    long = "resnet-residual_bn-perm_seq_mnist-d110-lr0.0003-s12-" + "f" * 10
    run_id = names.cell_run_id(long, "abcdef123456", "9c1e")
    assert len(run_id) == names.RUN_ID_LIMIT and run_id.endswith("-" + "f" * 10 + "-abcdef-9c1e")
    # Two machines: the Zen 5 and the Intel VM of the README, as results.environment() records them. The
    # machine's number of threads or visible GPUs is the cell's or the launch's business, not the tag's.
    zen5 = {"cpu_id": "AuthenticAMD family 26 model 2 stepping 1", "cpu_capability": "AVX2",
            "onednn_max_cpu_isa": "AVX2", "gpu": None, "torch": "2.14.1+cu130", "torch_threads": 1}
    intel = {**zen5, "cpu_id": "GenuineIntel family 6 model 167 stepping 1"}
    tags = {names.machine_tag(env) for env in (zen5, intel, {**zen5, "cpu_capability": "AVX512"},
                                               {**zen5, "torch": "2.15.0"}, {**zen5, "gpu": "NVIDIA H200"})}
    assert len(tags) == 5 and all(re.fullmatch(r"[0-9a-f]{4}", tag) for tag in tags)
    assert names.machine_tag({**zen5, "torch_threads": 2, "cuda_visible_devices": "3"}) == names.machine_tag(zen5)
    assert names.machine_tag(results.environment()) == names.machine_tag(results.environment())
