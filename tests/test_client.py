"""The client side: its bugs at their causes, the default pool's finding, the pool
backend seam and the library additions (``stop``, ``state``, ``meta``). Real processes,
no mocks."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import end_pool, pid_alive, processes_of_pool, py, wait_for

import bgtask
from bgtask import _paths
from bgtask._client import pool as _pool
from bgtask._client.backend import PoolBackend
from bgtask._client.local import LocalBackend


@pytest.fixture
def odd_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[bgtask.TaskPool]:
    """A pool whose path is not UTF-8 (byte 0xff), with the leak check of ``pool``."""
    path = os.fsdecode(tempfile.mkdtemp(prefix=b"bgt\xff", dir=b"/tmp"))
    monkeypatch.setenv("BGTASK_POOL", path)
    try:
        yield bgtask.TaskPool(path)
    finally:
        leftovers = end_pool(path)
        if leftovers:
            pytest.fail(f"processes outlived the test: {leftovers}")


def _kill_supervisor(task: bgtask.Task) -> int:
    """SIGKILL the supervisor of *task*; returns its job's pid (left running)."""
    job = task.info(fresh=True)["child_pid"]
    os.kill(task.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(task.pid))
    return int(job)


# -- a pool path that is not UTF-8 ---------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_pool_path_with_byte_0xff_can_be_searched_and_swept(odd_pool: bgtask.TaskPool) -> None:
    task = odd_pool.spawn(["sleep", "60"])
    assert [t.pid for t in odd_pool.search()] == [task.pid]
    job = _kill_supervisor(task)
    # No job recorded (the supervisor died between starting its job and recording it):
    # the sweep finds the job by the BGTASK_POOL in its environment, raw bytes and all.
    fd = _paths.open_private(_paths.token_path(str(odd_pool.path), task.pid), os.O_RDWR)
    try:
        _paths.write_job_record(fd, None, None)
    finally:
        os.close(fd)
    assert odd_pool.search() == []
    assert odd_pool.search() == [], "and again: nothing is left to break it"
    wait_for(lambda: not pid_alive(job))
    assert not os.path.exists(_paths.sock_path(str(odd_pool.path), task.pid))


# -- values that share their parts ---------------------------------------------------------------

def _dag(levels: int = 30) -> object:
    x: object = 0
    for _ in range(levels):
        x = [x, x]  # 31 lists, 2**30 paths from the top
    return x


@pytest.mark.timeout(20)
def test_a_value_with_shared_references_is_sent_at_once(spawn: object) -> None:
    task = spawn(py("import time; time.sleep(60)"))  # type: ignore[operator]
    dag = _dag()
    t0 = time.monotonic()
    task.stream("control").write(dag)
    _assert_dag(task.apply_meta(dag=dag)["dag"])
    [got] = task.stream("control").read(0)
    _assert_dag(got)
    assert time.monotonic() - t0 < 5


def _assert_dag(value: object, levels: int = 30) -> None:
    # not ``== _dag()``: comparing two copies walks all 2**30 paths
    for _ in range(levels):
        assert type(value) is list and len(value) == 2 and value[0] is value[1]
        value = value[0]
    assert value == 0


# -- write_many ----------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_write_many_over_16_mib_has_no_other_writer_between_its_messages(spawn: object) -> None:
    task = spawn(py("import time; time.sleep(60)"))  # type: ignore[operator]
    data = task.stream("data")
    big = [("many", i, b"x" * (1 << 20)) for i in range(24)]  # 24 MiB
    stop = threading.Event()

    def other_writer() -> None:
        other = bgtask.Task(task.pid, task.pool).stream("data")
        while not stop.is_set():
            other.write(("other", 0, b""))

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        time.sleep(0.05)
        data.write_many(big)
    finally:
        stop.set()
        writer.join(20)
    got = [m[:2] for m in data.read()]
    first = got.index(("many", 0))
    assert got[first:first + len(big)] == [("many", i) for i in range(len(big))]


# -- arguments checked before anything starts ----------------------------------------------------

def test_a_nul_in_cwd_raises_before_anything_starts(scratch_pool: str) -> None:
    pool = bgtask.TaskPool(scratch_pool)
    with pytest.raises(ValueError, match="NUL"):
        pool.spawn(["true"], cwd="/tmp\0/x")
    assert not os.path.exists(scratch_pool), "not even the pool directory was made"
    assert processes_of_pool(scratch_pool) == []


def test_streams_check_their_arguments(spawn: object) -> None:
    task = spawn(["sleep", "30"])  # type: ignore[operator]
    assert bgtask.Stream(task, 1).name == "stdout"
    assert bgtask.Stream(task, "control").is_messages
    with pytest.raises(ValueError):
        bgtask.Stream(task, "stdmiddle")
    with pytest.raises(TypeError):
        bgtask.Stream(task.pid, "stdout")  # type: ignore[arg-type]


# -- a supervisor killed by SIGKILL --------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_killed_supervisor_is_reported_as_such_and_its_job_stopped(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    job = _kill_supervisor(task)
    with pytest.raises(bgtask.TaskNotFoundError, match="supervisor died.*job was stopped") as ei:
        bgtask.Task(task.pid, pool).info()
    assert ei.value.args[0].startswith(f"task {task.pid} is gone")
    wait_for(lambda: not pid_alive(job))
    # the evidence is gone with it: now it is a task like any other that does not exist
    with pytest.raises(bgtask.TaskNotFoundError, match=f"no task {task.pid}"):
        bgtask.Task(task.pid, pool).info()


# -- reading never creates a pool ----------------------------------------------------------------

@pytest.fixture
def scratch_pool() -> Iterator[str]:
    """A path for a pool that does not exist yet (under a short scratch directory)."""
    base = tempfile.mkdtemp(prefix="bgs", dir="/tmp")
    path = os.path.join(base, "deep", "x")
    try:
        yield path
    finally:
        leftovers = end_pool(path)
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        if leftovers:
            pytest.fail(f"processes outlived the test: {leftovers}")


def test_read_only_commands_never_create_a_pool(scratch_pool: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bgtask.cli import main

    assert main(["--pool", scratch_pool, "ls"]) == 0
    assert main(["--pool", scratch_pool, "clean"]) == 0
    assert main(["--pool", scratch_pool, "info", "4242"]) != 0
    pool = bgtask.TaskPool(scratch_pool)
    assert pool.search() == [] and pool.clean() == []
    assert "0 tasks" in repr(pool)
    assert not os.path.exists(os.path.dirname(scratch_pool)), "nothing was created"
    capsys.readouterr()


# -- the default pool finds tasks wherever the default could have put them -------------------------

@pytest.fixture
def places(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Redirected default places: a system pool, a tmp dir and an XDG dir, all missing."""
    base = tempfile.mkdtemp(prefix="bgd", dir="/tmp")
    # the system pool's parent is missing too: not usable, not even by root, until made
    where = {"system": os.path.join(base, "run", "sys"), "tmp": os.path.join(base, "tmp"),
             "xdg": os.path.join(base, "xdg")}
    os.mkdir(where["tmp"], 0o700)
    os.mkdir(where["xdg"], 0o700)
    monkeypatch.delenv("BGTASK_POOL", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(_pool, "SYSTEM_POOL", where["system"])
    monkeypatch.setattr(tempfile, "tempdir", where["tmp"])
    try:
        yield where
    finally:
        leftovers = []
        for sub in ("tmp", "xdg"):
            for d in (where["system"], os.path.join(where[sub], "bgtask"),
                      os.path.join(where[sub], f"bgtask-{os.geteuid()}")):
                leftovers += end_pool(d) if os.path.isdir(d) else []
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        if leftovers:
            pytest.fail(f"processes outlived the test: {leftovers}")


@pytest.mark.timeout(30)
def test_the_default_pool_finds_a_task_after_the_system_pool_appeared(places: dict[str, str]) -> None:
    task = bgtask.spawn(["sleep", "60"])  # no system pool yet: the per-user one in tmp
    try:
        assert task.pool.path == Path(places["tmp"], f"bgtask-{os.geteuid()}")
        os.makedirs(places["system"])
        os.chmod(places["system"], 0o1777)  # root made /var/run/bgtask later
        assert bgtask.default_pool().path == Path(places["system"])
        assert [t.pid for t in bgtask.search()] == [task.pid]
        assert bgtask.Task(task.pid).info()["pid"] == task.pid
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_the_default_pool_finds_a_task_whatever_xdg_runtime_dir_says(
        places: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    task = bgtask.spawn(["sleep", "60"])  # no XDG_RUNTIME_DIR (cron): tmp
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", places["xdg"])  # a login shell has one
        assert bgtask.default_pool().path == Path(places["xdg"], "bgtask")
        assert [t.pid for t in bgtask.search()] == [task.pid]
        assert bgtask.Task(task.pid).info()["pid"] == task.pid
        assert not os.path.exists(Path(places["xdg"], "bgtask")), "finding creates nothing"
    finally:
        task.delete()


def test_an_explicit_bgtask_pool_is_the_only_place(pool: bgtask.TaskPool) -> None:
    assert [str(pool.path)] == [str(pool.backend)]
    with pytest.raises(bgtask.TaskNotFoundError, match=r"no task 4242 in pool \S+$"):
        bgtask.Task(4242).info()


# -- the backend seam ----------------------------------------------------------------------------

def test_the_local_backend_implements_the_pool_backend(pool: bgtask.TaskPool) -> None:
    backend: PoolBackend = pool.backend
    assert isinstance(backend, LocalBackend)
    for name in ("check", "pids", "connect", "sweep", "job_env", "default_cwd", "spawn",
                 "start_time", "wait_gone"):
        assert callable(getattr(backend, name)), name
    assert backend.job_env({"A": "1", "HOME": None})["BGTASK_POOL"] == str(pool.path)
    assert "HOME" not in backend.job_env({"HOME": None})


# -- stop, state, meta ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_stop_escalates_to_kill_and_keeps_the_task(spawn: object) -> None:
    task = spawn(py("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # type: ignore[operator]
                    "sys.stdout.write('up\\n'); sys.stdout.flush()\ntime.sleep(60)"))
    assert task.stream("stdout").read(timeout=10) == b"up\n"
    t0 = time.monotonic()
    assert task.stop(timeout=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    assert task.state == "exited"
    assert task.stop() == -signal.SIGKILL, "a stopped job: the last run's returncode"
    assert task.stream("stdout").read(0) == b"up\n", "the output stays"


def test_state_and_meta_are_fresh_while_info_is_cached(spawn: object) -> None:
    task = spawn(["sleep", "30"], meta={"name": "n"})  # type: ignore[operator]
    assert task.info()["meta"] == {"name": "n"}
    assert task.state == "running"
    bgtask.Task(task.pid, task.pool).apply_meta(step=2)  # another handle
    assert task.meta == {"name": "n", "step": 2}
    task.pause()
    assert task.state == "paused"
    task.resume()
    with pytest.raises(ValueError):
        task.stop(timeout=-1)
