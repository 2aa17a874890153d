"""Every test gets its own short pool directory, and fails if a process it started
(a supervisor or a job of that pool) is still alive afterwards. A session-wide backstop
ends, and reports, any supervisor the session started that is still alive at its end,
whatever pool it serves (tests that make pools of their own, or none of the fixtures')."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import end_pool, supervisor_pools

import bgtask


@pytest.fixture(scope="session", autouse=True)
def no_supervisor_outlives_the_session() -> Iterator[None]:
    since = time.time()
    yield
    left = supervisor_pools(since)
    for pool in sorted(set(left.values())):
        end_pool(pool)
    if left:
        pytest.fail(f"supervisors outlived the test session (ended now): {sorted(left.items())}")


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
