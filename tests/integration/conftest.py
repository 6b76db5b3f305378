"""Fixtures shared by integration test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def webapp_world(tmp_path_factory):
    """The ``cxr app`` tests' cache, run, evaluation and uploads (webapp_fixtures.py), built once per session:
    the service and browser tests share it (building it runs an evaluation)."""
    from webapp_fixtures import make_world

    return make_world(tmp_path_factory.mktemp("webapp-world"))
