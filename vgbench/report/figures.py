"""Figures from stored gradient profiles (never from a live model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vgbench import atomic, results  # noqa: E402


PROFILE_KEYS = ["family", "dataset", "depth", "remedy", "layer"]


def init_profiles(cells: pd.DataFrame, results_root: Path) -> pd.DataFrame:
    """Per layer at initialization, over the cells given: ||dL/dh_l|| averaged in log10, and the
    activation variance averaged. A seed whose probe read NaN makes its layer's average NaN: skipping it
    would let the other seeds speak for a cell that overflowed (the SELU claim would hold on them)."""
    rows = []
    for _, cell in cells.iterrows():
        path = results.cell_dir(results_root, cell["cell_id"]) / "grad_profile.json"
        init = json.loads(path.read_text())["records"][0]
        for layer, (norm, variance) in enumerate(zip(init["dL_dh_norm"], init["activation_variance"])):
            rows.append({"remedy": cell["remedy"], "family": cell["family"], "dataset": cell["dataset"],
                         "depth": cell["depth"], "layer": layer + 1,
                         "log10_dL_dh_norm": math.log10(norm) if norm > 0 else float("-inf"),
                         "activation_variance": variance})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.groupby(PROFILE_KEYS, as_index=False, sort=False)[["log10_dL_dh_norm", "activation_variance"]].mean(
        skipna=False)


def plot_grad_profile(profile: pd.DataFrame, path: Path, title: str, probed_state: str = "hidden layer",
                      provenance: str = "", probed_loss: str | None = None) -> None:
    """log ||dL/dh_l|| against layer (or time step) l, one line per remedy (input side on the left); L is the
    training loss, or ``probed_loss`` where the probes follow another (copy memory's recall)."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = ["-", "--", ":", "-."]  # remedies with the same init overlap exactly; keep both visible
    for index, (remedy, group) in enumerate(profile.groupby("remedy", sort=False)):
        finite = group[group["log10_dL_dh_norm"] > float("-inf")]
        axes.plot(finite["layer"], 10.0 ** finite["log10_dL_dh_norm"], marker="o", markersize=3,
                  linestyle=styles[index % len(styles)], label=remedy)
    axes.set_yscale("log")
    axes.set_xlabel(f"{probed_state} l (1 = first from the input)")
    axes.set_ylabel(r"$\|\partial L / \partial h_l\|$ at initialization")
    if probed_loss:
        axes.text(0.01, 0.01, f"L: {probed_loss}", transform=axes.transAxes, fontsize=7, alpha=0.8)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    _save(figure, path, provenance)


def plot_against_depth(rows: pd.DataFrame, path: Path, title: str, depth_meaning: str, provenance: str = "") -> None:
    """Three panels against depth, one line per remedy: test metric (mean ± std over seeds), final
    training loss, and log10 ||dL/dh_first|| / ||dL/dh_last|| at initialization.

    He et al. 2016 tell degradation (training loss rises with depth while gradients stay healthy)
    from vanishing (the ratio collapses); side by side, the panels show which one a remedy fixes.
    """
    metric = rows["metric"].iloc[0]
    panels = [("test_metric_mean", f"test {metric}"), ("final_train_loss_mean", "final training loss"),
              ("init_log10_dL_dh_first_last", "log10 dL/dh first/last at init")]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for index, (remedy, group) in enumerate(rows.groupby("remedy", sort=False)):
        group = group.sort_values("depth")
        style = dict(marker="o", markersize=4, linestyle=["-", "--", ":", "-."][index % 4], label=remedy)
        axes[0].errorbar(group["depth"], group["test_metric_mean"], yerr=group["test_metric_std"].fillna(0.0),
                         capsize=3, **style)
        for axis, (column, _) in zip(axes[1:], panels[1:]):
            # Left out: -inf (a ratio that underflowed) and +inf (a loss row with a diverged seed; the table
            # says which)
            values = group[column].where(group[column].abs() < float("inf"))
            axis.plot(group["depth"], values, **style)
    axes[0].axhline(rows["baseline_metric"].iloc[0], color="grey", linewidth=0.8, linestyle=":",
                    label="chance" if rows["higher_is_better"].iloc[0] else "baseline")
    axes[1].set_yscale("log")
    for axis, (_, label) in zip(axes, panels):
        axis.set_xlabel(f"depth ({depth_meaning})")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path, provenance)


def _save(figure, path: Path, provenance: str = "") -> None:
    """A PNG written whole; ``provenance`` (report/provenance.py's one line) goes into its Description text chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, metadata={"Description": provenance} if provenance else None)
    plt.close(figure)
    tmp.replace(path)


def write_profile_csv(profile: pd.DataFrame, path: Path) -> None:
    """The figure's data for `dvc plots show` (x=layer, y=log10 norm, one series per remedy)."""
    atomic.write_text(path, profile[[*PROFILE_KEYS, "log10_dL_dh_norm"]].to_csv(index=False))
