"""Every test gets its own short pool directory, and fails if a process it started
(a supervisor or a job of that pool) is still alive afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest
from helpers import kill_all, processes_of_pool, wait_for

import bgtask


@pytest.fixture
def pool_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Short: Unix socket paths are limited to ~107 bytes.
    path = tempfile.mkdtemp(prefix="bgt", dir="/tmp")
    monkeypatch.setenv("BGTASK_POOL", path)
    try:
        yield path
    finally:
        leftovers = processes_of_pool(path)
        if leftovers:
            # Give supervisors that are exiting on their own (a delete in flight) a moment.
            try:
                wait_for(lambda: not processes_of_pool(path), timeout=3.0)
                leftovers = []
            except AssertionError:
                leftovers = processes_of_pool(path)
        if leftovers:
            try:
                for task in bgtask.TaskPool(path).search():
                    task.delete(timeout=1.0)
            except Exception:
                pass
            kill_all([pid for pid, _ in processes_of_pool(path)])
        shutil.rmtree(path, ignore_errors=True)
        if leftovers:
            pytest.fail(f"processes outlived the test: {leftovers}")


@pytest.fixture
def pool(pool_dir: str) -> bgtask.TaskPool:
    return bgtask.TaskPool(pool_dir)
