"""The README's leaderboard blocks, written from ``results/leaderboard.md`` instead of by hand.

A block is everything between ``<!-- leaderboard:PROFILE:FAMILY[:DATASET] -->`` and
``<!-- /leaderboard:PROFILE:FAMILY[:DATASET] -->``. ``vgbench readme`` replaces
each block with the matching section of the leaderboard (the family's, on the
named data set or its only one), so the tables a reader sees are the ones the
last ``vgbench leaderboard`` produced, not a copy that drifted.
"""

from __future__ import annotations

import re
from pathlib import Path

from vgbench import atomic

BLOCK = re.compile(r"(<!-- leaderboard:(?P<key>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /leaderboard:(?P=key) -->)", re.S)
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


def update_readme(readme_path: Path, leaderboard_path: Path) -> list[str]:
    """Rewrite ``readme_path``'s leaderboard blocks from ``leaderboard_path`` (atomically); the keys replaced."""
    if not leaderboard_path.is_file():
        raise ReadmeError(f"{leaderboard_path} is missing: run `vgbench leaderboard` (or `dvc repro`) first")
    text, replaced = fill(readme_path.read_text(), leaderboard_path.read_text())
    atomic.write_text(readme_path, text)
    return replaced
