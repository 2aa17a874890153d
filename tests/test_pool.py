"""TaskPool: where a pool is, how its directory is made, and what is in it."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import kill_all, pid_alive, py, wait_for

import bgtask
from bgtask._client import pool as _pool


def _processes_under(prefix: str) -> list[int]:
    """Live processes (not us) whose command line or environment names *prefix*."""
    needle = os.fsencode(prefix)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if (needle in cmd or needle in env) and pid_alive(int(name)):
            found.append(int(name))
    return found


@pytest.fixture
def scratch() -> Iterator[str]:
    """A short scratch directory for pools made inside it; like the ``pool`` fixture, it
    fails the test if a process of such a pool outlives it."""
    import shutil

    path = tempfile.mkdtemp(prefix="bgs", dir="/tmp")
    try:
        yield path
    finally:
        left = _processes_under(path)
        if left:
            try:
                wait_for(lambda: not _processes_under(path), timeout=3.0)
                left = []
            except AssertionError:
                kill_all(_processes_under(path))
        shutil.rmtree(path, ignore_errors=True)
        if left:
            pytest.fail(f"processes outlived the test: {left}")


@pytest.fixture
def umask0() -> Iterator[None]:
    """A umask of 0: modes must be exact, not filtered."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- where a pool is ---------------------------------------------------------------------------

def test_pool_path_from_bgtask_pool(pool_dir: str) -> None:
    p = bgtask.TaskPool()
    assert isinstance(p.path, Path)
    assert p.path == Path(pool_dir)
    assert bgtask.default_pool().path == Path(pool_dir)
    assert isinstance(bgtask.default_pool(), bgtask.TaskPool)


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_explicit_path_wins_over_the_environment(pool_dir: str, scratch: str, kind: type) -> None:
    p = bgtask.TaskPool(kind(scratch))
    assert isinstance(p.path, Path)
    assert p.path == Path(scratch)


def test_relative_path_is_made_absolute(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch)
    p = bgtask.TaskPool("sub")
    assert p.path == Path(scratch, "sub")
    assert p.path.is_absolute()
    monkeypatch.chdir("/")
    _first_spawn(p)  # created where it was named, not in the current directory
    assert os.path.isdir(os.path.join(scratch, "sub"))


def test_module_functions_use_the_default_pool(pool: bgtask.TaskPool) -> None:
    task = bgtask.spawn(["sleep", "30"])
    try:
        assert task.pool.path == pool.path
        assert os.path.exists(pool.path / f"{task.pid}.sock")
        assert [t.pid for t in bgtask.search()] == [task.pid]
        assert [t.pid for t in pool.search()] == [task.pid]
    finally:
        task.delete()


# -- the directory -----------------------------------------------------------------------------

def _first_spawn(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    task.delete()


def test_missing_directory_is_created_0700_by_the_first_spawn(scratch: str, umask0: None) -> None:
    path = os.path.join(scratch, "new")
    p = bgtask.TaskPool(path)
    assert not os.path.exists(path), "only a spawn creates a pool directory"
    assert p.search() == [] and p.clean() == []
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(12345, p).info()
    assert not os.path.exists(path), "reading never creates a pool directory"
    _first_spawn(p)
    assert os.path.isdir(path)
    assert _mode(path) == 0o700


def test_missing_directory_is_created_0700_under_a_strict_umask(scratch: str) -> None:
    old = os.umask(0o777)
    try:
        path = os.path.join(scratch, "strict")
        _first_spawn(bgtask.TaskPool(path))
    finally:
        os.umask(old)
    assert _mode(path) == 0o700


def test_missing_parents_are_created_too(scratch: str) -> None:
    path = os.path.join(scratch, "a", "b")
    p = bgtask.TaskPool(path)
    assert p.path == Path(path)
    _first_spawn(p)
    assert _mode(path) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o750, 0o711], ids=oct)
def test_existing_directory_mode_is_never_changed(scratch: str, mode: int, umask0: None) -> None:
    path = os.path.join(scratch, "existing")
    os.mkdir(path)
    os.chmod(path, mode)
    p = bgtask.TaskPool(path)
    assert _mode(path) == mode
    # ... not even by spawning, searching and deleting in it.
    task = p.spawn(["true"])
    try:
        assert task.wait(timeout=10) == 0
        assert p.search() == [task]
    finally:
        task.delete()
    assert p.clean() == []
    assert _mode(path) == mode


def test_path_that_is_a_file_is_refused(scratch: str) -> None:
    path = os.path.join(scratch, "file")
    Path(path).write_text("x")
    with pytest.raises(NotADirectoryError):
        bgtask.TaskPool(path)


def test_too_long_path_raises_value_error_at_construction(scratch: str) -> None:
    path = os.path.join(scratch, "x" * 120)
    with pytest.raises(ValueError, match="too long"):
        bgtask.TaskPool(path)
    assert not os.path.exists(path), "a refused pool must not be created"
    with pytest.raises(ValueError):
        bgtask.TaskPool(os.path.join(scratch, "y" * 90))


def test_too_long_bgtask_pool_raises_value_error(monkeypatch: pytest.MonkeyPatch, scratch: str) -> None:
    monkeypatch.setenv("BGTASK_POOL", os.path.join(scratch, "z" * 110))
    with pytest.raises(ValueError):
        bgtask.default_pool()
    with pytest.raises(ValueError):
        bgtask.spawn(["true"])


def test_longest_accepted_path_works(scratch: str) -> None:
    """The longest path the pool accepts still has room for every socket name."""
    path = scratch + "/"
    while True:  # grow it one byte at a time until it is refused
        try:
            bgtask.TaskPool(path + "p")
        except ValueError:
            break
        path += "p"
    assert len(path) > len(scratch) + 10, "even short paths are refused"
    p = bgtask.TaskPool(path)
    with open("/proc/sys/kernel/pid_max") as f:
        longest_sock = f"{path}/{int(f.read()) - 1}.sock"
    assert len(os.fsencode(longest_sock)) <= 107
    task = p.spawn(py("print('fits')"))
    try:
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"fits\n"
    finally:
        task.delete()
    assert not pid_alive(task.pid)


# -- default_pool() when BGTASK_POOL is not set -------------------------------------------------
# /var/run/bgtask must not be created by tests: the system pool's location is redirected.

def test_default_pool_prefers_a_usable_system_pool(monkeypatch: pytest.MonkeyPatch, scratch: str) -> None:
    system = os.path.join(scratch, "sys")
    os.mkdir(system)
    os.chmod(system, 0o1777)
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", system)
    assert bgtask.default_pool().path == Path(system)
    assert _mode(system) == 0o1777


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may create the system pool")
def test_missing_system_pool_is_created_1777(monkeypatch: pytest.MonkeyPatch, scratch: str,
                                             umask0: None) -> None:
    system = os.path.join(scratch, "sys")
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", system)
    assert bgtask.default_pool().path == Path(system)
    _first_spawn(bgtask.default_pool())
    assert _mode(system) == 0o1777


def test_default_pool_falls_back_to_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch, scratch: str) -> None:
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", "/proc/no-such-dir/bgtask")  # not usable
    xdg = os.path.join(scratch, "xdg")
    os.mkdir(xdg, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    p = bgtask.default_pool()
    assert p.path == Path(xdg, "bgtask")
    _first_spawn(p)
    assert _mode(p.path) == 0o700


def test_default_pool_falls_back_to_tmp(monkeypatch: pytest.MonkeyPatch, scratch: str) -> None:
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", "/proc/no-such-dir/bgtask")
    monkeypatch.setattr(tempfile, "tempdir", scratch)
    p = bgtask.default_pool()
    assert p.path == Path(scratch, f"bgtask-{os.geteuid()}")
    _first_spawn(p)
    assert _mode(p.path) == 0o700


def test_per_user_default_directory_of_another_user_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                               scratch: str) -> None:
    """<tmp>/bgtask-<uid> could have been planted by someone else."""
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", "/proc/no-such-dir/bgtask")
    monkeypatch.setattr(tempfile, "tempdir", scratch)
    planted = os.path.join(scratch, f"bgtask-{os.geteuid()}")
    os.mkdir(planted, 0o777)
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a directory of another user")
    os.chown(planted, 65534, 65534)
    with pytest.raises(bgtask.AccessDeniedError):
        bgtask.default_pool()


# -- the files of a task -------------------------------------------------------------------------

def test_task_files_are_private_even_under_umask_0(pool: bgtask.TaskPool, umask0: None) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        for suffix in (".sock", ".token"):
            st = os.lstat(pool.path / f"{task.pid}{suffix}")
            assert stat.S_IMODE(st.st_mode) == 0o600, suffix
            assert st.st_uid == os.geteuid()
        assert stat.S_ISSOCK(os.lstat(pool.path / f"{task.pid}.sock").st_mode)
    finally:
        task.delete()
    assert sorted(n for n in os.listdir(pool.path) if not n.endswith(".lock") and not n.startswith(".tpl-")) == []


def test_pool_equality_and_pickle(pool: bgtask.TaskPool) -> None:
    import pickle

    again = bgtask.TaskPool(str(pool.path))
    assert again == pool and hash(again) == hash(pool)
    assert pickle.loads(pickle.dumps(pool)) == pool
    assert str(pool.path) in repr(pool)
