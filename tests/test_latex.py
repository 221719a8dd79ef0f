"""The LaTeX a paper pastes in compiles: the leaderboard and claims tables with their citations, through a
real pdflatex and BibTeX (TeX Live from Debian; `.ci/run` installs it and sets ``VGBENCH_REQUIRE_LATEX=1``,
elsewhere the test is skipped where pdflatex is missing)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from tests.test_report import cells, golden_rows, params, write_results  # noqa: F401 (fixtures)
from vgbench.report import build, formats

DOCUMENT = r"""\documentclass{article}
\usepackage{booktabs}
\begin{document}
\input{leaderboard.tex}
\input{claims.tex}
\bibliographystyle{plain}
\bibliography{references}
\end{document}
"""


def _tools() -> None:
    missing = [tool for tool in ("pdflatex", "bibtex") if shutil.which(tool) is None]
    if missing:
        why = f"{' and '.join(missing)} not installed (Debian: texlive-latex-base texlive-latex-recommended)"
        (pytest.fail if os.environ.get("VGBENCH_REQUIRE_LATEX") == "1" else pytest.skip)(why)


def _run(folder, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)


def _compile_alone(tmp_path, table: str, every_reference: bool = False) -> str:
    """Compile ``table`` as a paper's only table (pdflatex, BibTeX, and the second pass after it, where the
    citations resolve); the log. ``every_reference``: number every bibliography entry (\\nocite{*})."""
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "leaderboard.tex").write_text(table)
    shutil.copy(build.BIB_PATH, paper / "references.bib")
    (paper / "paper.tex").write_text(DOCUMENT.replace(r"\input{claims.tex}" + "\n",
                                                      r"\nocite{*}" + "\n" if every_reference else ""))
    latex = ("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex")
    for command in (latex, ("bibtex", "paper"), latex, latex):
        done = _run(paper, *command)
        assert done.returncode == 0, done.stdout[-3000:]
    return (paper / "paper.log").read_text(errors="replace")


def test_the_leaderboard_and_claims_tables_compile_with_every_citation_resolved(tmp_path, params, cells):
    _tools()
    results = tmp_path / "results"
    write_results(results, cells)
    build.build_leaderboard(params, results, log_to_wandb=False)
    paper = tmp_path / "paper"
    paper.mkdir()
    for name in ("leaderboard.tex", "claims.tex", "references.bib"):  # what a user copies next to the paper
        shutil.copy(results / name, paper / name)
    (paper / "paper.tex").write_text(DOCUMENT)

    latex = ("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex")
    first = _run(paper, *latex)
    assert first.returncode == 0, first.stdout[-3000:]
    bibtex = _run(paper, "bibtex", "paper")
    assert bibtex.returncode == 0, bibtex.stdout
    blg = (paper / "paper.blg").read_text()
    assert "Warning--" not in blg and "error message" not in blg, blg  # every entry well-formed
    for _ in range(2):  # citations settle on the second pass after BibTeX
        last = _run(paper, *latex)
        assert last.returncode == 0, last.stdout[-3000:]
    log = (paper / "paper.log").read_text(errors="replace")
    assert not re.findall(r"(?:Citation|Reference) `[^']+' .*undefined", log)
    assert "Overfull \\hbox" not in log  # the tables fit the text width of a plain article
    cited = {key for text in ((paper / "leaderboard.tex").read_text(), (paper / "claims.tex").read_text())
             for group in re.findall(r"\\cite\{([^}]*)\}", text) for key in group.split(",")}
    resolved = set(re.findall(r"\\bibcite\{([^}]*)\}", (paper / "paper.aux").read_text()))
    assert cited and cited <= resolved
    assert (paper / "paper.pdf").stat().st_size > 10_000


def test_a_loss_table_with_a_diverged_row_and_a_row_short_of_seeds_compiles_and_says_so(tmp_path, params):
    """The copy-memory task's metric is cross_entropy (an underscore, in the caption); a row whose seed
    diverged has mean +inf and no std or interval; a row with a cell missing has 2 seeds of 3. All of it
    must compile cleanly, and the short row must be marked and the caption say what the mark means."""
    _tools()
    rows = golden_rows().assign(metric="cross_entropy", higher_is_better=False, baseline_metric=2.2,
                                family="rnn", dataset="copy_memory")
    rows.loc[1, ["test_metric_mean", "test_metric_std", "test_metric_ci_low", "test_metric_ci_high"]] = [
        math.inf, math.nan, math.nan, math.nan]
    rows.loc[2, "n"] = 2
    caption = build._latex_caption(params, "rnn", "copy_memory", rows, n_seeds=3)
    table = formats.leaderboard_latex(rows, caption=caption, seeds=3)
    assert r"test cross\_entropy, lower is better" in caption
    # Copy memory's probes follow the recall's loss, not the training loss: the caption says whose gradient it is.
    assert "ratio at initialization (of the recall: the cross-entropy of the last 10 steps)" in caption
    assert "(of the" not in build._latex_caption(params, "rnn", "adding", rows, n_seeds=3)
    assert r"$\infty \pm \mbox{--}$" in table  # not the plain-text "inf ± –" in math mode
    assert table.count(formats.FEWER_SEEDS_MARK) == 1 + 1  # the short row, and the caption's legend
    assert rf"{formats.FEWER_SEEDS_MARK}: over fewer" in caption and "(1 of 5 entries" in caption
    log = _compile_alone(tmp_path, table)
    assert "invalid in math mode" not in log and "Missing $" not in log and "Overfull \\hbox" not in log


def test_a_table_as_wide_as_the_default_profiles_rnn_block_fits_a_plain_article(tmp_path, params):
    """The default profile's RNN table, with ten cited remedies (`modern` cites six) and spreads below 0.001,
    was 70 pt wider than a plain article's text width (345 pt): spreads printed as powers of ten and
    citations beside the names. Here every row carries the widest entries that table had, so this table is
    at least as wide as it; it must compile without an overfull box."""
    _tools()
    remedies = ("small_init", "tanh_standard", "xavier", "orthogonal", "irnn", "grad_clip", "layernorm", "lstm",
                "gru", "modern")
    base = golden_rows().iloc[0].to_dict() | {"family": "rnn", "dataset": "adding", "metric": "mse",
                                              "higher_is_better": False, "baseline_metric": 0.167}
    rows = pd.DataFrame([
        base | {"remedy": remedy, "depth": depth, "test_metric_mean": mean, "test_metric_std": std,
                "test_metric_ci_low": low, "test_metric_ci_high": high,
                "init_log10_dL_dh_first_last": measured, "theory_log10_dL_dh_first_last": predicted}
        for remedy in remedies
        for depth, mean, std, low, high, measured, predicted in (
            (10, 0.000414, 0.0000486, 0.00029, 0.00053, -11.4, -11.3),
            (50, 0.1692, 0.00044, 0.1681, 0.1703, -61.8, -61.4))])
    ranked = pd.DataFrame([{"dataset": "adding", "remedy": remedy, "rank_range": "7–10",
                            "rank_level_sensitive": True} for remedy in remedies])
    table = formats.leaderboard_latex(rows, caption=build._latex_caption(params, "rnn", "adding", rows, n_seeds=3),
                                      ranked=ranked, seeds=3)
    assert r"\cite{he2015delving,ioffe2015batch,he2016deep,pascanu2013difficulty,cho2014learning,saxe2014exact}" in table
    assert r"$0.00041 \pm 0.00005$" in table and r"$0.1692 \pm 0.0004$" in table
    # Every entry of the bibliography numbered, so the citation labels are as wide as they get.
    log = _compile_alone(tmp_path, table, every_reference=True)
    assert not re.findall(r"Citation `[^']+' .*undefined", log)
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox \([^)]*\)", log)
