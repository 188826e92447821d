"""Shared fixtures: a real berthd per test module or test, and support plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.daemon import Berthd, running_berthd

pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Integration tests need root for mounts, namespaces, cgroups and /run.
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root (run scripts/test.sh as root)")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def berthd() -> Iterator[Berthd]:
    """A fresh daemon for one test."""
    with running_berthd() as d:
        yield d


@pytest.fixture(scope="module")
def shared_berthd() -> Iterator[Berthd]:
    """One daemon shared by a module's tests; tests must use unique names."""
    with running_berthd() as d:
        yield d
