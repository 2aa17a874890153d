"""Every test gets its own short pool directory, and fails if a process it started
(a supervisor or a job of that pool) is still alive afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
from helpers import end_pool

import bgtask


@pytest.fixture
def pool_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Short: Unix socket paths are limited to ~107 bytes.
    path = tempfile.mkdtemp(prefix="bgt", dir="/tmp")
    monkeypatch.setenv("BGTASK_POOL", path)
    try:
        yield path
    finally:
        leftovers = end_pool(path)
        if leftovers:
            pytest.fail(f"processes outlived the test: {leftovers}")


@pytest.fixture
def pool(pool_dir: str) -> bgtask.TaskPool:
    return bgtask.TaskPool(pool_dir)
