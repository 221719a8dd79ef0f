"""Log the leaderboard to W&B as tables, in a run of its own (job_type "leaderboard")."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vgbench import wandb_names as names
from vgbench.config import Params


def _table(frame: pd.DataFrame):
    import wandb

    return wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))


def log_leaderboard(params: Params, run_id: str, rows: pd.DataFrame, ranked: pd.DataFrame, claims: pd.DataFrame,
                    headline: dict, figures: list[Path]) -> None:
    """One run holding the leaderboard, ranking and claims tables and the figures (offline by default:
    ``wandb sync`` uploads it later), with the headline numbers (results/metrics.json) in its summary, so
    that W&B's runs table compares leaderboard runs as ``dvc metrics diff`` compares commits. ``run_id``
    (``wandb_names.leaderboard_run_id``) names the leaderboard it logs: the same leaderboard logged twice
    is one run."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project=params.wandb.project, entity=params.wandb.entity, mode=params.wandb.mode,
                     id=run_id, resume="allow", name=names.leaderboard_run_name(params.profile),
                     job_type=names.LEADERBOARD_JOB,
                     config={"profile": params.profile, **params.active.model_dump()},
                     settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    run.log({names.LEADERBOARD: _table(rows), names.RANKING: _table(ranked), names.CLAIMS: _table(claims),
             **{f"{names.FIGURES}{p.stem}": wandb.Image(str(p)) for p in figures}})
    run.summary[names.HEADLINE] = headline
    run.finish()
