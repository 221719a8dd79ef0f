"""The README's leaderboard and claims blocks, written from ``results/`` instead of by hand.

A block is everything between ``<!-- leaderboard:PROFILE:FAMILY[:DATASET] -->`` and
``<!-- /leaderboard:PROFILE:FAMILY[:DATASET] -->``. ``vgbench readme`` replaces
each block with the matching section of the leaderboard (the family's, on the
named data set or its only one), so the tables a reader sees are the ones the
last ``vgbench leaderboard`` produced, not a copy that drifted. Likewise a block between
``<!-- claims:PROFILE -->`` and ``<!-- /claims:PROFILE -->`` gets that profile's published claims
and verdicts from ``results/claims.md``.

The same command keeps the numbers behind those tables: ``bench/reference/<profile>.leaderboard.json``, a
copy of the run's ``leaderboard.json`` (every row, rank and claim at full precision, with its provenance:
commit, CPU, kernels), so that anyone can check a machine of their own against the tables this README
shows with ``vgbench compare bench/reference/default.leaderboard.json results`` (README, "Checking a
verdict on a second machine"). The one thing left out is the list of the run's W&B run ids, which name
offline runs on the machine that trained them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vgbench import atomic

REFERENCE_DIR = Path("bench/reference")  # the leaderboards behind the README's tables, one per profile

BLOCK = re.compile(r"(<!-- leaderboard:(?P<key>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /leaderboard:(?P=key) -->)", re.S)
CLAIMS_BLOCK = re.compile(r"(<!-- claims:(?P<key>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /claims:(?P=key) -->)", re.S)
CLAIMS_TITLE = re.compile(r"^## Published claims \(profile (?P<profile>[^)]+)\): (?P<tally>.*)$", re.M)
SECTION_TITLE = re.compile(r"^## (?P<family>\S+) on (?P<dataset>\S+) \(profile (?P<profile>[^)]+)\)$", re.M)


class ReadmeError(ValueError):
    """A block names a leaderboard section that does not exist; the message says which."""


def sections(leaderboard_md: str) -> dict[tuple[str, str, str], str]:
    """(profile, family, data set) -> the section's text without its title, ranked-table heading in bold."""
    found = {}
    matches = list(SECTION_TITLE.finditer(leaderboard_md))
    for match, following in zip(matches, [*matches[1:], None]):
        end = following.start() if following else len(leaderboard_md)
        text = leaderboard_md[match.end():end].split("\n## ")[0].strip()  # stop at "## Cells not in these tables"
        text = re.sub(r"^### (Remedies ranked) (\(.*\))$", r"**\1** \2:", text, flags=re.M)
        found[(match["profile"], match["family"], match["dataset"])] = text
    return found


def fill(readme: str, leaderboard_md: str) -> tuple[str, list[str]]:
    """``readme`` with every leaderboard block replaced; also the keys replaced."""
    available = sections(leaderboard_md)
    replaced: list[str] = []

    def body_for(match: re.Match) -> str:
        key = match["key"]
        profile, family, *dataset = key.split(":")
        candidates = {k: v for k, v in available.items()
                      if k[0] == profile and k[1] == family and (not dataset or k[2] == dataset[0])}
        if len(candidates) != 1:
            known = sorted(":".join(k) for k in available)
            problem = "no" if not candidates else f"{len(candidates)} (name the data set:"
            raise ReadmeError(f"README block leaderboard:{key}: {problem} matching leaderboard section"
                              f"{')' if candidates else ''}; the leaderboard has {known}")
        replaced.append(key)
        return f"{match.group(1)}{next(iter(candidates.values()))}\n{match.group(4)}"

    return BLOCK.sub(body_for, readme), replaced


def fill_claims(readme: str, claims_md: str) -> tuple[str, list[str]]:
    """``readme`` with its claims block replaced by ``claims_md`` (without its title, the tally in bold)."""
    title = CLAIMS_TITLE.search(claims_md)
    if title is None:
        raise ReadmeError("the claims file has no '## Published claims (profile …)' title: rebuild it with "
                          "`vgbench leaderboard`")
    replaced: list[str] = []

    def body_for(match: re.Match) -> str:
        if match["key"] != title["profile"]:
            raise ReadmeError(f"README block claims:{match['key']}: the claims file is for profile "
                              f"{title['profile']!r}")
        replaced.append(f"claims:{match['key']}")
        body = claims_md[title.end():].split("\nProvenance: ")[0].strip()  # the run's record, not the README's
        return f"{match.group(1)}**{title['tally']}.** {body}\n{match.group(4)}"

    return CLAIMS_BLOCK.sub(body_for, readme), replaced


def reference(board: dict) -> dict:
    """``leaderboard.json``'s content as the README's reference keeps it: all of it but the W&B run ids."""
    wandb = {key: value for key, value in board["provenance"]["wandb"].items() if key != "cell_run_ids"}
    return {**board, "provenance": {**board["provenance"], "wandb": wandb}}


def update_readme(readme_path: Path, leaderboard_path: Path, reference_dir: Path | None = None) -> list[str]:
    """Rewrite ``readme_path``'s leaderboard blocks from ``leaderboard_path`` and its claims block from
    ``claims.md`` beside it, and write the ``reference`` of ``leaderboard.json`` beside it into
    ``reference_dir`` as ``<profile>.leaderboard.json`` (each atomically, nothing written unless every
    input is there); the keys replaced."""
    if not leaderboard_path.is_file():
        raise ReadmeError(f"{leaderboard_path} is missing: run `vgbench leaderboard` (or `dvc repro`) first")
    text, replaced = fill(readme_path.read_text(), leaderboard_path.read_text())
    if CLAIMS_BLOCK.search(text):
        claims_path = leaderboard_path.with_name("claims.md")
        if not claims_path.is_file():
            raise ReadmeError(f"{claims_path} is missing: run `vgbench leaderboard` (or `dvc repro`) first")
        text, more = fill_claims(text, claims_path.read_text())
        replaced += more
    board = None
    if reference_dir is not None:
        board_path = leaderboard_path.with_name("leaderboard.json")
        try:
            board = reference(json.loads(board_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ReadmeError(f"{board_path} cannot be read ({error}): run `vgbench leaderboard` (or "
                              f"`dvc repro`) first") from None
    atomic.write_text(readme_path, text)
    if board is not None:
        atomic.write_json(reference_dir / f"{board['profile']}.leaderboard.json", board)
    return replaced
