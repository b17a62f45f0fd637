"""Fixtures the lab tests share: one lab node serving the fixture bundle through the bundle_server role, built once
per session (the fixture bundle and the role's first run are most of a test file's time)."""
from __future__ import annotations

import os

import pytest

from . import served_bundle


@pytest.fixture(scope="session")
def serving_node(tmp_path_factory: pytest.TempPathFactory):
    """(container, address, fixture bundle). Tests may change the node's nginx settings or swap bundles, but leave it
    serving the fixture bundle."""
    with served_bundle.serving_node(f"t{os.getpid()}-bundle-served", tmp_path_factory.mktemp("served")) as node:
        yield node
