"""Every test gets its own short pool directory, and fails if a process it started
(a supervisor or a job of that pool) is still alive afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator

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


@pytest.fixture
def spawn(pool: bgtask.TaskPool) -> Iterator[Callable[..., bgtask.Task]]:
    """``spawn(argv, **options)`` in the test's pool; every task it made is deleted at
    teardown (the pool fixture's leak check stays the backstop)."""
    made: list[bgtask.Task] = []

    def _spawn(argv: object, **options: object) -> bgtask.Task:
        task = pool.spawn(argv, **options)  # type: ignore[arg-type]
        made.append(task)
        return task

    yield _spawn
    for task in made:
        try:
            task.delete()
        except bgtask.TaskNotFoundError:
            pass
