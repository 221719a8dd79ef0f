"""`vgbench readme`: the README's leaderboard blocks come from results/leaderboard.md, not from a hand copy."""

from __future__ import annotations

import pytest

from vgbench.cli import main
from vgbench.report.readme import ReadmeError, fill

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


def test_the_command_rewrites_the_file_and_fails_cleanly_without_a_leaderboard(tmp_path, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results"
    readme.write_text(README)
    assert main(["readme", "--readme", str(readme), "--results-root", str(results)]) == 1
    assert "leaderboard.md is missing" in capsys.readouterr().err and readme.read_text() == README
    results.mkdir()
    (results / "leaderboard.md").write_text(LEADERBOARD)
    assert main(["readme", "--readme", str(readme), "--results-root", str(results)]) == 0
    assert "| he_relu | 20 |" in readme.read_text() and "2 block(s) rewritten" in capsys.readouterr().out


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
    assert main(["readme", "--readme", str(readme), "--results-root", str(results)]) == 1
    assert "claims.md is missing" in capsys.readouterr().err
    (results / "claims.md").write_text(CLAIMS)
    assert main(["readme", "--readme", str(readme), "--results-root", str(results)]) == 0
    assert "3 block(s) rewritten" in capsys.readouterr().out
    block = readme.read_text().split("<!-- claims:default -->\n")[1].split("<!-- /claims:default -->")[0]
    assert block.startswith("**1 holds, 1 fails.** Each published claim") and "| `a` | A. |" in block
    assert "\nold\n" not in block and "## Published" not in block and "Provenance" not in block
    (results / "claims.md").write_text(CLAIMS.replace("profile default", "profile paper"))
    assert main(["readme", "--readme", str(readme), "--results-root", str(results)]) == 1
    assert "claims file is for profile 'paper'" in capsys.readouterr().err
