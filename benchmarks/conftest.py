"""Fixtures of the benchmarks: one short pool directory for the session, and cleanup of
every process a benchmark started (tasks are deleted; anything left of the pool, and
every baseline peer, is ended by pid)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from _common import Peers, delete_all, kill_and_wait, pids_of_pool

import bgtask


def pytest_sessionstart(session: pytest.Session) -> None:
    # bgtask's bytecode written, as an installed package has it, whatever
    # PYTHONDONTWRITEBYTECODE says: a fresh supervisor, the fork server or the CLI
    # compiling its modules on every start is not what is measured.
    import compileall

    package = os.path.dirname(bgtask.__file__)
    if os.access(package, os.W_OK):  # (_as_user.py compiles its copy as root)
        compileall.compile_dir(package, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The project's per-test timeout (60 s) is for tests; a benchmark spawning a hundred
    # tasks or moving gigabytes on a loaded machine needs longer.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def pool_dir() -> Iterator[str]:
    # Short: Unix socket paths are limited to ~107 bytes.
    path = tempfile.mkdtemp(prefix="bgb", dir="/tmp")
    old = os.environ.get("BGTASK_POOL")
    os.environ["BGTASK_POOL"] = path
    try:
        yield path
    finally:
        try:
            delete_all(bgtask.TaskPool(path).search())
        finally:
            for pid in pids_of_pool(path):
                kill_and_wait(pid, 1.0)
            shutil.rmtree(path, ignore_errors=True)
            if old is None:
                os.environ.pop("BGTASK_POOL", None)
            else:
                os.environ["BGTASK_POOL"] = old


@pytest.fixture(scope="session")
def pool(pool_dir: str) -> bgtask.TaskPool:
    return bgtask.TaskPool(pool_dir)


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for the baselines' Unix sockets."""
    path = tempfile.mkdtemp(prefix="bgs", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
