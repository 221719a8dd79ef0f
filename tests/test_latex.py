"""The LaTeX a paper pastes in compiles: the leaderboard and claims tables with their citations, through a
real pdflatex and BibTeX (TeX Live from Debian; `.ci/run` installs it and sets ``VGBENCH_REQUIRE_LATEX=1``,
elsewhere the test is skipped where pdflatex is missing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.test_report import cells, params, write_results  # noqa: F401 (fixtures)
from vgbench.report import build

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
