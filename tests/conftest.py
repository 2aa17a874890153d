"""Every test gets its own short pool directory, and fails if a process it started
(a supervisor or a job of that pool) is still alive afterwards. A session-wide backstop
ends, and reports, any supervisor the session started that is still alive at its end,
whatever pool it serves (tests that make pools of their own, or none of the fixtures'),
as long as the session made that pool's directory (with tempfile, or under pytest's
base temporary directory)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import end_fork_servers, end_pool, supervisor_pools

import bgtask

#: every directory this session made with tempfile (pools among them): the backstop ends
#: only supervisors of these, never those of another session running beside this one.
_MADE: list[str] = []
_mkdtemp = tempfile.mkdtemp


def _recording_mkdtemp(*args: object, **kwargs: object) -> str | bytes:
    path = _mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
    _MADE.append(os.path.realpath(os.fsdecode(path)))
    return path


tempfile.mkdtemp = _recording_mkdtemp  # type: ignore[assignment]


def _ours(pool: str, roots: list[str]) -> bool:
    real = os.path.realpath(pool)
    return any(real == r or real.startswith(r + os.sep) for r in roots)


@pytest.fixture(scope="session", autouse=True)
def no_supervisor_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    since = time.time()
    yield
    roots = [*_MADE, os.path.realpath(tmp_path_factory.getbasetemp())]
    left = {pid: pool for pid, pool in supervisor_pools(since).items() if _ours(pool, roots)}
    for pool in sorted(set(left.values())):
        end_pool(pool)
    end_fork_servers(roots)  # of pools without a task left, which end_pool did not see
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
