"""The bibliography the registries cite: ``vgbench/references.bib``, read by key.

A remedy, a data set or a published claim cites its sources by BibTeX key, so the LaTeX tables can
``\\cite`` them and a paper can use the same file; a test holds every key to an entry, and every
entry's first author and year to the registry's human-readable citation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BIB_PATH = Path(__file__).with_name("references.bib")


@dataclass(frozen=True)
class Reference:
    key: str
    kind: str  # article, inproceedings, ...
    first_author: str  # surname, as written in the file (LaTeX accents kept)
    year: int
    title: str


def _field(body: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\s*=\s*\{{(.*)\}},?\s*$", body, flags=re.M)
    if match is None:
        raise ValueError(f"{BIB_PATH}: an entry lacks its {name!r} field:\n{body[:200]}")
    return match[1]


@lru_cache(maxsize=1)
def references() -> dict[str, Reference]:
    """Every entry of references.bib by key."""
    text = BIB_PATH.read_text()
    found: dict[str, Reference] = {}
    for match in re.finditer(r"^@(\w+)\{([\w:-]+),\n(.*?)^\}", text, flags=re.M | re.S):
        kind, key, body = match[1], match[2], match[3]
        if key in found:
            raise ValueError(f"{BIB_PATH}: key {key!r} appears twice")
        found[key] = Reference(key, kind, _field(body, "author").split(",")[0].strip(),
                               int(_field(body, "year")), _field(body, "title"))
    return found


def check_keys(keys: tuple[str, ...], where: str) -> tuple[str, ...]:
    """``keys`` when every one is in references.bib; a ValueError naming ``where`` and the unknown ones."""
    unknown = [key for key in keys if key not in references()]
    if unknown:
        raise ValueError(f"{where} cites {unknown}, not in {BIB_PATH.name} (keys: {sorted(references())})")
    return keys


def latex_cite(keys: tuple[str, ...]) -> str:
    """``~\\cite{a,b}``, or nothing without keys."""
    return rf"~\cite{{{','.join(keys)}}}" if keys else ""
