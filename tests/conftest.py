"""Shared fixtures: the repo's params, the tiny profile and its data set built once per session."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vgbench.config import load_params
from vgbench.data.store import ensure, load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_params():
    return load_params(REPO / "params.yaml", profile="tiny")


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory, tiny_params) -> Path:
    """A data root holding every data set of the tiny profile, built once."""
    root = tmp_path_factory.mktemp("data")
    ensure(tiny_params.active, root)
    return root


@pytest.fixture(scope="session")
def tiny_data(tiny_data_root, tiny_params):
    return load("mnist1d", tiny_params.active.dataset_settings("mnist1d"), tiny_data_root)


@pytest.fixture
def no_network(monkeypatch):
    """Make every download fail at once; returns the list of URLs torchvision tried."""
    tried: list[str] = []

    def refuse(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried
