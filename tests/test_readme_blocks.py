"""`vgbench readme`: the README's leaderboard blocks come from results/leaderboard.md, not from a hand copy."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter

import pandas as pd
import pytest

from tests.conftest import REPO
from vgbench.cli import main
from vgbench.report import formats
from vgbench.report.readme import BLOCK, REFERENCE_DIR, ReadmeError, fill

LEADERBOARD = """## mlp on mnist1d (profile default)

Test accuracy, higher is better; chance 0.100.

| remedy | depth |
|---|---|
| he_relu | 20 |

### Remedies ranked (trainability frontier, then test acc at the deepest depth)

| rank | remedy |
|---|---|
| 1 | he_relu |

## rnn on adding (profile default)

Test MSE, lower is better.

| remedy | depth |
|---|---|
| lstm | 50 |

## Cells not in these tables (1 of 3)

Failed (1):
- rnn-gru-adding-d50: boom
"""

README = """# Title

<!-- leaderboard:default:mlp -->
an old hand-made table
<!-- /leaderboard:default:mlp -->

Text between stays.

<!-- leaderboard:default:rnn:adding -->
<!-- /leaderboard:default:rnn:adding -->
"""


def test_blocks_are_replaced_by_their_sections_and_the_rest_is_kept():
    text, replaced = fill(README, LEADERBOARD)
    assert replaced == ["default:mlp", "default:rnn:adding"]
    assert "an old hand-made table" not in text and "Text between stays." in text
    mlp = text.split("<!-- leaderboard:default:mlp -->\n")[1].split("<!-- /leaderboard:default:mlp -->")[0]
    assert mlp.startswith("Test accuracy, higher is better") and "| he_relu | 20 |" in mlp
    assert "**Remedies ranked** (trainability frontier, then test acc at the deepest depth):" in mlp
    assert "## " not in mlp and "lstm" not in mlp
    rnn = text.split("<!-- leaderboard:default:rnn:adding -->\n")[1]
    assert "| lstm | 50 |" in rnn and "Cells not in these tables" not in rnn.split("<!-- /leaderboard")[0]
    assert fill(text, LEADERBOARD)[0] == text  # idempotent


def test_a_block_without_a_section_names_itself_and_what_exists():
    with pytest.raises(ReadmeError, match=r"leaderboard:paper:mlp: no matching.*default:mlp:mnist1d"):
        fill("<!-- leaderboard:paper:mlp -->\n<!-- /leaderboard:paper:mlp -->\n", LEADERBOARD)


BOARD = {"profile": "default", "rows": {"mlp/mnist1d/he_relu/d20": {"test_metric_mean": 0.465}}, "frontier": {},
         "claims": {}, "provenance": {"git": {"commit": "0123456789ab"},
                                      "wandb": {"mode": "offline", "cell_runs": 2, "cell_run_ids": ["r1", "r2"]}}}


def test_the_command_rewrites_the_file_and_keeps_the_numbers_behind_it(tmp_path, capsys):
    readme, results, reference = tmp_path / "README.md", tmp_path / "results", tmp_path / "reference"
    args = ["readme", "--readme", str(readme), "--results-root", str(results), "--reference", str(reference)]
    readme.write_text(README)
    assert main(args) == 1
    assert "leaderboard.md is missing" in capsys.readouterr().err and readme.read_text() == README
    results.mkdir()
    (results / "leaderboard.md").write_text(LEADERBOARD)
    assert main(args) == 1  # the tables without their numbers: nothing written
    assert "leaderboard.json cannot be read" in capsys.readouterr().err and readme.read_text() == README
    assert not reference.exists()
    (results / "leaderboard.json").write_text(json.dumps(BOARD))
    assert main(args) == 0
    assert "| he_relu | 20 |" in readme.read_text() and "2 block(s) rewritten" in capsys.readouterr().out
    # The whole leaderboard, bar the run ids of offline runs that live on the machine that trained them.
    kept = json.loads((reference / "default.leaderboard.json").read_text())
    assert kept["rows"] == BOARD["rows"] and kept["provenance"]["git"] == BOARD["provenance"]["git"]
    assert kept["provenance"]["wandb"] == {"mode": "offline", "cell_runs": 2}


def _numbers(row: dict) -> pd.Series:
    """A leaderboard.json row as the tables were rendered from it (JSON's null and "inf" back to floats)."""
    return pd.Series({key: math.nan if value is None else float(value) if value in ("inf", "-inf") else value
                      for key, value in row.items()})


def test_the_committed_reference_holds_the_numbers_of_the_committed_readme_tables():
    """bench/reference/default.leaderboard.json is what `vgbench compare` checks a machine against: it must
    be the leaderboard the README's tables were written from, row for row and claim for claim (a README
    rewritten from another run without its reference fails here)."""
    readme = (REPO / "README.md").read_text()
    board = json.loads((REPO / REFERENCE_DIR / "default.leaderboard.json").read_text())
    blocks = {match["key"]: match["body"] for match in BLOCK.finditer(readme)}
    assert set(blocks) == {f"default:{family}" for family in ("mlp", "rnn", "dbn", "resnet", "highway")}
    for key, row in board["rows"].items():
        line = "| " + " | ".join(formats._cells(_numbers(row))) + " |"
        assert line in blocks[f"default:{row['family']}"].splitlines(), (key, line)
    assert sum(line.startswith("| ") and not line.startswith(("| remedy", "| rank", "|---"))
               and not line.split(" | ")[0].strip("| ~").replace("–", "").isdigit()
               for body in blocks.values() for line in body.splitlines()) == len(board["rows"])
    claims = readme.split("<!-- claims:default -->")[1].split("<!-- /claims:default -->")[0]
    shown = claims.strip().split(".**")[0].strip("*")  # "8 holds, 2 fails"
    assert Counter({verdict: int(n) for n, verdict in (part.split(" ", 1) for part in shown.split(", "))}) == Counter(
        claim["verdict"] for claim in board["claims"].values())
    for name, claim in board["claims"].items():
        assert f"| `{name}` | {claim['statement']} |" in claims and f"| **{claim['verdict']}** |" in claims
    # Its cells (what `vgbench compare` counts bit for bit) are the rows' cells: every row's mean is the mean of
    # its chosen rate's seeds among them, but a DBN twin's, whose cells stand once, under their MLP row.
    assert len(board["cell_metrics"]) == board["provenance"]["cells"]
    seeds: dict[tuple, list[float]] = {}
    for cell in board["cell_metrics"].values():
        seeds.setdefault((cell["row"], cell["learning_rate"]), []).append(_numbers(cell)["test_metric"])
    for key, row in board["rows"].items():
        mean = _numbers(row)["test_metric_mean"]
        if values := seeds.get((key, row["learning_rate"])):
            assert statistics.fmean(values) == pytest.approx(mean, rel=1e-12, nan_ok=True), key
        else:
            assert key.startswith("dbn/") and _numbers(board["rows"]["mlp/" + key[4:]])["test_metric_mean"] == mean


CLAIMS = """## Published claims (profile default): 1 holds, 1 fails

Each published claim is checked.

| claim | statement | sources | verdict | evidence |
|---|---|---|---|---|
| `a` | A. | x | **holds** | numbers |

Provenance: vgbench profile default, commit 0123456789ab.
"""


def test_the_claims_block_comes_from_claims_md_with_its_tally(tmp_path, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results"
    readme.write_text(README + "\n<!-- claims:default -->\nold\n<!-- /claims:default -->\n")
    results.mkdir()
    (results / "leaderboard.md").write_text(LEADERBOARD)
    (results / "leaderboard.json").write_text(json.dumps(BOARD))
    args = ["readme", "--readme", str(readme), "--results-root", str(results), "--reference", str(tmp_path / "ref")]
    assert main(args) == 1
    assert "claims.md is missing" in capsys.readouterr().err
    (results / "claims.md").write_text(CLAIMS)
    assert main(args) == 0
    assert "3 block(s) rewritten" in capsys.readouterr().out
    block = readme.read_text().split("<!-- claims:default -->\n")[1].split("<!-- /claims:default -->")[0]
    assert block.startswith("**1 holds, 1 fails.** Each published claim") and "| `a` | A. |" in block
    assert "\nold\n" not in block and "## Published" not in block and "Provenance" not in block
    (results / "claims.md").write_text(CLAIMS.replace("profile default", "profile paper"))
    assert main(args) == 1
    assert "claims file is for profile 'paper'" in capsys.readouterr().err
