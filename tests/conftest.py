"""Suite-wide settings: isolated CXR_HOME, no colours, plain progress, one torch thread per test process, and
a session-end check that nothing the suite started is still running."""

from __future__ import annotations

import os

import pytest
from session_processes import SESSION_VAR, leftovers, new_token, stop_own_multiprocessing_helpers

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ[SESSION_VAR] = new_token()  # inherited by every process a test starts (session_processes.py)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running():
    """Fail the run when a process the session started outlives it (a pool or fork server not shut down, a
    worker orphaned by a killed command). Torn down last: every other fixture has cleaned up by then."""
    yield
    import gc

    gc.collect()  # an abandoned DataLoader iterator shuts its workers down when collected
    stop_own_multiprocessing_helpers()
    left = leftovers(os.getpid(), os.environ[SESSION_VAR])
    if left:
        listing = "\n  ".join(str(p) for p in left)
        pytest.fail(f"{len(left)} process(es) started by this test session are still running:\n  {listing}", False)


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
