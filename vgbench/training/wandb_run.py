"""One W&B run per cell, offline by default (no account, no network).

Runs land in ``wandb/offline-run-*`` and can be uploaded later with
``wandb sync wandb/offline-run-*``. Each run is grouped ``<profile>/<family>``, named by
cell id, has an id derived from it (a restarted cell resumes its run) and
carries the full resolved cell config; at the end its summary gets
the cell's metrics and a ``grad_profile_init`` table (one row per layer), and
for cells that pretrain a ``pretraining`` table (per RBM layer and epoch:
reconstruction error on train and validation, free-energy gap).

A cell group trains K cells in one process at once, so its K runs are open
together: ``wandb.init(reinit="create_new")``, one ``Run`` per cell, logged to
by the training module per model. Lightning's ``WandbLogger`` binds to the one
global run (a second logger would attach to the first cell's run), so the
cells' runs are opened here and the Trainer gets no logger.
"""

from __future__ import annotations

import os

from vgbench.config import ConfigError, WandbSettings
from vgbench.matrix import CellSpec
from vgbench.pretraining.stack import EPOCH_MONITORS
from vgbench.results import code_fingerprint, environment
from vgbench import wandb_names as names


def check_online_login(settings: WandbSettings) -> None:
    """Before any work in ``mode: online``: an API key is configured (``wandb login`` or WANDB_API_KEY),
    found now rather than as one failed cell after another. Checks the key's presence, not the network."""
    if settings.mode != "online":
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    try:
        wandb.login(verify=False, relogin=False)
    except wandb.errors.UsageError as error:
        raise ConfigError(f"wandb.mode is 'online' but W&B says: {error} Log in with `wandb login` (or set "
                          f"WANDB_API_KEY), or set wandb.mode: offline in params.yaml and upload later with "
                          f"`wandb sync wandb/offline-run-*`") from None


def start_run(cell: CellSpec, settings: WandbSettings, group: dict, profile: str | None):
    """The cell's W&B run (a ``wandb.Run``), grouped ``<profile>/<family>``; None when W&B is disabled."""
    if settings.mode == "disabled":
        return None
    if profile is None:
        raise ValueError(f"cell {cell.cell_id}: a W&B run is grouped by profile; run_group needs profile=")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    machine = names.machine_tag(environment())

    run = wandb.init(
        # `dir` beats WANDB_DIR; hand WANDB_DIR on so cell runs land where the leaderboard run does.
        dir=os.environ.get("WANDB_DIR") or ".",
        project=settings.project, entity=settings.entity, mode=settings.mode,
        name=cell.cell_id, id=names.cell_run_id(cell.cell_id, code_fingerprint(), machine), resume="allow",
        group=names.group(profile, cell.family), job_type=names.CELL_JOB,
        tags=names.cell_tags(profile, cell.remedy, cell.dataset, cell.depth, machine),
        config={**cell.as_dict(), "cell_id": cell.cell_id, "cell_group": group},
        reinit="create_new",
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, silent=True),
    )
    run.define_metric(names.STEP)
    run.define_metric("*", step_metric=names.STEP, step_sync=True)
    return run


def profile_table(record: dict):
    """A wandb.Table with one row per probed state (layer, time step, block) of a probe record, numbered
    from 1 at the input side as the figures and ``dvc plots`` number them.

    A column whose list is not one value per state stays empty: an RNN's two
    weight matrices are shared by all time steps (their norms are in grad_profile.json).
    """
    import wandb

    states = len(record["dL_dh_norm"])
    rows = []
    for layer in range(states):
        row = [layer + 1]
        for column in names.PROFILE_COLUMNS:
            values = record.get(column)
            row.append(values[layer] if values and len(values) == states else None)
        rows.append(row)
    return wandb.Table(columns=[names.PROFILE_INDEX, *names.PROFILE_COLUMNS], data=rows)


def pretraining_table(pretraining: dict):
    """A wandb.Table with one row per (RBM layer, pretraining epoch); epoch 0 is before training."""
    import wandb

    rows = [[layer["layer"], row["epoch"], *(row[column] for column in EPOCH_MONITORS)]
            for layer in pretraining["stats"]["layers"] for row in layer["epochs"]]
    return wandb.Table(columns=["layer", "epoch", *EPOCH_MONITORS], data=rows)


def finish_run(run, metrics: dict, init_record: dict, pretraining: dict | None = None) -> None:
    scalars = {key: value for key, value in metrics.items()
               if isinstance(value, (int, float, str, bool)) or value is None}
    # As metrics.json has them, NaN and -inf included (a gradient ratio of exactly 0 is -inf there):
    # W&B stores non-finite numbers, and its summary copies the last history row's anyway.
    run.summary.update(scalars)
    tables = {names.GRAD_PROFILE_INIT: profile_table(init_record)}
    if pretraining is not None:
        tables[names.PRETRAINING] = pretraining_table(pretraining)
    run.log(tables)
    run.finish()
