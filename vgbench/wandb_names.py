"""Every name vgbench gives things in W&B, defined once for the loggers and the readers.

The cell runs (training/wandb_run.py, training/module.py, probes/gradient_flow.py), the leaderboard
run (report/wandb_tables.py), the report builder and the tests all spell W&B names through this
module, so a rename cannot leave one of them behind:

- a cell's **run id** is derived from its cell id, the training code and the machine, so a restarted or
  rerun cell resumes the same run instead of making a second one of the same name, and another
  machine's or another code's training of it is another run;
- runs are **grouped** ``<profile>/<family>`` and **tagged** with their remedy, data set, depth, profile
  and machine tag, so a run set can be filtered to one profile and family, or one machine;
- the **leaderboard run's id** is derived from the leaderboard it logs, so a report names exactly that run;
- **job types** tell cell runs from the leaderboard run;
- **metric and table keys**: what the runs log, as the report's panels and the tests read them.
"""

from __future__ import annotations

import hashlib
import json
import re

RUN_ID_LIMIT = 64  # W&B's limit on a run id

# Job types.
CELL_JOB = "train"
LEADERBOARD_JOB = "leaderboard"

# The x axis of every cell metric (one optimizer step of the cell's group).
STEP = "trainer/global_step"

# Cell metrics, logged per epoch (loss and validation) or at the end (test) or per probe.
TRAIN_LOSS = "train/loss"
PROBE_LOG10_RATIO = "probe/dL_dh_log10_first_last"
PROBE_TOTAL_NORM = "probe/grad_total_norm"

# Tables: a cell run's, then the leaderboard run's; figures are logged as images under FIGURES.
GRAD_PROFILE_INIT = "grad_profile_init"  # one row per probed state: PROFILE_INDEX, then PROFILE_COLUMNS
PROFILE_INDEX = "layer"  # 1 = the first probed state from the input, as in the figures and dvc plots
PROFILE_COLUMNS = ("dL_dh_norm", "weight_grad_norm", "activation_variance", "saturated_fraction", "dead_fraction",
                   "gate_mean")
PRETRAINING = "pretraining"
LEADERBOARD = "leaderboard"
RANKING = "ranking"
CLAIMS = "claims"
FIGURES = "figures/"
HEADLINE = "headline"  # the leaderboard run's summary: results/metrics.json (vgbench/report/headline.py)


def machine_tag(environment: dict) -> str:
    """4 hex characters naming the hardware and software a cell's numbers are bit for bit on (CPU, its
    kernels, GPU, torch; results.environment): the same cell trained on two machines is two W&B runs."""
    keys = ("cpu_id", "cpu_capability", "onednn_max_cpu_isa", "gpu", "torch")
    text = json.dumps({key: environment.get(key) for key in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:4]


def _allowed_in_ids(text: str) -> str:
    """``text`` with the characters W&B does not allow in run ids (the dots of ``lr0.1``) as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def cell_run_id(cell_id: str, code_fingerprint: str, machine: str) -> str:
    """The cell id with characters W&B does not allow in ids (the dots of ``lr0.1``) as ``_``, then the first 6
    characters of the training code's fingerprint and the ``machine_tag``. A cell retrained after a code
    change (its result stale) is another W&B run, where with the cell id alone ``wandb sync`` would append
    it to the old one; so is the same cell trained on another machine (a second machine's check of a
    table, README "Checking a verdict on a second machine"), where both machines' offline runs synced to
    one project would otherwise be merged into one. A resumed training (same code, same machine) keeps
    its run.

    The config hash at the end of a cell id is kept whole when the id must be shortened.
    """
    safe = _allowed_in_ids(cell_id)
    tag = f"-{code_fingerprint[:6]}-{machine}"
    if len(safe) + len(tag) <= RUN_ID_LIMIT:
        return safe + tag
    prefix, _, config_hash = safe.rpartition("-")
    return f"{prefix[:RUN_ID_LIMIT - len(config_hash) - len(tag) - 1]}-{config_hash}{tag}"


def group(profile: str, family: str) -> str:
    return f"{profile}/{family}"


def cell_tags(profile: str, remedy: str, dataset: str, depth: int, machine: str) -> list[str]:
    return [f"profile:{profile}", f"remedy:{remedy}", f"dataset:{dataset}", f"depth:{depth}", f"machine:{machine}"]


def leaderboard_run_name(profile: str) -> str:
    return f"leaderboard-{profile}"


def leaderboard_run_id(profile: str, leaderboard_json: bytes) -> str:
    """The leaderboard run's id: its name and 8 hex characters of ``leaderboard.json`` (rows, ranks, claims and
    provenance: commit, params, dvc.lock, machines). The report stage rerun on the same results logs into
    the same run instead of adding one, and the W&B Report filters its leaderboard panels to exactly the
    leaderboard it was written with, not every machine's and commit's run of that name."""
    return f"{_allowed_in_ids(leaderboard_run_name(profile))}-{hashlib.sha256(leaderboard_json).hexdigest()[:8]}"


def val_metric(metric: str) -> str:
    """``val/accuracy``, ``val/loss``, ...: logged after each epoch's validation pass."""
    return f"val/{metric}"


def test_metric(metric: str) -> str:
    return f"test/{metric}"


def probe_layer(index: int) -> str:
    """||dL/dh|| of probed state ``index`` (0 = input side) at a probe step."""
    return f"probe/dL_dh_norm/layer_{index:03d}"
