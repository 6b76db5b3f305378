"""Suite-wide settings: isolated CXR_HOME, no colours, plain progress, one torch thread per test process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("cxr_home")
    monkeypatch.setenv("CXR_HOME", str(home))
    for var in ("CXR_DATA", "CXR_CACHE", "CXR_RUNS", "CXR_DEBUG", "CXR_QUIET", "CXR_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("CXR_PLAIN_PROGRESS", "1")
    yield
    from cxr_tools.runtime.locks import release_all
    from cxr_tools.runtime.signals import reset_received

    release_all()  # output locks an engine called directly took (the CLI releases its own)
    reset_received()  # a stop signal a test delivered in this process is not the next test's
