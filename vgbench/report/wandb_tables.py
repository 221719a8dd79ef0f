"""Log the leaderboard to W&B as tables, in a run of its own (job_type "leaderboard")."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vgbench.config import Params


def _table(frame: pd.DataFrame):
    import wandb

    return wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))


def log_leaderboard(params: Params, rows: pd.DataFrame, ranked: pd.DataFrame, claims: pd.DataFrame,
                    figures: list[Path]) -> str:
    """Returns the run's local directory."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project=params.wandb.project, entity=params.wandb.entity, mode=params.wandb.mode,
                     name=f"leaderboard-{params.profile}", job_type="leaderboard",
                     config={"profile": params.profile, **params.active.model_dump()},
                     settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    run.log({"leaderboard": _table(rows), "ranking": _table(ranked), "claims": _table(claims),
             **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    directory = run.dir
    run.finish()
    return directory
