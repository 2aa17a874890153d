"""Bad input at every public entry point: wrong types, negative or huge sizes, unknown
names, closed streams, a deleted task, non-UTF-8 bytes, enormous meta, unpicklable
objects. Each raises the documented exception in the caller -- a caller's mistake is a
``ValueError``/``TypeError`` raised before anything is sent -- and the supervisor keeps
serving other clients.

Most cases share one task (a ``cat``, so that stdin comes back on stdout) in a pool of
this module; after every case a second handle checks that the supervisor still serves.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import kill_all, processes_of_pool, py, wait_for

import bgtask

pytestmark = pytest.mark.timeout(30)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


class Shared:
    def __init__(self, pool: bgtask.TaskPool, task: bgtask.Task) -> None:
        self.pool = pool
        self.task = task
        self.witness = bgtask.Task(task.pid, pool)


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    path = tempfile.mkdtemp(prefix="bgb", dir="/tmp")
    pool = bgtask.TaskPool(path)
    task = pool.spawn(["cat"], meta={"name": "victim"})
    try:
        yield Shared(pool, task)
    finally:
        try:
            task.delete()
        finally:
            left = processes_of_pool(path)
            kill_all([pid for pid, _ in left])
            shutil.rmtree(path, ignore_errors=True)
            assert not left, f"processes outlived the tests: {left}"


def still_serving(s: Shared) -> None:
    info = s.witness.info(fresh=True)
    assert info["status"]["running"] is True and info["meta"]["name"] == "victim"
    # Status records (<pid>.info) and the fork server's files (.tpl-*) are not a task's.
    files = sorted(n for n in os.listdir(s.pool.path)
                   if not n.endswith((".lock", ".info")) and not n.startswith(".tpl-"))
    assert files == sorted([f"{s.task.pid}.sock", f"{s.task.pid}.token"]), "a bad spawn left files"


def _a_file() -> str:
    fd, path = tempfile.mkstemp(prefix="bgbad")
    os.close(fd)
    return path


NOT_EXECUTABLE = _a_file()

Case = Callable[[Shared], Any]
CASES: list[Any] = []


def case(exc: type[BaseException] | tuple[type[BaseException], ...], id: str) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        CASES.append(pytest.param(fn, exc, id=id))
        return fn
    return deco


def spawn(**kw: Any) -> Case:
    argv = kw.pop("argv", ["true"])
    return lambda s: s.pool.spawn(argv, **kw)


def add(exc: Any, id: str, fn: Case) -> None:
    CASES.append(pytest.param(fn, exc, id=id))


# -- spawn ---------------------------------------------------------------------------------------------

for _id, _argv, _kw, _exc in [
    ("argv-none", None, {}, TypeError),
    ("argv-int", 123, {}, TypeError),
    ("argv-bytes", b"true", {}, TypeError),
    ("argv-str-without-shell", "true", {}, TypeError),
    ("argv-list-with-shell", ["true"], {"shell": True}, TypeError),
    ("argv-int-item", [1], {}, TypeError),
    ("argv-none-item", ["true", None], {}, TypeError),
    ("argv-bytes-item", ["true", b"x"], {}, TypeError),
    ("argv-dict", {"true": 1}, {}, TypeError),
    ("argv-empty", [], {}, ValueError),
    ("argv-empty-program", [""], {}, ValueError),
    ("argv-nul", ["true", "a\0b"], {}, ValueError),
    ("shell-not-bool", "true", {"shell": "yes"}, TypeError),
    ("env-str", ["true"], {"env": "A=1"}, TypeError),
    ("env-int-value", ["true"], {"env": {"A": 1}}, TypeError),
    ("env-bytes-value", ["true"], {"env": {"A": b"1"}}, TypeError),
    ("env-int-name", ["true"], {"env": {1: "x"}}, ValueError),
    ("env-empty-name", ["true"], {"env": {"": "x"}}, ValueError),
    ("env-name-with-equals", ["true"], {"env": {"A=B": "x"}}, ValueError),
    ("env-value-nul", ["true"], {"env": {"A": "x\0y"}}, (TypeError, ValueError)),
    ("cwd-int", ["true"], {"cwd": 123}, TypeError),
    ("cwd-missing", ["true"], {"cwd": "/nonexistent/bgtask/dir"}, bgtask.SpawnError),
    ("cwd-a-file", ["true"], {"cwd": NOT_EXECUTABLE}, bgtask.SpawnError),
    ("program-missing", ["/nonexistent/program"], {}, bgtask.SpawnError),
    ("program-not-in-path", ["no-such-program-bgtask"], {}, bgtask.SpawnError),
    ("program-not-executable", [NOT_EXECUTABLE], {}, bgtask.SpawnError),
    ("program-a-directory", ["/tmp"], {}, bgtask.SpawnError),
    ("retain-negative", ["true"], {"retain_output": -1}, ValueError),
    ("retain-str", ["true"], {"retain_output": "1"}, TypeError),
    ("retain-float", ["true"], {"retain_output": 1.5}, TypeError),
    ("retain-bool", ["true"], {"retain_output": True}, TypeError),
    ("max-buffer-zero", ["true"], {"max_buffer": 0}, ValueError),
    ("max-buffer-negative", ["true"], {"max_buffer": -(2**70)}, ValueError),
    ("max-buffer-none", ["true"], {"max_buffer": None}, TypeError),
    ("on-full-unknown", ["true"], {"on_full": "explode"}, ValueError),
    ("on-full-none", ["true"], {"on_full": None}, ValueError),
    ("lock-path", ["true"], {"lock": "../etc/passwd"}, ValueError),
    ("lock-empty", ["true"], {"lock": ""}, ValueError),
    ("lock-long", ["true"], {"lock": "x" * 101}, ValueError),
    ("lock-int", ["true"], {"lock": 5}, TypeError),
    ("meta-list", ["true"], {"meta": [1, 2]}, TypeError),
    ("meta-str", ["true"], {"meta": "name"}, TypeError),
    ("meta-int-key", ["true"], {"meta": {1: "x"}}, TypeError),
    ("meta-unpicklable", ["true"], {"meta": {"k": Unpicklable()}}, TypeError),
    ("meta-generator", ["true"], {"meta": {"k": (i for i in range(3))}}, TypeError),
    ("unknown-option", ["true"], {"stdout": "/dev/null"}, TypeError),
]:
    add(_exc, "spawn-" + _id, lambda s, a=_argv, k=_kw: s.pool.spawn(a, **k))

# -- pools and handles --------------------------------------------------------------------------------

add(TypeError, "pool-int", lambda s: bgtask.TaskPool(123))  # type: ignore[arg-type]
add(ValueError, "pool-too-long", lambda s: bgtask.TaskPool("/tmp/" + "x" * 200))
add(NotADirectoryError, "pool-a-file", lambda s: bgtask.TaskPool(NOT_EXECUTABLE))
add(TypeError, "search-where-not-callable", lambda s: s.pool.search(where=5))
add(TypeError, "task-str", lambda s: bgtask.Task("1", s.pool))  # type: ignore[arg-type]
add(TypeError, "task-float", lambda s: bgtask.Task(1.0, s.pool))  # type: ignore[arg-type]
add(TypeError, "task-bool", lambda s: bgtask.Task(True, s.pool))
add(ValueError, "task-zero", lambda s: bgtask.Task(0, s.pool))
add(ValueError, "task-negative", lambda s: bgtask.Task(-5, s.pool))
add(TypeError, "task-pool-str", lambda s: bgtask.Task(1, "/tmp"))  # type: ignore[arg-type]
add(bgtask.TaskNotFoundError, "task-huge-pid", lambda s: bgtask.Task(2**70, s.pool).info())
add(bgtask.TaskNotFoundError, "task-unknown", lambda s: bgtask.Task(4194303, s.pool).info())
add(bgtask.TaskNotFoundError, "task-unrelated-process", lambda s: bgtask.Task(os.getpid(), s.pool).info())
add(bgtask.TaskNotFoundError, "task-unknown-delete", lambda s: bgtask.Task(4194303, s.pool).delete())
add(bgtask.TaskNotFoundError, "task-unknown-read", lambda s: bgtask.Task(4194303, s.pool).stream(1).read())

# -- streams --------------------------------------------------------------------------------------------

for _id, _which, _exc in [("name", "bogus", ValueError), ("upper", "STDOUT", ValueError),
                          ("number", 3, ValueError), ("negative", -1, ValueError),
                          ("none", None, TypeError), ("float", 1.0, TypeError),
                          ("bool", True, TypeError), ("bytes", b"stdout", TypeError)]:
    add(_exc, "stream-" + _id, lambda s, w=_which: s.task.stream(w))


def out(s: Shared) -> bgtask.Stream:
    return s.task.stream("stdout")


for _id, _args, _kw, _exc in [
    ("start-negative", (-1,), {}, ValueError),
    ("start-str", ("0",), {}, TypeError),
    ("start-float", (1.5,), {}, TypeError),
    ("start-bool", (True,), {}, TypeError),
    ("end-negative", (0, -1), {}, ValueError),
    ("end-before-start", (10, 5), {}, ValueError),
    ("end-without-start", (), {"end": 5}, ValueError),
    ("timeout-negative", (), {"timeout": -1}, ValueError),
    ("timeout-str", (), {"timeout": "1"}, TypeError),
    ("timeout-nan", (), {"timeout": math.nan}, ValueError),
    ("timeout-inf", (), {"timeout": math.inf}, ValueError),
    ("timeout-huge", (), {"timeout": 1e300}, ValueError),
]:
    add(_exc, "read-" + _id, lambda s, a=_args, k=_kw: out(s).read(*a, **k))

add(ValueError, "read-stdin", lambda s: s.task.stream("stdin").read())
add(ValueError, "follow-stdin", lambda s: next(s.task.stream("stdin").follow()))
add(ValueError, "follow-negative", lambda s: next(out(s).follow(-1)))
add(ValueError, "write-stdout", lambda s: out(s).write(b"x"))
add(ValueError, "write-stderr", lambda s: s.task.stream(2).write("x"))
add(TypeError, "write-int", lambda s: s.task.stream(0).write(123))
add(TypeError, "write-none", lambda s: s.task.stream(0).write(None))
add(TypeError, "write-list", lambda s: s.task.stream(0).write([b"x"]))
add(UnicodeEncodeError, "write-lone-surrogate", lambda s: s.task.stream(0).write("\udcff"))
add(ValueError, "write-timeout-negative", lambda s: s.task.stream(0).write(b"x", timeout=-1))
add(TypeError, "write-timeout-str", lambda s: s.task.stream(0).write(b"x", timeout="1"))
add(ValueError, "write-timeout-inf", lambda s: s.task.stream(0).write(b"x", timeout=math.inf))
add(TypeError, "message-unpicklable", lambda s: s.task.stream("data").write(Unpicklable()))
add(TypeError, "message-unpicklable-in-a-list", lambda s: s.task.stream("control").write(
    [threading.Lock(), Unpicklable()]))
add(ValueError, "close-stdout", lambda s: out(s).close())
add(ValueError, "close-data", lambda s: s.task.stream("data").close())

# -- control -----------------------------------------------------------------------------------------------

for _id, _sig, _exc in [("name", "BOGUS", ValueError), ("number", 9999, ValueError),
                        ("negative", -1, ValueError), ("zero", 0, ValueError),
                        ("sig-ign", "SIG_IGN", ValueError), ("float", 1.5, TypeError),
                        ("none", None, TypeError), ("bool", True, TypeError),
                        ("list", [9], TypeError)]:
    add(_exc, "kill-" + _id, lambda s, g=_sig: s.task.kill(g))

for _id, _t, _exc in [("negative", -1, ValueError), ("str", "1", TypeError), ("bool", True, TypeError),
                      ("nan", math.nan, ValueError), ("inf", math.inf, ValueError)]:
    add(_exc, "wait-" + _id, lambda s, t=_t: s.task.wait(t))
    add((ValueError, TypeError), "delete-" + _id, lambda s, t=_t: s.task.delete(t))

add(TypeError, "meta-not-a-mapping", lambda s: s.task.apply_meta(5))  # type: ignore[arg-type]
add(TypeError, "meta-pairs", lambda s: s.task.apply_meta([("a", 1)]))  # type: ignore[arg-type]
add(TypeError, "meta-int-key-update", lambda s: s.task.apply_meta({1: 2}))  # type: ignore[dict-item]
add(TypeError, "meta-unpicklable-update", lambda s: s.task.apply_meta(x=Unpicklable()))
add(ValueError, "remote-unknown", lambda s: s.task.call_remote_method("nope"))
add(ValueError, "remote-private", lambda s: s.task.call_remote_method("_end_run"))
add(ValueError, "remote-dunder", lambda s: s.task.call_remote_method("__init__"))

# raw wire values: refused by the supervisor, raised in the caller
for _id, _m, _args, _exc in [
    ("apply-meta-str", "apply_meta", ("x",), TypeError),
    ("apply-meta-not-blobs", "apply_meta", ({"k": "not bytes"},), TypeError),
    ("stream-read-unknown", "stream_read", ("nope", None, None, False, 0), ValueError),
    ("stream-read-negative", "stream_read", ("stdout", -1, None, False, 0), ValueError),
    ("stream-read-timeout-str", "stream_read", ("stdout", None, None, False, "x"), TypeError),
    ("stream-read-timeout-nan", "stream_read", ("stdout", None, None, False, math.nan), ValueError),
    ("stream-read-timeout-inf", "stream_read", ("stdout", None, None, False, math.inf), ValueError),
    ("stream-read-max-bytes", "stream_read", ("stdout", None, None, True, 0, 0), ValueError),
    ("stream-write-str", "stream_write", ("stdin", "str"), TypeError),
    ("stream-write-stdout", "stream_write", ("stdout", b"x"), ValueError),
    ("stream-write-timeout-inf", "stream_write", ("stdin", b"", math.inf), ValueError),
    ("stream-close-stdout", "stream_close", ("stdout",), ValueError),
    ("putback-stdout", "stream_putback", ("stdout", [b"x"], 0), ValueError),
    ("putback-not-blobs", "stream_putback", ("data", ["x"], 0), TypeError),
    ("putback-offset-str", "stream_putback", ("data", [b"x"], "0"), TypeError),
    ("kill-str", "kill", ("9",), TypeError),
    ("kill-unknown", "kill", (99999,), ValueError),
    ("info-extra-args", "info", (1, 2), TypeError),
    ("wait-str", "wait", ("x",), TypeError),
    ("wait-inf", "wait", (math.inf,), ValueError),
    ("delete-negative", "delete", (-1,), ValueError),
    ("delete-nan", "delete", (math.nan,), ValueError),
    ("delete-inf", "delete", (math.inf,), ValueError),
    ("restart-args", "restart", (1,), TypeError),
]:
    add(_exc, "raw-" + _id, lambda s, m=_m, a=_args: s.task.call_remote_method(m, *a))


@pytest.mark.parametrize(("call", "exc"), CASES)
def test_bad_input_raises_in_the_caller_and_the_supervisor_serves_on(shared: Shared, call: Case,
                                                                     exc: Any) -> None:
    with pytest.raises(exc):
        result = call(shared)
        if isinstance(result, bgtask.Task):  # it should not have started
            result.delete()
    still_serving(shared)


# -- huge, but legal ---------------------------------------------------------------------------------------

def test_huge_sizes_that_are_legal(shared: Shared) -> None:
    task, o = shared.task, shared.task.stream("stdout")
    assert o.read(0, 2**100) == o.read(o.start, 2**100)  # end past the limit: cut at it
    assert o.read(2**62) == b""  # past the limit: nothing (yet)
    assert o.read(2**70, 2**71) == b""
    t = shared.pool.spawn(["true"], max_buffer=2**80, retain_output=2**70)
    try:
        assert t.wait(timeout=10) == 0
        assert t.info()["streams"]["stdout"]["max_buffer"] == 2**80
    finally:
        t.delete()
    # 5 MiB through stdin and back (cat), in one write
    data = os.urandom(5 << 20)
    assert task.stream("stdin").write(data, timeout=30) >= len(data)
    got = bytearray()
    deadline = time.monotonic() + 20
    while len(got) < len(data) and time.monotonic() < deadline:
        got += o.read(timeout=5)
    assert bytes(got) == data
    still_serving(shared)


def test_a_long_timeout_is_fine(shared: Shared) -> None:
    """A timeout of a month does not overflow anything on either side (poll() takes at
    most ~24 days in milliseconds)."""
    o = shared.task.stream("stdout")
    task = shared.task
    result: dict[str, Any] = {}

    def reader() -> None:
        try:
            result["data"] = o.read(timeout=31 * 86400.0)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)
    task.stream("stdin").write(b"wake up\n")
    t.join(10)
    assert result == {"data": b"wake up\n"}
    still_serving(shared)


def test_enormous_meta_and_messages(shared: Shared) -> None:
    big = os.urandom(24 << 20)
    meta = shared.task.apply_meta(big=big)
    assert meta["big"] == big and meta["name"] == "victim"
    assert bgtask.Task(shared.task.pid, shared.pool).info(fresh=True)["meta"]["big"] == big
    shared.task.apply_meta(big=None)
    many = {f"k{i}": i for i in range(5000)}
    assert len(shared.task.apply_meta(many)) >= 5001
    shared.task.stream("control").write(big)
    assert shared.task.stream("control").read() == [big]
    still_serving(shared)


def test_non_utf8_everywhere(pool: bgtask.TaskPool) -> None:
    raw = bytes(range(256)) * 4
    # argv and env values that are not UTF-8 (surrogate escapes, as os.fsdecode gives)
    arg = os.fsdecode(b"\xff\xfeA")
    task = pool.spawn(["sh", "-c", 'printf "%s|%s" "$1" "$X"; cat', "sh", arg],
                      env={"X": os.fsdecode(b"\xc3\x28")}, meta={"raw": raw, os.fsdecode(b"k\xff"): 1})
    try:
        task.stream("stdin").write(raw)
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"\xff\xfeA|\xc3\x28" + raw
        info = bgtask.Task(task.pid, pool).info()
        assert info["argv"][-1] == arg
        assert info["meta"] == {"raw": raw, os.fsdecode(b"k\xff"): 1}
        task.stream("data").write(raw.decode("latin-1"))
        assert task.stream("data").read() == [raw.decode("latin-1")]
    finally:
        task.delete()


# -- closed streams, a deleted task ------------------------------------------------------------------------

def test_closed_stdin_and_ended_job(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys, time; sys.stdout.write(sys.stdin.read()); time.sleep(0.3)"))
    try:
        stdin = task.stream("stdin")
        stdin.write(b"abc")
        stdin.close()
        stdin.close()  # closing twice is fine
        with pytest.raises(bgtask.StreamClosedError):
            stdin.write(b"more")
        assert stdin.eof is True
        assert task.wait(timeout=10) == 0
        with pytest.raises(bgtask.StreamClosedError):
            stdin.write("after the end")
        o = task.stream("stdout")
        assert o.read() == b"abc"
        t0 = time.monotonic()
        assert o.read(timeout=10) == b""  # at the end of the stream: returns at once
        assert list(o.follow()) == []
        assert task.stream("data").read(timeout=10) == []
        assert time.monotonic() - t0 < 2
        assert o.eof is True
        assert task.kill() is False
        assert task.restart() is True  # a new run opens a new stdin
        stdin.write(b"again")
        stdin.close()
        assert task.wait(timeout=10) == 0
        assert o.read() == b"again"
    finally:
        task.delete()


def test_every_call_on_a_deleted_task_raises_task_not_found(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    stream = task.stream("stdout")
    other = bgtask.Task(task.pid, pool)
    other.info()  # connected before the delete
    task.delete()
    calls: list[Callable[[], Any]] = [
        lambda: task.info(fresh=True), lambda: other.info(fresh=True), lambda: task.apply_meta(a=1),
        lambda: stream.read(), lambda: stream.read(0, 10), lambda: stream.start, lambda: stream.eof,
        lambda: next(stream.follow()), lambda: task.stream("stdin").write(b"x"),
        lambda: task.stream("stdin").close(), lambda: task.stream("data").write(1),
        lambda: task.kill(), lambda: task.pause(), lambda: task.resume(), lambda: task.restart(),
        lambda: task.wait(), lambda: task.wait(1), lambda: task.delete(), lambda: other.delete(),
        lambda: task.call_remote_method("info"), lambda: task.connect(),
    ]
    for call in calls:
        with pytest.raises(bgtask.TaskNotFoundError):
            call()
    reason: dict[str, Any] = {}
    assert task.connect(fail_reason=reason) is False and reason["type"] == "TaskNotFoundError"
    assert pool.search() == []
    assert "gone" in repr(task)


def test_a_task_deleted_by_someone_else_during_a_call(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    results: dict[str, BaseException | None] = {}

    def call(name: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
            results[name] = None
        except BaseException as exc:  # noqa: BLE001
            results[name] = exc

    threads = [threading.Thread(target=call, args=(n, f)) for n, f in [
        ("read", lambda: bgtask.Task(task.pid, pool).stream("stdout").read(timeout=20)),
        ("wait", lambda: bgtask.Task(task.pid, pool).wait()),
        ("write", lambda: bgtask.Task(task.pid, pool).stream("stdin").write(b"x" * (4 << 20))),
    ]]
    for t in threads:
        t.start()
    time.sleep(0.3)
    bgtask.Task(task.pid, pool).delete()  # by someone else (a signal by hand is forwarded)
    for t in threads:
        t.join(10)
    # Each got an answer (end of stream, the exit code, stdin closed) or learned that the
    # task is gone -- nobody hangs, nothing else is raised.
    assert isinstance(results["read"], (type(None), bgtask.TaskNotFoundError)), results
    assert isinstance(results["wait"], (type(None), bgtask.TaskNotFoundError)), results
    assert isinstance(results["write"], (bgtask.StreamClosedError, bgtask.TaskNotFoundError)), results
    wait_for(lambda: not os.path.exists(pool.path / f"{task.pid}.sock"))


def test_search_patterns_that_match_nothing(shared: Shared) -> None:
    pool = shared.pool
    assert pool.search(nosuchkey=1) == []
    assert pool.search(meta=object()) == []
    assert pool.search(status="running") == []
    assert pool.search(meta={"name": ["victim"]}) == []
    assert pool.search(where=lambda info: 1 / 0) == []
    assert pool.search(where=lambda info: info["nope"]) == []
    assert pool.search(meta={"name": "victim"}) == [shared.task]
    still_serving(shared)


def teardown_module() -> None:
    os.unlink(NOT_EXECUTABLE)
