"""The bibliography: every source a registry cites is an entry of vgbench/references.bib, and the
human-readable citation names the same first author and year."""

from __future__ import annotations

import unicodedata

import pytest

from vgbench.data import DATASETS
from vgbench.references import check_keys, latex_cite, references
from vgbench.remedies import REMEDIES


def _plain(text: str) -> str:
    """LaTeX accents and braces off ({\\"u} -> u), for comparing names with the registry's text."""
    for accent in ('\\"', "\\'", "\\`", "\\^", "\\~"):
        text = text.replace(accent, "")
    text = text.replace("{", "").replace("}", "")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def test_the_bibliography_parses_with_unique_keys_and_the_fields_a_citation_needs():
    entries = references()
    assert len(entries) >= 25
    for key, entry in entries.items():
        assert entry.kind in {"article", "inproceedings", "techreport", "mastersthesis"}, key
        assert 1950 < entry.year < 2030 and entry.title and entry.first_author, key
        assert key.startswith(_plain(entry.first_author).lower().replace(" ", "").replace("-", "")[:4]), key
        assert str(entry.year) in key, key


@pytest.mark.parametrize("name", list(REMEDIES))
def test_every_remedy_cites_entries_that_match_its_citation_text(name):
    remedy = REMEDIES.get(name)
    assert remedy.cites, f"remedy {name!r} cites nothing"
    text = _plain(remedy.citation)
    for key in remedy.cites:
        entry = references()[key]
        assert _plain(entry.first_author) in text and str(entry.year) in text, (name, key, remedy.citation)


def test_every_data_set_cites_its_source():
    for name in DATASETS:
        cites = DATASETS.get(name).cites
        assert cites and all(key in references() for key in cites), name


def test_an_unknown_key_is_refused_naming_the_registry_entry():
    with pytest.raises(ValueError, match=r"remedy 'x' cites \['nobody2099'\], not in references.bib"):
        check_keys(("he2016deep", "nobody2099"), "remedy 'x'")
    assert latex_cite(("a2000", "b2001")) == r"~\cite{a2000,b2001}" and latex_cite(()) == ""


def test_the_citation_file_is_valid_cff_for_this_version():
    import re

    import yaml

    from tests.conftest import REPO

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"message", "title", "authors", "version"} <= set(cff)
    assert all("name" in author or "family-names" in author for author in cff["authors"])
    assert cff["version"] == re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)[1]


def test_every_entry_is_cited_by_a_registry_or_the_theory():
    from vgbench.findings import CLAIMS
    from vgbench.probes import theory

    cited = {key for name in REMEDIES for key in REMEDIES.get(name).cites}
    cited |= {key for name in DATASETS for key in DATASETS.get(name).cites}
    cited |= {key for name in CLAIMS for key in CLAIMS.get(name).cites} | set(theory.CITES)
    assert set(references()) == cited, set(references()) ^ cited
