"""The leaderboard stage: cell results in, tables, figures and W&B tables out.

Reads only ``results/cells/*/metrics.json`` and ``grad_profile.json`` of the
active profile's cells, so everything here can be rebuilt without retraining.
Writes ``results/leaderboard.{json,csv,md,tex}``, the headline numbers DVC shows (``results/metrics.json``,
vgbench/report/headline.py), the published claims checked against them
(``results/claims.{md,tex}``, vgbench/findings.py), ``references.bib`` (what the LaTeX cites), the figures (gradient
profile at the deepest depth, and metric / training loss / gradient ratio
against depth) and the profile's data under ``results/plots/``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vgbench import atomic, findings
from vgbench import wandb_names as names
from vgbench.config import Params
from vgbench.data import DATASETS
from vgbench.models import FAMILIES
from vgbench.probes import theory
from vgbench.references import BIB_PATH, latex_cite
from vgbench.report import NoResultsError, aggregate, figures, formats, provenance, row_key
from vgbench.report.headline import headline
from vgbench.tuning import matrix_cells


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value.item() if hasattr(value, "item") else value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def row_records(rows: pd.DataFrame) -> dict[str, dict]:
    """leaderboard.json's ``rows``: each leaderboard row by "family/data set/remedy/d<depth>"."""
    return {row_key(r["family"], r["dataset"], r["remedy"], r["depth"]): r for r in _records(rows)}


def cell_metrics(table: pd.DataFrame) -> dict[str, dict]:
    """leaderboard.json's ``cell_metrics``: each cell it aggregates, once (a twin row reads its trained cell's
    result), with its test metric and what it trained (row, seed, learning rate), which ``vgbench compare``
    pairs cells by. A leaderboard alone (the README's ``bench/reference/``) is then enough to tell a
    bit-for-bit reproduction from another machine's cell by cell."""
    return {r["cell_id"]: {"row": row_key(r["family"], r["dataset"], r["remedy"], r["depth"]), "seed": r["seed"],
                           "learning_rate": r["learning_rate"], "test_metric": r["test_metric"]}
            for r in _records(table.drop_duplicates("cell_id"))}


def leaderboard_run_id(profile: str, results_root: Path) -> str:
    """The W&B run id of the leaderboard in ``results_root`` (``wandb_names.leaderboard_run_id`` of its
    leaderboard.json): the run the leaderboard stage logs it to, and the one the W&B Report's leaderboard
    panels show."""
    return names.leaderboard_run_id(profile, (results_root / "leaderboard.json").read_bytes())


def _tex(text: str) -> str:
    return formats.tex_escape(text)


def _latex_caption(params: Params, family: str, dataset: str, rows: pd.DataFrame, n_seeds: int) -> str:
    """The caption of one (family, data set)'s LaTeX table: what each number is, over how many seeds (rows
    with fewer are marked: a 2-seed interval is far wider than a 3-seed one), and how the rank is made."""
    fewer = int(formats.short_of_seeds(rows, n_seeds).sum())
    probed = formats.probed_loss_of(dataset)
    gradient_of = f" (of {probed})" if probed else ""
    seeds = f"over {n_seeds} seeds" + (
        f"; {formats.FEWER_SEEDS_MARK}: over fewer, as cells are missing or failed ({fewer} of {len(rows)} "
        f"entries; the cells and n per row are in leaderboard.md)" if fewer else "")
    return (f"{family} on {_tex(dataset)}{latex_cite(DATASETS.get(dataset).cites)}: "
            f"{_tex(formats.metric_title(rows))} "
            f"(mean $\\pm$ std {seeds}, in brackets Student's t 95\\% interval of the mean, clipped to the "
            f"metric's range; learning rate chosen on the validation metric) "
            f"and log10 of the first/last hidden-state gradient norm ratio at initialization{_tex(gradient_of)} "
            f"(in parentheses: the mean-field prediction{latex_cite(theory.CITES)} where it applies); "
            f"rank: tie-aware, by the deepest depth trained by at least half the seeds, then the test metric at "
            f"the deepest depth (remedies whose 95\\% intervals overlap share a range; $^\\sim$: a 90\\% "
            f"or 99\\% interval would change it). vgbench profile {_tex(params.profile)}.")


@dataclass(frozen=True)
class Aggregated:
    """What the leaderboard's outputs are made from: the profile's cells read from results/."""

    cells: list
    table: pd.DataFrame  # one row per done cell
    missing: list[str]
    rows: pd.DataFrame  # one per (family, data set, remedy, depth), in matrix order
    ranked: pd.DataFrame
    profiles: dict[tuple[str, str], pd.DataFrame]  # per layer at init, deepest depth of each block

    @functools.cached_property
    def all_profiles(self) -> pd.DataFrame:
        """``profiles``, every block in one frame (made once: the claims and the leaderboard read it)."""
        return pd.concat(self.profiles.values())

    @functools.cached_property
    def claims(self) -> pd.DataFrame:
        """vgbench/findings.py's claims, checked against ``rows`` and ``all_profiles``."""
        return findings.check_all(self.rows, self.all_profiles)


def aggregate_results(params: Params, results_root: Path) -> Aggregated:
    cells = matrix_cells(params.active, results_root)
    table, missing = aggregate.cell_table(cells, results_root)
    if table.empty:
        raise NoResultsError(f"no cell results under {results_root / 'cells'} for profile {params.profile!r}: "
                           f"run `vgbench train` first")
    fraction = params.active.leaderboard.trainable_fraction_of_shallow
    rows = aggregate.in_matrix_order(aggregate.leaderboard_rows(table, fraction), params.active)
    ranked = aggregate.ranking(aggregate.frontier(rows))
    profiles = {(family, dataset): figures.init_profiles(group[group["depth"] == group["depth"].max()], results_root)
                for (family, dataset), group in table.groupby(["family", "dataset"], sort=False)}
    return Aggregated(cells, table, missing, rows, ranked, profiles)


def build_leaderboard(params: Params, results_root: Path, log_to_wandb: bool = True, params_path: Path | None = None,
                      data_root: Path | None = None) -> list[Path]:
    data = aggregate_results(params, results_root)
    cells, table, missing, rows, ranked, profiles, all_profiles, claims = (
        data.cells, data.table, data.missing, data.rows, data.ranked, data.profiles, data.all_profiles, data.claims)
    left_out = aggregate.not_in_table(missing, results_root)
    n_seeds = len(params.active.seeds)
    written = []
    source = provenance.build(params, results_root, table, params_path, data_root)
    source_line = provenance.one_line(source)

    summary = {
        "profile": params.profile,
        "cells": len(cells), "cells_missing": missing, "cells_left_out": left_out,
        "rows": row_records(rows),
        "frontier": {f"{r['family']}/{r['dataset']}/{r['remedy']}": r for r in _records(ranked)},
        "claims": {r["claim"]: r for r in _records(claims)},
        "cell_metrics": cell_metrics(table),
        "provenance": source,
    }
    head = headline(params.profile, len(cells), len(missing), rows, ranked, claims)
    pairs = list(rows[["family", "dataset"]].drop_duplicates().itertuples(index=False, name=None))

    def part(frame: pd.DataFrame, family: str, dataset: str) -> pd.DataFrame:
        return frame[(frame.family == family) & (frame.dataset == dataset)]

    outputs = {
        "leaderboard.json": summary,
        "metrics.json": head,  # what `dvc metrics show` prints
        # A plain table: its provenance travels as four columns, the same in every row.
        "leaderboard.csv": rows.assign(**provenance.columns(source)).to_csv(index=False),
        "leaderboard.md": "\n".join(
            formats.leaderboard_markdown(part(rows, family, dataset), part(ranked, family, dataset),
                                         f"{family} on {dataset} (profile {params.profile})")
            for family, dataset in pairs) + formats.left_out_markdown(left_out, len(cells))
        + f"\n## Provenance\n\n{source_line} (whole block: leaderboard.json; one page: CARD.md).\n",
        "claims.md": formats.claims_markdown(claims, params.profile) + f"\nProvenance: {source_line}.\n",
        "claims.tex": f"% {source_line}\n" + formats.claims_latex(claims, params.profile),
        "CARD.md": provenance.card(source, params, claims),
        "references.bib": f"% {source_line}\n" + BIB_PATH.read_text(),  # what leaderboard.tex and claims.tex cite
        "leaderboard.tex": f"% {source_line}\n" + "\n".join(
            formats.leaderboard_latex(
                block, caption=_latex_caption(params, family, dataset, block, n_seeds),
                label=f"tab:vgbench-{family}-{dataset}".replace("_", "-"), ranked=part(ranked, family, dataset),
                seeds=n_seeds)
            for family, dataset in pairs for block in [part(rows, family, dataset)]),
    }
    # Everything is written to a staging folder first and moved into place only when all of it was made
    # (a damaged probe file or a plotting error leaves the previous tables, figures and plots whole).
    with atomic.staged(results_root, whole_folders=("figures",)) as out:
        for name, content in outputs.items():
            if isinstance(content, dict):
                atomic.write_json(out / name, content)
            else:
                atomic.write_text(out / name, content)
            written.append(results_root / name)

        # Gradient profile at the deepest depth of each (family, data set): one line per remedy. The
        # folder is replaced as a whole, so figures of another profile never linger in it.
        (out / "figures").mkdir()
        for (family, dataset), profile in profiles.items():
            depth = int(profile["depth"].max())
            name = f"grad_profile_{family}_{dataset}_d{depth}.png"
            figures.plot_grad_profile(profile, out / "figures" / name,
                                      f"{family} on {dataset}, depth {depth}, at initialization",
                                      FAMILIES.get(family).probed_state, source_line, formats.probed_loss_of(dataset))
            written.append(results_root / "figures" / name)
        # Test metric, training loss and gradient ratio against depth (where there are two depths or more).
        for family, dataset in pairs:
            part_rows = part(rows, family, dataset)
            if part_rows["depth"].nunique() < 2:
                continue
            name = f"depth_{family}_{dataset}.png"
            figures.plot_against_depth(part_rows, out / "figures" / name,
                                       f"{family} on {dataset} (profile {params.profile})",
                                       FAMILIES.get(family).depth_meaning, source_line)
            written.append(results_root / "figures" / name)
        figures.write_profile_csv(all_profiles, out / "plots" / "grad_profile.csv")
        written.append(results_root / "plots" / "grad_profile.csv")

    if log_to_wandb and params.wandb.mode != "disabled":
        from vgbench.report.wandb_tables import log_leaderboard

        log_leaderboard(params, leaderboard_run_id(params.profile, results_root), rows, ranked, claims, head,
                        [p for p in written if p.suffix == ".png"])
    return written
