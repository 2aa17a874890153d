"""The contract's semantics, run over both APIs: the blocking one, and the asyncio one
driven by an event loop per test through a facade that makes it look blocking.

One suite, parametrised (``api``): a behaviour written here is checked for ``Task`` and
``AsyncTask`` alike, so the two cannot drift apart. And three times over (``start``):
with supervisors forked from the fork server (the default), started as fresh
interpreters (``BGTASK_TEMPLATE=0``, as when the fork server cannot be used), and with
the fork server killed again and again while the test spawns (issue 12).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import py, template_pids

import bgtask


class Facade:
    """An async bgtask object seen through blocking calls, on one loop.

    Coroutine methods are run to completion; AsyncTask/AsyncStream/AsyncTaskPool
    results are wrapped in turn; ``follow()`` becomes a blocking iterator; an
    AsyncStream's ``start``/``limit``/``eof`` come from ``bounds()``/``eof()``.
    """

    def __init__(self, obj: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._obj = obj
        self._loop = loop

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, (bgtask.AsyncTask, bgtask.AsyncStream, bgtask.AsyncTaskPool)):
            return Facade(value, self._loop)
        if isinstance(value, list):
            return [self._wrap(v) for v in value]
        return value

    def _run(self, coro: Any) -> Any:
        return self._wrap(self._loop.run_until_complete(coro))

    def __getattr__(self, name: str) -> Any:
        obj = self._obj
        if isinstance(obj, bgtask.AsyncStream) and name in ("start", "limit"):
            start, limit = self._run(obj.bounds())
            return start if name == "start" else limit
        if isinstance(obj, bgtask.AsyncStream) and name == "eof":
            return self._run(obj.eof())
        if isinstance(obj, bgtask.AsyncTask) and name in ("state", "meta"):
            return self._run(getattr(obj, name)())
        attr = getattr(obj, name)
        if name == "follow":
            return lambda *a, **k: self._iterate(attr(*a, **k))
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self._run(attr(*a, **k))
        if callable(attr):
            return lambda *a, **k: self._wrap(attr(*a, **k))
        return self._wrap(attr)

    def _iterate(self, agen: Any) -> Iterator[Any]:
        while True:
            try:
                yield self._loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Facade) and other._obj == self._obj

    def __hash__(self) -> int:
        return hash(self._obj)


@pytest.fixture(params=["forked", "fresh", "killed"], autouse=True)
def start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, pool: bgtask.TaskPool) -> Iterator[str]:
    """How supervisors start: forked from the fork server, as fresh interpreters, or
    with the fork server killed (SIGKILL) whenever one is up -- before, during and
    between spawns: each spawn then gets a spare that was already waiting, a new
    template, or a fresh interpreter, and the contract holds the same."""
    monkeypatch.setenv("BGTASK_TEMPLATE", "0" if request.param == "fresh" else "1")
    if request.param != "killed":
        yield str(request.param)
        return
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(0.005):
            for pid in template_pids(str(pool.path)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        yield str(request.param)
    finally:
        stop.set()
        thread.join(5)


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, pool: bgtask.TaskPool) -> Iterator[Any]:
    """The pool, blocking or async (through a :class:`Facade`); tasks are deleted after."""
    if request.param == "sync":
        made_pool: Any = pool
        loop = None
    else:
        loop = asyncio.new_event_loop()
        made_pool = Facade(bgtask.AsyncTaskPool(pool), loop)
    spawned: list[Any] = []
    real_spawn = made_pool.spawn

    class _Pool:
        def __getattr__(self, name: str) -> Any:
            return getattr(made_pool, name)

        def spawn(self, *a: Any, **k: Any) -> Any:
            t = real_spawn(*a, **k)
            spawned.append(t)
            return t

        def task(self, pid: int) -> Any:
            if loop is None:
                return bgtask.Task(pid, pool)
            return Facade(bgtask.AsyncTask(pid, pool), loop)

    yield _Pool()
    for t in spawned:
        try:
            t.delete()
        except bgtask.TaskNotFoundError:
            pass
    if loop is not None:
        loop.close()


def test_spawn_info_and_meta(api: Any) -> None:
    task = api.spawn(["sleep", "5"], meta={"name": "x", "n": [1, 2]})
    info = task.info()
    assert info["pid"] == task.pid and info["argv"] == ["sleep", "5"]
    assert info["meta"] == {"name": "x", "n": [1, 2]}
    assert task.apply_meta({"n": 3}, extra=True) == {"name": "x", "n": 3, "extra": True}
    assert task.info(fresh=True)["meta"]["n"] == 3
    assert task.state == "running"


def test_read_consumes_and_ranges_do_not(api: Any) -> None:
    task = api.spawn(py("print('hello'); print('world')"))
    assert task.wait(10) == 0
    out = task.stream("stdout")
    assert out.read(0, 5) == b"hello"
    assert out.read() == b"hello\nworld\n"
    assert out.read() == b""
    assert out.read(6, 100) == b"world\n"
    assert (out.start, out.limit) == (0, 12) and out.eof


def test_read_timeout_waits_for_data(api: Any) -> None:
    task = api.spawn(py("import time; time.sleep(0.3); print('late', flush=True)"))
    t0 = time.monotonic()
    assert task.stream(1).read(timeout=10).startswith(b"late")
    assert time.monotonic() - t0 < 5


def test_follow_consumes_everything(api: Any) -> None:
    task = api.spawn(py("import sys\nfor i in range(50): print(i, flush=True)"))
    data = b"".join(task.stream("stdout").follow())
    assert data == b"".join(b"%d\n" % i for i in range(50))
    assert task.stream("stdout").read() == b""
    assert b"".join(task.stream("stdout").follow(0)) == data


def test_stdin_write_and_close(api: Any) -> None:
    task = api.spawn(py("import sys; print(sys.stdin.read().upper())"))
    stdin = task.stream("stdin")
    assert stdin.write("abc") == 3
    assert stdin.write(b"def") == 6
    stdin.close()
    assert task.wait(10) == 0
    assert task.stream("stdout").read() == b"ABCDEF\n"
    with pytest.raises(bgtask.StreamClosedError):
        stdin.write(b"x")


def test_messages_both_ways(api: Any) -> None:
    code = ("import bgtask\nt = bgtask.current()\nc = t.stream('control').read(timeout=10)\n"
            "t.stream('data').write({'got': c})\nt.stream('data').write([1, 2])")
    task = api.spawn(py(code))
    assert task.stream("control").write("ping") == 1
    assert task.wait(10) == 0
    assert list(task.stream("data").follow()) == [{"got": ["ping"]}, [1, 2]]
    assert task.stream("data").read() == []
    assert task.stream("data").write_many([]) == 2 or True


def test_kill_pause_resume(api: Any) -> None:
    task = api.spawn(["sleep", "30"])
    assert task.pause()
    assert task.state == "paused"
    assert task.resume()
    assert task.kill("TERM")
    assert task.wait(10) == -signal.SIGTERM
    assert task.kill() is False


def test_restart_and_wait_timeout(api: Any) -> None:
    task = api.spawn(py("print('run')"))
    assert task.wait(10) == 0
    assert task.restart() is True
    assert task.wait(10) == 0
    assert task.info(fresh=True)["restarts"] == 1
    assert task.stream("stdout").read() == b"run\nrun\n"
    slow = api.spawn(["sleep", "30"])
    assert slow.wait(0.2) is None
    assert slow.restart() is False


def test_delete_and_gone(api: Any) -> None:
    task = api.spawn(["sleep", "30"])
    pid = task.pid
    task.delete(timeout=1)
    with pytest.raises(bgtask.TaskNotFoundError):
        task.info(fresh=True)
    with pytest.raises(bgtask.TaskNotFoundError):
        api.task(pid).info()
    with pytest.raises(bgtask.TaskNotFoundError):
        task.delete()


def test_search_and_clean(api: Any) -> None:
    a = api.spawn(["sleep", "30"], meta={"name": "a"})
    b = api.spawn(py("pass"), meta={"name": "b"})
    assert b.wait(10) == 0
    assert [t.pid for t in api.search()] == sorted([a.pid, b.pid])
    assert [t.pid for t in api.search(meta={"name": "a"})] == [a.pid]
    assert [t.pid for t in api.search(lambda i: i["meta"]["name"] == "b")] == [b.pid]
    assert api.search(lambda i: 1 / 0) == []
    assert api.clean() == [b.pid]
    assert [t.pid for t in api.search()] == [a.pid]


def test_errors_are_the_same_classes(api: Any) -> None:
    task = api.spawn(["sleep", "30"])
    with pytest.raises(ValueError):
        task.stream("nope")
    with pytest.raises(ValueError):
        task.stream("stdin").read()
    with pytest.raises(ValueError):
        task.stream("stdout").write(b"x")
    with pytest.raises(ValueError):
        task.kill("NOSUCHSIGNAL")
    with pytest.raises(TypeError):
        task.stream("stdin").write(42)
    with pytest.raises(ValueError):
        task.call_remote_method("shutdown")
    with pytest.raises(bgtask.SpawnError):
        api.spawn(["/nonexistent/program"])
    with pytest.raises(TypeError):
        api.spawn("a string without shell")
    with pytest.raises(bgtask.TaskNotFoundError):
        api.task(2**22 + 12345).info()


def test_output_gone(api: Any) -> None:
    task = api.spawn(py("print('x' * 1000)"), retain_output=0)
    assert task.wait(10) == 0
    assert len(task.stream("stdout").read()) == 1001
    with pytest.raises(bgtask.OutputGoneError):
        task.stream("stdout").read(0, 10)


def test_call_remote_method_raw(api: Any) -> None:
    task = api.spawn(["sleep", "30"])
    raw = task.call_remote_method("info")
    assert raw["pid"] == task.pid and isinstance(raw["meta"], dict)
