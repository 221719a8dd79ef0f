"""The W&B Report, built offline: its specification's blocks, panels, run-set filters and metric keys
match the names vgbench logs its runs with, and wandb-workspaces accepts it."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from wandb_workspaces.expr import expr_to_filters

from tests.test_report import cells, params, write_results  # noqa: F401 (fixtures)
from vgbench import wandb_names as names
from vgbench.cli import main
from vgbench.report import build, wandb_report


@pytest.fixture(scope="module")
def built(tmp_path_factory, params, cells):
    results = tmp_path_factory.mktemp("report") / "results"
    write_results(results, cells)
    build.build_leaderboard(params, results, log_to_wandb=False)
    data = build.aggregate_results(params, results)
    spec, written = wandb_report.write(params, results, data.rows, data.ranked, data.table)
    return spec, written, results, data


def test_the_specification_and_its_markdown_are_written(built):
    spec, written, results, _ = built
    assert [p.name for p in written] == ["report.json", "report.md"]
    assert json.loads((results / "report" / "report.json").read_text()) == spec
    text = (results / "report" / "report.md").read_text()
    assert text.startswith("# vgbench — synthetic profile") and "### What the results show" in text
    assert "| `he2015_relu_he_init` |" in text  # the claims table, as claims.md has it
    assert "## mlp on mnist1d (profile synthetic)" in text  # the leaderboard tables


def test_summaries_are_written_from_the_rows(built):
    spec, _, _, data = built
    [summary] = [b["text"] for b in spec["blocks"] if b["type"] == "p" and b["text"].startswith("mlp on mnist1d")]
    deepest = data.rows[data.rows["depth"] == data.rows["depth"].max()]
    vanished = deepest[deepest["rate_vanished"] >= 0.5]["remedy"].tolist()
    assert vanished == ["small_init"] and "vanished: small_init" in summary
    assert "trained: he_relu, grad_clip" in summary and "at the deepest depth, 6 (hidden layers)" in summary
    ranked = data.ranked[data.ranked["family"] == "mlp"]
    leaders = ranked[ranked["rank_range"].str.split("–").str[0] == "1"]["remedy"].tolist()
    assert summary.endswith(f"test accuracy: {', '.join(leaders)}.") and "small_init" not in leaders


def test_a_recurrent_family_is_summarized_at_its_longest_sequence():
    rows = pd.DataFrame([{"family": "rnn", "dataset": "adding", "remedy": remedy, "depth": depth, "metric": "mse",
                          "rate_vanished": vanished, "trainable_rate": trainable}
                         for remedy, depth, vanished, trainable in [
                             ("small_init", 10, 0.0, 1.0), ("small_init", 50, 1.0, 0.0),
                             ("lstm", 10, 0.0, 1.0), ("lstm", 50, 0.0, 1.0)]])
    ranked = pd.DataFrame([{"family": "rnn", "dataset": "adding", "remedy": "lstm", "rank_range": "1"},
                           {"family": "rnn", "dataset": "adding", "remedy": "small_init", "rank_range": "2"}])
    summary = wandb_report.family_summary(rows, ranked, "rnn", "adding")
    assert summary.startswith("rnn on adding, at the longest sequence, 50 (sequence length")
    assert "vanished: small_init" in summary and "trained: lstm " in summary and summary.endswith("test mse: lstm.")


def test_run_sets_filter_this_profile_s_groups_and_panels_use_logged_keys(built):
    spec, _, _, data = built
    grids = [b for b in spec["blocks"] if b["type"] == "panel_grid"]
    families = list(dict.fromkeys(data.rows["family"]))
    pairs = list(data.rows[["family", "dataset"]].drop_duplicates().itertuples(index=False, name=None))
    assert len(grids) == 1 + len(pairs)
    groups = {f.value for g in grids for f in expr_to_filters(g["runset"]["filters"]).filters
              if f.key.name == "group"}
    assert groups == {names.group("synthetic", family) for family in families}
    # A line per remedy and depth, over one data set's runs: never shallow and deep nets, or tasks, averaged.
    for grid, (family, dataset) in zip(grids[1:], pairs):
        keys = {(f.key.section, f.key.name): f.value for f in expr_to_filters(grid["runset"]["filters"]).filters}
        assert keys[("run", "group")] == names.group("synthetic", family) and keys[("config", "dataset")] == dataset
        assert grid["runset"]["groupby"] == ["config.remedy", "config.depth"]
    logged = {names.STEP, names.PROBE_LOG10_RATIO, names.TRAIN_LOSS, names.val_metric("accuracy")}
    tables = {names.LEADERBOARD, names.RANKING, names.CLAIMS, names.GRAD_PROFILE_INIT}
    for grid in grids:
        for panel in grid["panels"]:
            if panel["type"] == "line":
                assert {panel["x"], *panel["y"]} <= logged, panel
            elif panel["type"] == "table":
                assert panel["table"] in tables
            elif panel["type"] == "profile":  # a line chart over a cell run's per-layer table
                assert (panel["table"], panel["x"], panel["y"]) == (
                    names.GRAD_PROFILE_INIT, names.PROFILE_INDEX, "dL_dh_norm")
                assert panel["y"] in names.PROFILE_COLUMNS
    board = grids[0]["runset"]["filters"]
    assert f"'{names.LEADERBOARD_JOB}'" in board


def test_run_sets_hold_exactly_the_runs_behind_this_leaderboard(built, params):
    """A project holds other commits', machines' and leaderboards' runs of the same groups and names: each run
    set lists the runs of the leaderboard's own cells (and its own leaderboard run), so none of those is
    drawn, and a cell trained with W&B off is left out of the list rather than matched by a name."""
    spec, _, results, data = built
    grids = [b for b in spec["blocks"] if b["type"] == "panel_grid"]
    board = {(f.key.section, f.key.name): f.value for f in expr_to_filters(grids[0]["runset"]["filters"]).filters}
    expected_id = names.leaderboard_run_id("synthetic", (results / "leaderboard.json").read_bytes())
    assert board[("run", "name")] == [expected_id] == grids[0]["runset"]["run_ids"]  # W&B calls a run's id "name"
    assert expected_id.startswith("leaderboard-synthetic-") and len(expected_id) == len("leaderboard-synthetic-") + 8
    pairs = list(data.rows[["family", "dataset"]].drop_duplicates().itertuples(index=False, name=None))
    for grid, (family, dataset) in zip(grids[1:], pairs):
        ids = {(f.key.section, f.key.name): f.value for f in expr_to_filters(grid["runset"]["filters"]).filters}
        block_cells = data.table[(data.table["trained_as"] == family) & (data.table["dataset"] == dataset)]
        assert sorted(ids[("run", "name")]) == sorted(f"{c}-run" for c in set(block_cells["cell_id"])) == grid[
            "runset"]["run_ids"]
        assert len(grid["runset"]["run_ids"]) == block_cells["cell_id"].nunique() > 1
    text = (results / "report" / "report.md").read_text()
    assert f"(run `{expected_id}`, among Metric('JobType') == 'leaderboard'" in text
    assert f"(the {len(grids[1]['runset']['run_ids'])} runs of this leaderboard's cells, among " in text

    # A cell trained with W&B off has no run: the list leaves it out, and a block of such cells says so.
    some_off = data.table.assign(wandb_run_id=data.table["wandb_run_id"].where(data.table["seed"] != 0))
    all_off = data.table.assign(wandb_run_id=None)
    first_block = data.table[(data.table["trained_as"] == pairs[0][0]) & (data.table["dataset"] == pairs[0][1])]
    for off, logged in ((some_off, first_block[first_block["seed"] != 0]), (all_off, first_block[:0])):
        grid = [b for b in wandb_report.specification(params, data.rows, data.ranked, off, expected_id, "", "")[
            "blocks"] if b["type"] == "panel_grid"][1]
        assert grid["runset"]["run_ids"] == sorted(set(logged["wandb_run_id"]))
    unlogged = wandb_report.specification(params, data.rows, data.ranked, all_off, expected_id, "", "")
    assert "(no run: these cells were trained with W&B off, among " in wandb_report.markdown(unlogged)
    # wandb-workspaces takes an empty list as a run set that matches nothing (not as no filter at all).
    grid = [g for g in wandb_report.to_report(unlogged).blocks if hasattr(g, "runsets")][1]
    assert expr_to_filters(grid.runsets[0].filters).filters[-1].value == []


def test_wandb_workspaces_builds_the_report_offline(built):
    import wandb_workspaces.reports.v2 as wr

    spec, _, _, _ = built
    report = wandb_report.to_report(spec)
    assert isinstance(report, wr.Report) and report.title == spec["title"]
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [g.runsets[0].filters for g in grids] == [b["runset"]["filters"] for b in spec["blocks"]
                                                     if b["type"] == "panel_grid"]
    profiles = [p for g in grids for p in g.panels if isinstance(p, wr.CustomChart)]
    assert len(profiles) == len(grids) - 1  # one per family
    assert all(p.query == {"summaryTable": {"tableKey": names.GRAD_PROFILE_INIT}} for p in profiles)
    lines = [p for g in grids for p in g.panels if isinstance(p, wr.LinePlot)]
    assert {y for p in lines for y in p.y} == {names.PROBE_LOG10_RATIO, names.TRAIN_LOSS, names.val_metric("accuracy")}


def test_the_command_needs_the_leaderboard_first(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    from tests.conftest import REPO
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(profile="tiny", wandb={**raw["wandb"], "mode": "offline"})
    params.write_text(yaml.safe_dump(raw))
    args = ["report", "--params", str(params), "--results-root", str(tmp_path / "results")]
    assert main(args) == 1 and "run `vgbench train` first" in capsys.readouterr().err


def test_publish_refuses_a_non_online_mode_after_writing_the_report_files(built, tmp_path, capsys):
    import yaml

    from tests.test_report import small_params

    spec, _, built_results, _ = built
    results = tmp_path / "results"
    shutil.copytree(built_results, results)
    shutil.rmtree(results / "report")  # so that what the command writes is seen to be written
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**small_params(), "wandb": {"project": "vgbench", "mode": "offline"}}))
    code = main(["report", "--params", str(params), "--results-root", str(results), "--publish"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "set wandb.mode: online" in err and "'offline'" in err and "wandb sync" in err
    # The local files are still written, and are the report of these results.
    assert json.loads((results / "report" / "report.json").read_text()) == spec
    assert (results / "report" / "report.md").read_text() == (built_results / "report" / "report.md").read_text()


def test_an_unset_entity_is_filled_everywhere_before_saving(built):
    spec, _, _, _ = built
    assert spec["entity"] is None  # params.wandb.entity: null
    filled = wandb_report.with_entity(spec, "my-team")
    assert filled["entity"] == "my-team"
    assert {b["runset"]["entity"] for b in filled["blocks"] if "runset" in b} == {"my-team"}
    assert spec["entity"] is None  # the specification on disk is left as it was


def test_rank_one_means_a_range_that_starts_at_one_not_ten():
    import pandas as pd

    rows = pd.DataFrame([{"family": "mlp", "dataset": "d", "remedy": r, "depth": 20, "metric": "accuracy",
                          "trainable_rate": 1.0, "rate_vanished": 0.0} for r in ("a", "b", "c")])
    ranked = pd.DataFrame([{"family": "mlp", "dataset": "d", "remedy": r, "rank_range": text}
                           for r, text in (("a", "1–2"), ("b", "1–2"), ("c", "10–12"))])
    assert wandb_report.family_summary(rows, ranked, "mlp", "d").endswith("test accuracy: a, b.")


def test_a_report_refuses_a_leaderboard_built_from_other_results(tmp_path, params, cells):
    """The report summarizes the cells now and quotes leaderboard.md: built from other results (here a row's
    cell moved away since), the two would contradict each other in one published report."""
    results = tmp_path / "results"
    write_results(results, cells)
    build.build_leaderboard(params, results, log_to_wandb=False)
    shutil.move(results / "cells" / cells[0].cell_id, tmp_path / "aside")
    data = build.aggregate_results(params, results)
    with pytest.raises(wandb_report.ReportError, match=r"leaderboard.json was built from other results .*\("
                                                       r"1 row\(s\) differ, e.g. mlp/mnist1d/small_init/d2\)"):
        wandb_report.write(params, results, data.rows, data.ranked, data.table)
    assert not (results / "report").exists()
    build.build_leaderboard(params, results, log_to_wandb=False)  # rebuilt: the report follows
    written = wandb_report.write(params, results, data.rows, data.ranked, data.table)[1]
    assert [p.name for p in written] == ["report.json", "report.md"]
