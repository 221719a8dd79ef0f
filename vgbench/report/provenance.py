"""Where a table came from: the provenance block every leaderboard output carries, and the results card.

A table someone cites must say which code, parameters, data and machines produced it. The block is
built once per leaderboard build, from files only (git, params.yaml, dvc.lock, the data manifests,
the cells' metrics.json), and written into ``leaderboard.json`` (whole), the Markdown, LaTeX and
BibTeX files (one line), the CSV (four columns), the figures (their PNG Description) and
``results/CARD.md`` (one page: what was run, on what, how to reproduce).
An item that cannot be read (no git checkout, no dvc.lock yet) is recorded as null with the reason,
never guessed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd

from vgbench.cell_result import CellResult
from vgbench.config import Params
from vgbench.data.store import sha256


def _sha256(path: Path) -> str | None:
    return sha256(path) if path.is_file() else None


def _git(repo: Path) -> dict:
    """The commit and whether the working tree differs from it (tracked files only, and not dvc.lock: DVC
    rewrites it stage by stage during the very `dvc repro` that builds the leaderboard; its hash is recorded
    apart)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    try:
        head = git("rev-parse", "HEAD")
    except OSError as error:  # no git on this machine (a compute node, a container)
        return {"commit": None, "dirty": None, "why": f"git could not run ({error.strerror or error})"}
    if head.returncode != 0:  # git's first line only: the tables carry it in one comment line
        why = (head.stderr.strip().splitlines() or ["not a git checkout"])[0]
        return {"commit": None, "dirty": None, "why": why[:200]}
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
               if line[3:] != "dvc.lock"]
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed": changed[:20]}


def _locked_cells(lock: Path) -> str | None:
    """The md5 dvc.lock's train stage records for results/cells: the very line a reader finds in the
    committed dvc.lock. (A hash of the whole file matched none: the leaderboard is built while ``dvc repro``
    has written the train stage's entry but not yet its own.) None without a lock or such an entry."""
    import yaml

    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        return next(out["md5"] for out in stages["train"]["outs"] if out["path"] == "results/cells")
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return None


def _manifests(table: pd.DataFrame, data_root: Path | None) -> dict:
    """sha256 of each stored data set's manifest (which itself holds every file's sha256)."""
    if data_root is None:
        return {"why": "no data root given"}
    return {str(path.parent.relative_to(data_root)): _sha256(path)
            for path in sorted(data_root.rglob("manifest.json"))
            if path.parent.relative_to(data_root).parts[0] in set(table["dataset"])}


def _environments(cell_results: list[CellResult]) -> list[dict]:
    """The distinct environments the cells ran in (one per machine and software stack)."""
    seen: dict[str, dict] = {}
    for result in cell_results:
        keep = {key: result.environment.get(key) for key in ("python", "platform", "torch", "lightning", "cuda",
                                                             "cudnn", "gpu", "cpu", "cpu_id", "cpu_capability",
                                                             "onednn_isa", "onednn_max_cpu_isa", "torch_threads",
                                                             "code_fingerprint")}
        seen.setdefault(repr(sorted(keep.items())), keep)
    return list(seen.values())


def build(params: Params, results_root: Path, table: pd.DataFrame, params_path: Path | None = None,
          data_root: Path | None = None) -> dict:
    """The provenance block of a leaderboard built from ``table`` (aggregate.cell_table's done cells). The
    git checkout and dvc.lock are the params file's project's (params.yaml, dvc.yaml and dvc.lock sit at its
    root), not the working directory's: a leaderboard built from elsewhere named no commit, or another one.
    The path is made absolute without following links: a params.yaml linked in from a shared folder still
    belongs to the checkout it sits in. With no params file, the working directory is taken for the project."""
    from vgbench import results

    repo = Path(os.path.abspath(params_path)).parent if params_path is not None else Path(".")
    cell_ids = sorted(set(table["cell_id"]))
    cell_results = [results.read_result(results_root, cell_id) for cell_id in cell_ids]  # each read once
    wandb_runs = [result.wandb["run_id"] for result in cell_results if result.wandb]
    lock = repo / "dvc.lock"
    return {
        "profile": params.profile,
        "git": _git(repo),
        "params_sha256": _sha256(params_path) if params_path is not None else None,
        "dvc_lock_cells_md5": _locked_cells(lock),
        "data_manifests_sha256": _manifests(table, data_root),
        "environments": _environments(cell_results),
        "cells": len(cell_ids),
        "device_seconds": round(float(table.drop_duplicates("cell_id")["wall_seconds"].sum()), 1),
        "device_seconds_by_family": _seconds_by_family(table),
        "wandb": {"project": params.wandb.project, "entity": params.wandb.entity, "mode": params.wandb.mode,
                  "cell_runs": len(wandb_runs), "cell_run_ids": wandb_runs},
    }


def _seconds_by_family(table: pd.DataFrame) -> dict[str, float]:
    """Device seconds per family, each cell once, under the family it trained as (its id's first word): a DBN
    twin is an MLP cell (twins.py), in both families' tables, but it ran once."""
    cells = table.drop_duplicates("cell_id")
    trained_as = cells["cell_id"].str.split("-").str[0]
    return {family: round(float(part["wall_seconds"].sum()), 1)
            for family, part in cells.groupby(trained_as, sort=False)}


def columns(block: dict) -> dict:
    """The block's key items as CSV columns (a CSV has no place for a header block)."""
    return {"provenance_commit": block["git"]["commit"] or "", "provenance_dirty": block["git"]["dirty"],
            "provenance_params_sha256": block["params_sha256"] or "",
            "provenance_dvc_lock_cells_md5": block["dvc_lock_cells_md5"] or ""}


def one_line(block: dict) -> str:
    """The short form the tables carry: commit, dirty flag, params and dvc.lock hashes, cells, device time."""
    git = block["git"]
    commit = (f"{git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git["commit"]
              else f"no commit ({git['why']})")
    short = {key: (block[key] or "none")[:12] for key in ("params_sha256", "dvc_lock_cells_md5")}
    return (f"vgbench profile {block['profile']}, commit {commit}, params.yaml sha256 {short['params_sha256']}, "
            f"dvc.lock results/cells md5 {short['dvc_lock_cells_md5']}, {block['cells']} cells, "
            f"{block['device_seconds'] / 3600:.2f} device-hours")


def card(block: dict, params: Params, claims: pd.DataFrame) -> str:
    """results/CARD.md: what was run, on what, and how to reproduce it, on one page."""
    profile = params.active
    git = block["git"]
    environments = "\n".join(
        f"- {env['platform']}; CPU {env.get('cpu') or 'unrecorded'} ({env.get('cpu_id') or 'id unrecorded'}; "
        f"torch kernels {env.get('cpu_capability') or 'unrecorded'}, oneDNN's {env.get('onednn_isa') or 'unrecorded'} "
        f"({'capped at ' + env['onednn_max_cpu_isa'] if env.get('onednn_max_cpu_isa') else 'uncapped'})); "
        f"GPU {env.get('gpu') or 'none'}; Python "
        f"{env['python']}, torch {env['torch']}, Lightning {env['lightning']}, CUDA {env['cuda'] or 'none'}; "
        f"{env['torch_threads']} torch thread(s); code fingerprint {env['code_fingerprint']}"
        for env in block["environments"])
    blocks = "\n".join(f"- {b.family} on {b.dataset}: remedies {', '.join(b.remedies)}; depths "
                       f"{', '.join(map(str, b.depths))}" for b in profile.matrix)
    kernels = (f"the profile pins the CPU kernels (`trainer.cpu_capability: {profile.trainer.cpu_capability}`), so "
               f"AMD CPUs of other generations give the same numbers (README, \"Five machines\"; Intel untested)."
               if profile.trainer.cpu_capability else
               "the profile leaves the CPU kernels to each CPU (`trainer.cpu_capability: null`), so another CPU's "
               "may round differently.")
    tally = claims["verdict"].value_counts()
    checkout = (f"git checkout {git['commit']}" if git["commit"] else "(no git commit recorded)") + (
        "   # the tree was dirty: these results include uncommitted changes" if git["dirty"] else "")
    manifests = "\n".join(f"- `{name}`: {digest}" for name, digest in block["data_manifests_sha256"].items())
    return f"""# Results card: vgbench profile `{block['profile']}`

{profile.description}

## What was run

{block['cells']} trained cells (a cell: one network, one seed, one learning rate): seeds
{list(profile.seeds)}, learning rates chosen on validation from each block's grid; every row reports
mean, std, n and a Student's t 95% interval over its seeds (clipped to the metric's range).

{blocks}

Device time, summed over the cells: {block['device_seconds']:.0f} s ({block['device_seconds'] / 3600:.2f} h).
Published claims checked against these tables (results/claims.md): {', '.join(f"{n} {v}" for v, n in tally.items())}.

## On what

{environments}

## How to reproduce

```bash
{checkout}
pip install -e .
dvc repro            # params.yaml sha256 {block['params_sha256']}
```

`dvc.lock`'s md5 of `results/cells` (its train stage) at build time: {block['dvc_lock_cells_md5']}. Data manifests
(each lists its files' sha256):

{manifests}

Bit for bit: the same numbers on the same hardware and software (torch, CPU model and family or GPU model, the
vector kernels torch's CPU operations run, thread count); {kernels}
On another machine otherwise: within the reported intervals (float rounding moves some cells; README,
"Pipeline", measured how many); `vgbench compare` places another machine's run against this one.

W&B: project `{block['wandb']['project']}`, mode `{block['wandb']['mode']}`, {block['wandb']['cell_runs']} cell runs
(ids in leaderboard.json's provenance); offline runs upload with `wandb sync wandb/offline-run-*`.

Cite vgbench with `CITATION.cff`, and the remedies' and data sets' sources with `results/references.bib`
(the keys `leaderboard.tex` and `claims.tex` cite).
"""
