"""A W&B Report of a profile's results, built with ``wandb-workspaces`` (``wandb_workspaces.reports.v2``).

The report is first a plain specification (a dict, written to ``results/report/report.json``, with a
Markdown rendering of the same content in ``report.md``): title and profile, a summary per family
written from the leaderboard rows (what vanished, what trained, the frontier), the leaderboard,
ranking and claims tables (from the leaderboard run), line plots of each family's gradient ratio
and validation metric per remedy, each cell's gradient profile at initialization (a line chart of its
``grad_profile_init`` table), the figures, and one run set per family holding exactly the runs of this
leaderboard's cells, so a reader can open every cell's run (and no other machine's or commit's). Every
name in it (groups, job types, metric and table keys) comes from vgbench/wandb_names.py, the module the
runs are logged with.

``to_report`` turns the specification into ``wandb_workspaces`` objects; ``publish`` saves them
(``wandb.mode: online``, after ``wandb sync`` of offline runs) and returns the report's URL.
Building the objects needs no account; saving does (wandb-workspaces resolves the project then).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vgbench import atomic
from vgbench import wandb_names as names
from vgbench.report import at_deepest

if TYPE_CHECKING:  # the CLI imports this module for its error class: keep that import light
    import pandas as pd

    from vgbench.config import Params


def family_summary(rows: pd.DataFrame, ranked: pd.DataFrame, family: str, dataset: str) -> str:
    """One paragraph from the rows of one (family, data set): at the deepest depth (an RNN's longest
    sequence), which remedies vanished, which trained, and who leads the frontier."""
    from vgbench.models import FAMILIES

    part = rows[(rows["family"] == family) & (rows["dataset"] == dataset)]
    depth, trained, vanished = at_deepest(part)
    entry = FAMILIES.get(family)
    where = "the longest sequence" if entry.depth_is_length else "the deepest depth"
    top = ranked[(ranked["family"] == family) & (ranked["dataset"] == dataset)]
    leaders = top[top["rank_range"].str.split("–").str[0] == "1"]["remedy"].tolist()
    metric = part["metric"].iloc[0]
    return (f"{family} on {dataset}, at {where}, {depth} ({entry.depth_meaning}): "
            f"{'vanished: ' + ', '.join(vanished) if vanished else 'none vanished'}; "
            f"{'trained: ' + ', '.join(trained) if trained else 'none trained'} "
            f"(trainable for at least half of the seeds). Rank 1 by the frontier, then test {metric}: "
            f"{', '.join(leaders) if leaders else 'none'}.")


def _runset(params: Params, name: str, where: str, run_ids: list[str], groupby: list[str]) -> dict:
    """A run set of exactly ``run_ids`` (the runs behind this leaderboard) among the runs ``where`` selects.
    A project holds more runs of the same names and groups: other commits' (a stale cell is retrained into
    a run of its own), other machines' (a second machine's check of a table, README "Checking a verdict on
    a second machine"), other leaderboards'; filtered by group alone, the panels would draw them all."""
    return {"name": name, "entity": params.wandb.entity, "project": params.wandb.project, "where": where,
            "run_ids": run_ids, "filters": f"{where} and Metric('ID') in {run_ids!r}", "groupby": groupby}


def _cells_runset(params: Params, family: str, dataset: str, table: pd.DataFrame) -> dict:
    """One (family, data set)'s cell runs, a line per (remedy, depth): one line per remedy averaged shallow and
    deep nets (a probe ratio of -1.7 with one of -32) and, in the RNN family, tasks of different losses. A
    twin row's run is its twin family's (``trained_as``), in that family's panels."""
    cells = table[(table["trained_as"] == family) & (table["dataset"] == dataset)]
    run_ids = sorted(set(cells["wandb_run_id"].dropna()))
    return _runset(params, f"{params.profile}/{family} cells on {dataset}",
                   f"Metric('Group') == '{names.group(params.profile, family)}' and "
                   f"Metric('JobType') == '{names.CELL_JOB}' and Config('dataset') == '{dataset}'",
                   run_ids, ["config.remedy", "config.depth"])


def _leaderboard_runset(params: Params, run_id: str) -> dict:
    return _runset(params, f"{params.profile} leaderboard", f"Metric('JobType') == '{names.LEADERBOARD_JOB}'",
                   [run_id], [])


def specification(params: Params, rows: pd.DataFrame, ranked: pd.DataFrame, table: pd.DataFrame,
                  leaderboard_run_id: str, leaderboard_md: str, claims_md: str) -> dict:
    """The report as plain data: blocks in order; panels name their run set, x/y keys or table. ``table`` is
    the leaderboard's cells (aggregate.cell_table), whose W&B runs the family panels draw."""
    blocks: list[dict] = [
        {"type": "h1", "text": f"vgbench: the {params.profile} profile"},
        {"type": "p", "text": params.active.description},
        {"type": "h2", "text": "What the results show"},
        *({"type": "p", "text": family_summary(rows, ranked, family, dataset)}
          for family, dataset in rows[["family", "dataset"]].drop_duplicates().itertuples(index=False)),
        {"type": "h2", "text": "Leaderboard, ranking and published claims"},
        {"type": "panel_grid", "runset": _leaderboard_runset(params, leaderboard_run_id), "panels": [
            {"type": "table", "table": names.LEADERBOARD}, {"type": "table", "table": names.RANKING},
            {"type": "table", "table": names.CLAIMS},
            {"type": "media", "key_prefix": names.FIGURES}]},
        {"type": "markdown", "text": leaderboard_md},
        {"type": "markdown", "text": claims_md},
    ]
    from vgbench.models import FAMILIES

    for family, dataset in rows[["family", "dataset"]].drop_duplicates().itertuples(index=False):
        metric = rows[(rows["family"] == family) & (rows["dataset"] == dataset)]["metric"].iloc[0]
        twin_of = FAMILIES.get(family).trains_as
        blocks += [
            {"type": "h2", "text": f"{family} on {dataset}: gradient flow and training, per remedy and depth"},
            *([{"type": "p", "text": f"Rows of {family} that train the very network of a {twin_of} cell (no "
                                     f"pretraining; vgbench/twins.py) ran once, as that cell: their runs are in "
                                     f"the {twin_of} panels."}] if twin_of else []),
            {"type": "panel_grid", "runset": _cells_runset(params, family, dataset, table), "panels": [
                {"type": "line", "title": "log10 ||dL/dh_first|| / ||dL/dh_last|| at probe steps",
                 "x": names.STEP, "y": [names.PROBE_LOG10_RATIO]},
                {"type": "line", "title": f"validation {metric}", "x": names.STEP, "y": [names.val_metric(metric)]},
                {"type": "line", "title": "training loss", "x": names.STEP, "y": [names.TRAIN_LOSS]},
                {"type": "profile", "title": "||dL/dh_l|| at initialization against l, one line per cell",
                 "table": names.GRAD_PROFILE_INIT, "x": names.PROFILE_INDEX, "y": "dL_dh_norm"}]},
        ]
    return {"title": f"vgbench — {params.profile} profile", "project": params.wandb.project,
            "entity": params.wandb.entity, "description": f"{len(rows)} leaderboard rows, profile {params.profile}",
            "blocks": blocks}


def markdown(spec: dict) -> str:
    """The specification as a document: text as text, each panel grid as the run set it filters and its panels."""
    lines = [f"# {spec['title']}", ""]
    for block in spec["blocks"]:
        kind = block["type"]
        if kind in ("h1", "h2"):
            lines += [f"{'#' * (2 if kind == 'h1' else 3)} {block['text']}", ""]
        elif kind in ("p", "markdown"):
            lines += [block["text"].strip(), ""]
        else:
            runset = block["runset"]
            ids = runset["run_ids"]
            which = (f"run `{ids[0]}`" if len(ids) == 1 else f"the {len(ids)} runs of this leaderboard's cells"
                     if ids else "no run: these cells were trained with W&B off")
            lines.append(f"Panels over run set *{runset['name']}* ({which}, among {runset['where']}; grouped by "
                         f"{', '.join(runset['groupby']) or 'nothing'}):")
            for panel in block["panels"]:
                what = (f"line plot of {', '.join(panel['y'])} against {panel['x']}" if panel["type"] == "line"
                        else f"table `{panel['table']}`" if panel["type"] == "table"
                        else f"line chart of `{panel['table']}`'s {panel['y']} against {panel['x']}"
                        if panel["type"] == "profile"
                        else f"the images logged under `{panel['key_prefix']}`")
                lines.append(f"- {what}")
            lines.append("")
    return "\n".join(lines)


def to_report(spec: dict):
    """The ``wandb_workspaces.reports.v2.Report`` of ``spec`` (no account needed until it is saved)."""
    import wandb_workspaces.reports.v2 as wr

    def panel(p: dict):
        if p["type"] == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]))
        if p["type"] == "table":
            return wr.WeavePanelSummaryTable(table_name=p["table"])
        if p["type"] == "profile":  # a table logged per run, as lines: W&B's line preset over its rows
            return wr.CustomChart(query={"summaryTable": {"tableKey": p["table"]}}, chart_name="wandb/line/v0",
                                  chart_fields={"x": p["x"], "y": p["y"]}, chart_strings={"title": p["title"]})
        return wr.MediaBrowser(media_keys=[p["key_prefix"]])

    def block(b: dict):
        if b["type"] == "h1":
            return wr.H1(b["text"])
        if b["type"] == "h2":
            return wr.H2(b["text"])
        if b["type"] == "p":
            return wr.P(b["text"])
        if b["type"] == "markdown":
            return wr.MarkdownBlock(text=b["text"])
        r = b["runset"]
        runset = wr.Runset(entity=r["entity"] or "", project=r["project"], name=r["name"], filters=r["filters"],
                           groupby=list(r["groupby"]))
        return wr.PanelGrid(runsets=[runset], panels=[panel(p) for p in b["panels"]])

    return wr.Report(project=spec["project"], entity=spec["entity"] or "", title=spec["title"],
                     description=spec["description"], blocks=[block(b) for b in spec["blocks"]])


class ReportError(RuntimeError):
    """The report cannot be built or saved; the message says what to do."""


def _check_leaderboard_is_current(results_root: Path, rows: pd.DataFrame) -> None:
    """The report quotes leaderboard.md and claims.md and summarizes ``rows`` (the cells now): refuse where the
    leaderboard was built from other results (cells since trained, moved or retrained), which would make the
    report contradict itself."""
    from vgbench.report.build import row_records

    path = results_root / "leaderboard.json"
    try:
        built = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReportError(f"{path} cannot be read ({error}): run `vgbench leaderboard` (or `dvc repro`) first") from None
    now = {key: (row["n"], row["test_metric_mean"]) for key, row in row_records(rows).items()}
    then = {key: (row.get("n"), row.get("test_metric_mean")) for key, row in built.items()}
    differ = sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))
    if differ:
        raise ReportError(f"{path} was built from other results than {results_root / 'cells'} holds now ({len(differ)} "
                          f"row(s) differ, e.g. {differ[0]}): run `vgbench leaderboard` (or `dvc repro`) first")


def write(params: Params, results_root: Path, rows: pd.DataFrame, ranked: pd.DataFrame,
          table: pd.DataFrame) -> tuple[dict, list[Path]]:
    """results/report/report.json and report.md, from the leaderboard's own Markdown and the rows (and
    ``table``, their cells)."""
    from vgbench.report.build import leaderboard_run_id

    for name in ("leaderboard.md", "claims.md"):
        if not (results_root / name).is_file():
            raise ReportError(f"{results_root / name} is missing: run `vgbench leaderboard` (or `dvc repro`) first")
    _check_leaderboard_is_current(results_root, rows)
    spec = specification(params, rows, ranked, table, leaderboard_run_id(params.profile, results_root),
                         (results_root / "leaderboard.md").read_text(),
                         (results_root / "claims.md").read_text())
    folder = results_root / "report"
    atomic.write_text(folder / "report.json", json.dumps(spec, indent=2) + "\n")
    atomic.write_text(folder / "report.md", markdown(spec))
    return spec, [folder / "report.json", folder / "report.md"]


def with_entity(spec: dict, entity: str) -> dict:
    """``spec`` with ``entity`` wherever it named none (``wandb.entity: null``: the login's default entity)."""
    def fill(block: dict) -> dict:
        if "runset" not in block:
            return block
        return {**block, "runset": {**block["runset"], "entity": block["runset"]["entity"] or entity}}

    return {**spec, "entity": spec["entity"] or entity, "blocks": [fill(b) for b in spec["blocks"]]}


def publish(spec: dict) -> str:
    """Save the report to W&B (needs a login and the synced runs); its URL."""
    if not spec["entity"]:
        import wandb

        spec = with_entity(spec, wandb.Api().default_entity)
    report = to_report(spec)
    report.save()
    return report.url
