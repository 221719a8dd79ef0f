"""Shared fixtures: the repo's params, the tiny profile and its data set built once per session."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vgbench.config import load_params
from vgbench.data.store import ensure, load

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (the README's `-n 2`), torch in each worker, and in the `vgbench` processes the tests
    start, runs one thread unless OMP_NUM_THREADS says otherwise. With torch's default of one thread per core,
    two workers (and their subprocesses) put more spinning OpenMP threads than cores on a 2-core machine: a
    test that takes 5 s alone took 173 s in CI beside another worker's training."""
    if hasattr(config, "workerinput") and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


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
