"""Leaderboard formatters: pure functions from DataFrames to strings.

Tested against golden files in tests/golden/ (see tests/test_report.py for
the command that regenerates them).
"""

from __future__ import annotations

import math

import pandas as pd

from vgbench.findings import VERDICTS
from vgbench.references import latex_cite
from vgbench.remedies import REMEDIES


def _num(value: float, digits: int = 2) -> str:
    """``digits`` decimals; a metric (3 digits) too small for them in two significant ones ("4.1e-04"), so an
    MSE of 0.0004 ± 0.00005 does not print as 0.000 ± 0.000; never a negative zero ("-0.0" of -0.04)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "-inf" if value < 0 else "inf"
    text = f"{value:.{digits}f}"
    if float(text) == 0:
        return f"{value:.1e}" if digits >= 3 and value != 0 else text.lstrip("-")
    return text


def _pm(mean: float, std: float) -> str:
    return f"{_num(mean, 3)} ± {_num(std, 3)}"


def _interval(low: float, high: float) -> str:
    """'[0.412, 0.478]'; '–' where the interval is undefined (one seed, or a diverged loss)."""
    return "–" if math.isnan(low) or math.isnan(high) else f"[{_num(low, 3)}, {_num(high, 3)}]"


# A rate chosen at an edge of its grid is marked: a wider grid might have done better there.
EDGE_MARKS = {"upper": " ↑", "lower": " ↓", "only": " ·", "": ""}
EDGE_LEGEND = ("lr: the rate chosen on validation; ↑/↓ it is the largest/smallest of its grid "
               "(a wider grid might do better), · the grid has one rate. CI: Student's t 95% interval of the "
               "mean over the n seeds, clipped to the metric's range. Mean-field prediction: what "
               "signal-propagation theory gives for the same weights and batch (– where it does not apply: "
               "normalization, skips, gates, convolutions, pretrained weights). Rank: remedies whose intervals "
               "overlap share a range; ~ marks a range that a 90% or 99% interval would change (intervals that "
               "nearly touch: another CPU may move its edges).")


def probed_loss_of(dataset: str) -> str | None:
    """What the gradient-flow probes follow back on this data set's task where that is not its training loss
    (copy memory: the recall's loss; ``Task.probed_steps``), else None: the tables and figures then say so."""
    from vgbench.data import DATASETS
    from vgbench.tasks import TASKS

    task = TASKS.get(DATASETS.get(dataset).task)
    return task.probed_loss if task.probed_steps is not None else None


# How each task metric is named in table headers (Markdown, LaTeX).
METRIC_NAMES = {"accuracy": ("acc", "acc."), "mse": ("MSE", "MSE"), "cross_entropy": ("CE", "CE")}


def metric_title(rows: pd.DataFrame) -> str:
    """'accuracy, higher is better, chance 0.100' for a table's caption line."""
    row = rows.iloc[0]
    direction = "higher" if row["higher_is_better"] else "lower"
    baseline = "chance" if row["higher_is_better"] else "baseline"
    return f"test {row['metric']}, {direction} is better; {baseline} {_num(row['baseline_metric'], 3)}"


LEADERBOARD_COLUMNS = [
    ("remedy", "remedy"), ("depth", "depth"),
    ("learning_rate", "lr"), ("test", "test {metric} (mean ± std)"), ("ci", "95% CI"), ("n", "n"),
    ("trainable_rate", "trainable"), ("converged_rate", "converged"),
    ("init_log10_dL_dh_first_last", "log10 dL/dh first/last @init"),
    ("theory_log10_dL_dh_first_last", "mean-field prediction"),
    ("final_train_loss_mean", "final train loss"),
    ("epochs_to_target", "epochs to target"), ("failures", "failures"), ("wall_seconds_mean", "s/cell"),
]


def _cells(row: pd.Series) -> list[str]:
    out = []
    for key, _ in LEADERBOARD_COLUMNS:
        if key == "test":
            out.append(_pm(row["test_metric_mean"], row["test_metric_std"]))
        elif key == "ci":
            out.append(_interval(row["test_metric_ci_low"], row["test_metric_ci_high"]))
        elif key == "learning_rate":
            out.append(f"{row[key]:g}{EDGE_MARKS[row.get('lr_grid_edge', '')]}")
        elif key in ("depth", "n"):
            out.append(str(int(row[key])))
        elif key in ("trainable_rate", "converged_rate"):
            out.append(f"{row[key]:.0%}")
        elif key == "epochs_to_target":
            out.append(_num(row[key], 1))
        elif key == "wall_seconds_mean":
            out.append(_num(row[key], 1))
        elif key in ("init_log10_dL_dh_first_last", "theory_log10_dL_dh_first_last"):
            out.append(_num(row[key], 1))
        elif key == "final_train_loss_mean":
            out.append(_num(row[key], 3))
        else:
            out.append(str(row[key]) if str(row[key]) else "–")
    return out


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _probed_loss_legend(dataset: str) -> str:
    probed = probed_loss_of(dataset)
    return f" dL/dh: the gradient of {probed} (the training loss scores every step)." if probed else ""


def leaderboard_markdown(rows: pd.DataFrame, ranked: pd.DataFrame, title: str) -> str:
    """One (family, data set): its rows by remedy and depth, then its remedies ranked."""
    metric = METRIC_NAMES.get(rows.iloc[0]["metric"], (rows.iloc[0]["metric"],))[0]
    body = [_cells(row) for _, row in rows.iterrows()]
    rank_body = [[r["rank_range"] + (" ~" if r.get("rank_level_sensitive") else ""), r["remedy"],
                  str(int(r["deepest_trainable_depth"])),
                  _pm(r["test_metric_at_deepest"], r["test_metric_std_at_deepest"]),
                  _interval(r["test_metric_ci_low_at_deepest"], r["test_metric_ci_high_at_deepest"])]
                 for _, r in ranked.iterrows()]
    return "\n\n".join([
        f"## {title}",
        metric_title(rows).capitalize() + ". " + EDGE_LEGEND + _probed_loss_legend(rows.iloc[0]["dataset"]),
        _markdown_table([label.format(metric=metric) for _, label in LEADERBOARD_COLUMNS], body),
        f"### Remedies ranked (trainability frontier, then test {metric} at the deepest depth)",
        _markdown_table(["rank", "remedy", "deepest trainable depth", f"test {metric} at deepest depth",
                         "95% CI"], rank_body),
    ]) + "\n"


def left_out_markdown(left_out: dict[str, list[str]], total: int) -> str:
    """A closing section naming every cell the tables leave out, so no mean silently has fewer seeds."""
    if not any(left_out.values()):
        return ""
    lines = [f"\n## Cells not in these tables ({sum(map(len, left_out.values()))} of {total})\n"]
    for why, entries in left_out.items():
        if entries:
            lines.append(f"{why.capitalize()} ({len(entries)}):\n")
            lines += [f"- {entry}" for entry in entries]
            lines.append("")
    return "\n".join(lines)


# Every character LaTeX reads as a command in running text, in one pass (so the braces of
# \textbackslash{} are not escaped again).
_TEX_SPECIALS = str.maketrans({"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "&": r"\&",
                               "%": r"\%", "#": r"\#", "$": r"\$", "~": r"\textasciitilde{}",
                               "^": r"\textasciicircum{}"})


def tex_escape(text: str) -> str:
    return text.translate(_TEX_SPECIALS)


def _tex_number(value: float, digits: int) -> str:
    """A number for math mode: infinities as \\infty, NaN as a text dash (the Unicode one is text-only)."""
    text = _num(value, digits)
    if "e" in text and text not in ("inf", "-inf"):  # 4.1e-04: 4.1 x 10^-4
        mantissa, exponent = text.split("e")
        return rf"{mantissa} \times 10^{{{int(exponent)}}}"
    return {"–": r"\mbox{--}", "-inf": r"-\infty", "inf": r"\infty"}.get(text, text)


def _tex_math(value: float, digits: int) -> str:
    """A number in math mode; NaN as '--' outside it."""
    return "--" if _num(value, digits) == "–" else f"${_tex_number(value, digits)}$"


def _tex_over(main: str, under: str, align: str = "r") -> str:
    """``main`` with ``under`` small beneath it, top-aligned with the row: a one-column tabular (no package
    needed), so a cell is as wide as the wider of the two, not as both side by side."""
    return rf"\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}{main}\\{{\scriptsize {under}}}\end{{tabular}}"


def _decimals_for(std: float) -> int:
    """3, or as many decimals as the spread's first significant digit needs (4 to 6): 0.1690 +- 0.0004 and
    0.00041 +- 0.00005 where 3 decimals would print 0.000 and powers of ten would widen the column by a
    third (the default profile's RNN table was 70 pt wider than a plain article's text width)."""
    if not math.isfinite(std) or std <= 0:
        return 3
    needed = -math.floor(math.log10(std))
    return 3 if needed > 6 else max(3, needed)  # below a millionth: powers of ten throughout, as in Markdown


def _tex_mean_and_interval(mean: float, std: float, low: float, high: float, mark: str = "") -> str:
    """mean +- std (then ``mark``), the 95% interval under it, all to the spread's decimals; no interval
    where it is undefined."""
    digits = _decimals_for(std)

    def fixed(value: float) -> str:  # at the spread's decimals, never a power of ten near 0 (0.00006, 0.00000)
        if digits == 3 or not math.isfinite(value):
            return _tex_number(value, digits)
        text = f"{value:.{digits}f}"
        return text.lstrip("-") if float(text) == 0 else text

    text = rf"${fixed(mean)} \pm {_tex_number(std, digits)}${mark}"
    if math.isnan(low) or math.isnan(high):
        return text
    return _tex_over(text, f"$[{fixed(low)}, {fixed(high)}]$")


FEWER_SEEDS_MARK = r"$^\dagger$"


def short_of_seeds(rows: pd.DataFrame, seeds: int | None) -> pd.Series:
    """Per row: it has fewer seeds than the profile's ``seeds`` (cells missing or failed); all False without."""
    return rows["n"] < seeds if seeds is not None else pd.Series(False, index=rows.index)


def _tex_rank(remedy: pd.Series | None) -> str:
    """A tie-aware rank range for LaTeX ("2--4"), a superscript tilde where it is level-sensitive; -- for none."""
    if remedy is None:
        return "--"
    return remedy["rank_range"].replace("–", "--") + (r"$^\sim$" if remedy.get("rank_level_sensitive") else "")


def leaderboard_latex(rows: pd.DataFrame, caption: str, label: str = "tab:vgbench",
                      ranked: pd.DataFrame | None = None, seeds: int | None = None) -> str:
    """A booktabs table of one (family, data set): remedies as rows, each citing its sources (keys of
    vgbench/references.bib, copied to results/references.bib), depths as column pairs (test metric with
    its interval under it, log10 ratio with the mean-field prediction under it), and with ``ranked`` (the
    same pair's ranking) a last column: the remedy's tie-aware rank. With ``seeds`` (the profile's count), a
    row with fewer (cells missing or failed) is marked FEWER_SEEDS_MARK, for the caption to explain. A
    data-set column only where the rows span several. Sized to fit a plain article's text width at two depths (tests/test_latex.py compiles it).

    ``caption`` is LaTeX and goes in as it is; names from the data are escaped.
    """
    metric = METRIC_NAMES.get(rows.iloc[0]["metric"], ("", tex_escape(rows.iloc[0]["metric"])))[1]
    depths = sorted(rows["depth"].unique())
    ranks = ({(r["dataset"], r["remedy"]): r for _, r in ranked.iterrows()} if ranked is not None else None)
    # One data set (the leaderboard's tables: one per family and data set) is named in the caption, not in
    # a column that would repeat it on every row.
    several = rows["dataset"].nunique() > 1
    first = 3 if several else 2  # the first depth's column
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
             r"\begin{tabular}{" + "l" * (first - 1) + "rr" * len(depths) + ("c" if ranks is not None else "") + "}",
             r"\toprule"]
    lines.append("& " * (first - 1) + " & ".join(rf"\multicolumn{{2}}{{c}}{{depth {d}}}" for d in depths)
                 + (" &" if ranks is not None else "") + r" \\")
    lines.append("".join(rf"\cmidrule(lr){{{first + 2 * i}-{first + 1 + 2 * i}}}" for i in range(len(depths))))
    lines.append(("data & " if several else "") + "remedy & "
                 + " & ".join(rf"test {metric} & $\log_{{10}}\frac{{g_1}}{{g_L}}$" for _ in depths)
                 + (" & rank" if ranks is not None else "") + r" \\")
    lines.append(r"\midrule")
    marked = rows.assign(_short=short_of_seeds(rows, seeds))
    for (dataset, remedy), group in marked.groupby(["dataset", "remedy"], sort=False):
        cites = REMEDIES.get(remedy).cites if remedy in REMEDIES else ()  # a hand-made row may name any remedy
        # The citations small under the name: beside it, `modern`'s six made the RNN table 34 pt too wide.
        name = _tex_over(tex_escape(remedy), latex_cite(cites).lstrip("~"), "l") if cites else tex_escape(remedy)
        cells = ([tex_escape(dataset)] if several else []) + [name]
        by_depth = {int(r["depth"]): r for _, r in group.iterrows()}
        for depth in depths:
            row = by_depth.get(int(depth))
            if row is None:
                cells += ["--", "--"]
                continue
            cells.append(_tex_mean_and_interval(row["test_metric_mean"], row["test_metric_std"],
                                                row["test_metric_ci_low"], row["test_metric_ci_high"],
                                                FEWER_SEEDS_MARK if row["_short"] else ""))
            predicted = row["theory_log10_dL_dh_first_last"]
            measured = _tex_math(row["init_log10_dL_dh_first_last"], 1)
            cells.append(measured if math.isnan(predicted) else _tex_over(measured, f"({_tex_math(predicted, 1)})"))
        if ranks is not None:
            cells.append(_tex_rank(ranks.get((dataset, remedy))))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


CLAIMS_INTRO = ("Each published claim is checked against this profile's leaderboard (vgbench/findings.py): "
                "holds, fails, undetermined (a number it needs is undefined, e.g. one seed has no interval), or "
                "not in this profile, with the numbers it used. Thresholds are the papers' "
                "where they give one; a failing claim is reported, never tuned away. \"Seeds disagree\" after a "
                "verdict names the rows it read whose seeds differ in outcome (some trainable, some not, or a failure "
                "label some have): such verdicts moved most often with another CPU or thread count, so check one on "
                "a second machine before citing it.")


def claims_markdown(claims: pd.DataFrame, profile: str) -> str:
    """The published claims with their verdicts and evidence, one row each."""
    body = [[f"`{r['claim']}`", r["statement"], r["cites"].replace(",", ", "),
             f"**{r['verdict']}**" + (f" (seeds disagree: {r['soft_rows']})" if r.get("soft_rows") else ""),
             r["evidence"].replace("|", "/")] for _, r in claims.iterrows()]
    counts = claims["verdict"].value_counts()
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)
    return "\n\n".join([f"## Published claims (profile {profile}): {tally}", CLAIMS_INTRO,
                        _markdown_table(["claim", "statement", "sources", "verdict", "evidence"], body)]) + "\n"


SOFT_CLAIM_MARK = r"$^\ast$"


def claims_latex(claims: pd.DataFrame, profile: str) -> str:
    """A longtable-free booktabs table: claim, sources cited, verdict, marked where it rests on a row whose seeds
    disagree (evidence and those rows stay in claims.md)."""
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{p{0.62\linewidth}l}", r"\toprule",
             r"published claim & verdict \\", r"\midrule"]
    for _, row in claims.iterrows():
        lines.append(tex_escape(row["statement"]) + latex_cite(tuple(row["cites"].split(","))) + " & "
                     + tex_escape(row["verdict"]) + (SOFT_CLAIM_MARK if row.get("soft_rows") else "") + r" \\")
    marked = any(bool(row.get("soft_rows")) for _, row in claims.iterrows())
    legend = (rf"; {SOFT_CLAIM_MARK}: the verdict rests on a row whose seeds disagree, check it on a second machine"
              if marked else "")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{Published claims checked against the vgbench profile {tex_escape(profile)} "
              rf"(thresholds and numbers: results/claims.md){legend}.}}", r"\label{tab:vgbench-claims}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"
