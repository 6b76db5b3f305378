"""Fixtures shared by the unit tests: one torch thread, and the MAML engines to run a test under."""

from __future__ import annotations

import pytest
import torch

from cxr_tools.methods.maml.config import ENGINES

MAML_ENGINES = [e for e in ENGINES if e != "auto"]


@pytest.fixture
def one_thread():
    """One torch thread for the test (deterministic reductions, no oversubscription), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=MAML_ENGINES)
def engine(request):
    """Each concrete MAML engine in turn; learn2learn is skipped where it is not installed."""
    if request.param == "learn2learn":
        pytest.importorskip("learn2learn", reason="learn2learn not installed (make setup installs it)")
    return request.param
