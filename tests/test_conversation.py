"""Talking to a running job: stdin, the ``data`` and ``control`` message streams,
``bgtask.current()`` inside the job, and what a restart keeps.

Every job here is a real process; where the contract says "any client process", the
client is a separate Python process too, not just this one.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dill
import pytest
from helpers import PY, REPO, Point, child_result, py, start_in_child, wait_for

import bgtask

#: added to a job's environment, so that ``import bgtask`` works inside it.
JOB_ENV = {"PYTHONPATH": REPO}
#: for jobs that decode objects of the tests' modules (``helpers.Point``, a lambda written
#: here): dill pickles them by reference to the module, which must be importable there.
SHARED_ENV = {"PYTHONPATH": os.pathsep.join([REPO, str(Path(__file__).resolve().parent)])}
DOC = Path(REPO) / "README.rst"


def job(pool: bgtask.TaskPool, code: str, **kw: Any) -> bgtask.Task:
    """Spawn a Python job that can ``import bgtask``."""
    env = dict(JOB_ENV, **kw.pop("env", {}))
    return pool.spawn(py(code), env=env, **kw)


def client_env(pool: bgtask.TaskPool) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO, BGTASK_POOL=str(pool.path))


def run_client(pool: bgtask.TaskPool, code: str, timeout: float = 20.0, **kw: Any) -> str:
    """Run *code* in a separate client process (same user, same pool); its stdout."""
    proc = subprocess.run([PY, "-c", code], env=client_env(pool), capture_output=True,
                          text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- 3. the job's own handle -------------------------------------------------------------------------

def test_current_is_none_outside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGTASK_PID", raising=False)
    monkeypatch.setenv("BGTASK_POOL", "/tmp")
    assert bgtask.current() is None  # BGTASK_POOL alone is no job
    monkeypatch.setenv("BGTASK_PID", "12345")
    monkeypatch.delenv("BGTASK_POOL")
    assert bgtask.current() is None
    monkeypatch.setenv("BGTASK_POOL", "/tmp")
    monkeypatch.setenv("BGTASK_PID", "not-a-pid")
    assert bgtask.current() is None


@pytest.mark.timeout(30)
def test_current_inside_the_job_and_its_descendants(pool: bgtask.TaskPool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller looks like a job itself (a job spawning a job): the new job must get its
    # own supervisor's pid, not the caller's.
    monkeypatch.setenv("BGTASK_PID", "1")
    code = r"""
import os, subprocess, sys
import bgtask
me = bgtask.current()
assert me is bgtask.current()
data = me.stream("data")
data.write({"env": (os.environ["BGTASK_PID"], os.environ["BGTASK_POOL"]),
            "task": (me.pid, str(me.pool.path))})
me.apply_meta(progress=0.5)
# a grandchild (not a bgtask job of its own) inherits the same handle
grandchild = "import bgtask; me = bgtask.current(); me.stream('data').write(('grandchild', me.pid)); me.apply_meta(by_grandchild=True)"
subprocess.run([sys.executable, "-c", grandchild], check=True)
subprocess.run(["sh", "-c", 'echo "shell grandchild $BGTASK_PID"'], check=True)
# a sub-job spawned from inside the job lands in the same pool with a handle of its own
sub = bgtask.spawn([sys.executable, "-c", "import bgtask; t = bgtask.current(); print(t.pid, t.pool.path)"])
sub.wait(10)
data.write(("sub", sub.pid, sub.pool.path == me.pool.path, sub.stream("stdout").read().decode()))
sub.delete()
# a forked child may use the handle it inherited: it gets a connection of its own
pid = os.fork()
if pid == 0:
    me.stream("data").write(("forked", os.getpid()))
    os._exit(0)
os.waitpid(pid, 0)
data.write(("parent", me.stream("data").limit))
"""
    task = job(pool, code)
    try:
        assert task.wait(timeout=20) == 0, task.stream("stderr").read()
        first, grand, sub, forked, parent = task.stream("data").read()
        assert first["env"] == (str(task.pid), str(pool.path))
        assert first["task"] == (task.pid, str(pool.path))
        assert grand == ("grandchild", task.pid)
        assert task.info(fresh=True)["meta"] == {"progress": 0.5, "by_grandchild": True}
        assert task.stream("stdout").read() == f"shell grandchild {task.pid}\n".encode()
        _, sub_pid, same_pool, sub_out = sub
        assert same_pool and sub_pid != task.pid
        assert sub_out == f"{sub_pid} {pool.path}\n"
        assert forked[0] == "forked" and parent == ("parent", 4)
    finally:
        task.delete()


# -- checks: progress, steering ---------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_job_reports_progress_through_meta_and_data_while_a_client_reads(pool: bgtask.TaskPool) -> None:
    code = r"""
import time
import bgtask
me = bgtask.current()
data, control = me.stream("data"), me.stream("control")
me.apply_meta(stage="working", progress=0.0)
total = 20
for step in range(1, total + 1):
    time.sleep(0.01)
    me.apply_meta(progress=step / total)       # meta first: a reader of data sees it
    data.write({"step": step, "progress": step / total, "square": step * step})
me.apply_meta(stage="done", result=sum(s * s for s in range(1, total + 1)))
data.write("finished")
assert control.read(timeout=20) == ["bye"]     # stay alive until the client is done
"""
    task = job(pool, code, meta={"name": "squares"})
    try:
        data = task.stream("data")
        steps = []
        for msg in data.follow():
            info = task.info(fresh=True)
            assert info["status"]["running"], "the client reads while the job runs"
            if msg == "finished":
                assert info["meta"]["stage"] == "done"
                assert info["meta"]["result"] == sum(s * s for s in range(1, 21))
                task.stream("control").write("bye")
                continue
            assert info["meta"]["name"] == "squares"
            assert info["meta"]["progress"] >= msg["progress"]
            assert msg["square"] == msg["step"] ** 2
            steps.append(msg["step"])
        # follow() ended because the job exited
        assert steps == list(range(1, 21))
        assert task.wait(timeout=10) == 0
        assert data.eof and data.start == data.limit == 21
        assert task.info(fresh=True)["streams"]["data"]["limit"] == 21
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_a_client_process_steers_the_job_through_control(pool: bgtask.TaskPool) -> None:
    code = r"""
import bgtask
me = bgtask.current()
data, control = me.stream("data"), me.stream("control")
step, increment = 0, 1
me.apply_meta(stage="running")
while True:
    for cmd in control.read(timeout=0.02):
        if cmd == "stop":                        # stop gracefully
            data.write(("stopping", step))
            me.apply_meta(stage="stopped", step=step)
            raise SystemExit(3)
        if isinstance(cmd, dict) and "increment" in cmd:
            increment = cmd["increment"]
            data.write(("increment", increment))
        elif callable(cmd):                      # dill sends functions too
            data.write(("called", cmd(step)))
    step += increment
    data.write(("tick", step))
"""
    task = job(pool, code, env=SHARED_ENV)
    try:
        data = task.stream("data")
        wait_for(lambda: data.limit >= 3)
        task.stream("control").write({"increment": 1000})
        wait_for(lambda: ("increment", 1000) in data.read(data.start))
        task.stream("control").write(lambda step: ("step", step, "negated", -step))
        # "stop" comes from another client process, through its own Task handle
        run_client(pool, f"import bgtask; bgtask.Task({task.pid}).stream('control').write('stop')")
        assert task.wait(timeout=10) == 3, task.stream("stderr").read()
        msgs = data.read()
        assert msgs[-1][0] == "stopping"
        called = [m[1] for m in msgs if m[0] == "called"]
        assert len(called) == 1 and called[0][0] == "step" and called[0][3] == -called[0][1]
        ticks = [m[1] for m in msgs if m[0] == "tick"]
        assert ticks == sorted(ticks) and ticks[-1] == msgs[-1][1]
        after = msgs[msgs.index(("increment", 1000)) + 1:]
        jumps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        assert 1000 in jumps and all(j in (1, 1000) for j in jumps)
        assert any(m[0] == "tick" for m in after)
        assert task.info(fresh=True)["meta"] == {"stage": "stopped", "step": ticks[-1]}
        assert task.stream("control").limit == 3 and task.stream("control").start == 3
    finally:
        task.delete()


# -- 2. message streams ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_message_offsets_peek_consume_and_gone(pool: bgtask.TaskPool) -> None:
    code = r"""
import bgtask
data = bgtask.current().stream("data")
class Local:                                   # defined in the job's __main__: dill sends it by value
    def __init__(self, v): self.v = v
data.write({"a": [1, 2, {3}], "b": (None, True)})
data.write(Local(7))
data.write(lambda x: x * 6)
data.write(b"\0" * (3 << 20))                  # a big message
data.write("")
"""
    task = job(pool, code)
    try:
        assert task.wait(timeout=10) == 0, task.stream("stderr").read()
        data = task.stream("data")
        assert (data.start, data.limit) == (0, 5)
        assert data.eof  # the job has exited: nothing more will arrive
        # The supervisor holds opaque blobs; the reader decodes them.
        _pos, nxt, blobs, limit, eof = task.call_remote_method("stream_read", "data", 0, 2, False, 0)
        assert (nxt, limit, eof) == (2, 5, False)
        assert all(type(b) is bytes for b in blobs)
        assert dill.loads(blobs[0]) == {"a": [1, 2, {3}], "b": (None, True)}
        # peeking: read(start, end), end cut at the limit
        assert data.read(0, 1) == [{"a": [1, 2, {3}], "b": (None, True)}]
        local, fn = data.read(1, 3)
        assert local.v == 7 and fn(7) == 42
        assert data.read(3, 99)[0] == b"\0" * (3 << 20)
        assert data.read(4) == [""]
        assert data.read(5) == [] and data.read(2, 2) == []
        assert list(data.follow(3)) == [b"\0" * (3 << 20), ""]   # follow(start) does not consume
        assert data.start == 0
        # consuming: everything unread, once
        msgs = data.read()
        assert len(msgs) == 5 and msgs[-1] == ""
        assert data.read() == [] and data.read(timeout=0.05) == []
        assert list(data.follow()) == []
        # a message stream keeps none after they are read
        assert (data.start, data.limit) == (5, 5)
        with pytest.raises(bgtask.OutputGoneError) as exc_info:
            data.read(4)
        assert exc_info.value.start == 5
        with pytest.raises(bgtask.OutputGoneError):
            list(data.follow(0))
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_message_read_timeout_and_follow(pool: bgtask.TaskPool) -> None:
    code = r"""
import time
import bgtask
me = bgtask.current()
assert me.stream("control").read(timeout=20) == ["go"]
for i in range(10):
    me.stream("data").write(i)
    time.sleep(0.02)
"""
    task = job(pool, code)
    try:
        data = task.stream("data")
        t0 = time.monotonic()
        assert data.read() == []                       # timeout=0: at once
        assert data.read(timeout=0.3) == []
        assert 0.25 <= time.monotonic() - t0 < 5
        assert not data.eof
        got: list[Any] = []

        def reader() -> None:
            got.extend(data.read(timeout=20))          # wakes up with the first message
        th = threading.Thread(target=reader)
        th.start()
        time.sleep(0.1)
        assert th.is_alive() and not got
        task.stream("control").write("go")
        th.join(10)
        assert not th.is_alive() and got and got == list(range(len(got)))
        # a non-consuming follow from the current start sees the rest, until the job exits
        start = data.start
        assert start == len(got)
        rest = list(data.follow(start))
        assert got + rest == list(range(10))
        assert data.eof and data.start == start        # follow(start) consumed nothing
        assert list(data.follow()) == rest             # follow() consumes
        assert data.start == data.limit == 10
        assert data.read(timeout=5) == []              # ended: returns at once
    finally:
        task.delete()


def finished_writer(pool: bgtask.TaskPool, n: int) -> bgtask.Task:
    """A task whose job wrote the messages 0 .. n-1 to ``data`` and exited."""
    task = job(pool, f"import bgtask\nd = bgtask.current().stream('data')\nfor i in range({n}): d.write(i)")
    assert task.wait(10) == 0
    return task


@pytest.mark.timeout(30)
def test_a_consuming_follow_left_early_puts_back_what_it_did_not_yield(pool: bgtask.TaskPool) -> None:
    """follow() fetches messages in batches: leaving the loop must not lose the rest."""
    task = finished_writer(pool, 20)
    try:
        data = task.stream("data")
        for msg in data.follow():                      # one batch holds all 20
            if msg == 4:
                break
        assert data.start == 5                         # 0..4 were handed on, 5.. went back
        it = data.follow()
        assert [next(it), next(it)] == [5, 6]
        it.close()                                     # an explicit close puts back too
        assert data.read(7, 9) == [7, 8]               # still held: not consumed
        with pytest.raises(ZeroDivisionError):
            for msg in data.follow():
                if msg == 9:
                    raise ZeroDivisionError("an error in the loop body")
        assert data.read() == list(range(10, 20))
        assert data.start == data.limit == 20
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_put_back_never_reorders_when_another_reader_consumed_meanwhile(pool: bgtask.TaskPool) -> None:
    task = finished_writer(pool, 10)
    try:
        it = task.stream("data").follow()
        assert next(it) == 0                           # the batch 0..9 is consumed
        other = bgtask.Task(task.pid, pool)            # another handle: its own connection
        assert other.stream("data").read() == []       # nothing unread for it...
        task.stream("control").write("x")              # (a write does not move the cursor)
        it.close()                                     # ...so 1..9 go back in front
        assert other.stream("data").read() == list(range(1, 10))
        # Now a second reader consumes before the first gives back: no put-back, no
        # reordering, no message seen twice.
        task2 = job(pool, "import bgtask\nd = bgtask.current().stream('data')\n"
                          "import sys\nfor i in range(3): d.write(i)\nsys.stdin.read()\n"
                          "for i in range(3, 6): d.write(i)")
        try:
            data2 = task2.stream("data")
            wait_for(lambda: data2.limit == 3)
            it = data2.follow()
            assert next(it) == 0                       # 0..2 consumed by the iterator
            task2.stream("stdin").close()
            wait_for(lambda: data2.limit == 6)
            assert bgtask.Task(task2.pid, pool).stream("data").read() == [3, 4, 5]
            it.close()                                 # 1, 2 cannot go back in order
            assert data2.start == data2.limit == 6
            assert data2.read() == []
        finally:
            task2.delete()
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_a_forked_child_closing_its_copy_of_a_follow_puts_nothing_back(pool: bgtask.TaskPool) -> None:
    task = finished_writer(pool, 10)
    try:
        data = task.stream("data")
        it = data.follow()
        got = [next(it)]

        def in_child() -> bytes:
            it.close()  # the child's copy: 1..9 are the parent's to yield
            return b"closed"

        assert child_result(*start_in_child(in_child)) == (0, b"closed")
        got.extend(it)
        assert got == list(range(10))
        assert data.read() == [] and data.start == 10  # nothing came back twice
    finally:
        task.delete()


def test_follow_checks_its_arguments_at_once(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        with pytest.raises(ValueError, match="stdin"):
            task.stream("stdin").follow()              # not at the first next()
        with pytest.raises(ValueError):
            task.stream("data").follow(-1)
        with pytest.raises(TypeError):
            task.stream("stdout").follow("0")  # type: ignore[arg-type]
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_control_messages_from_several_client_processes(pool: bgtask.TaskPool) -> None:
    # Messages of classes importable on both sides; each writer's order is kept.
    code = r"""
import bgtask
me = bgtask.current()
got = []
while len(got) < 2 * 50 + 1:
    got += me.stream("control").read(timeout=20)
me.stream("data").write(got)
"""
    task = job(pool, code, env=SHARED_ENV)
    try:
        task.stream("control").write(Point(1, 2))
        writer = (f"import bgtask, sys; c = bgtask.Task({task.pid}).stream('control')\n"
                  "for i in range(50): c.write((sys.argv[1], i))")
        procs = [subprocess.Popen([PY, "-c", writer, name], env=client_env(pool))
                 for name in ("A", "B")]
        for p in procs:
            assert p.wait(timeout=20) == 0
        assert task.wait(timeout=10) == 0, task.stream("stderr").read()
        [got] = task.stream("data").read()
        assert got[0] == Point(1, 2) and type(got[0]) is Point  # the class, not a placeholder
        for name in ("A", "B"):
            assert [m for m in got[1:] if m[0] == name] == [(name, i) for i in range(50)]
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_a_message_of_an_unimportable_class_is_a_placeholder(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    (tmp_path / "only_in_the_job.py").write_text("class Secret:\n    value = 42\n")
    code = r"""
import bgtask, only_in_the_job
data = bgtask.current().stream("data")
data.write(only_in_the_job.Secret())
data.write("next")
"""
    task = job(pool, code, env={"PYTHONPATH": os.pathsep.join([REPO, str(tmp_path)])})
    try:
        assert task.wait(timeout=10) == 0, task.stream("stderr").read()
        secret, nxt = task.stream("data").read()
        assert isinstance(secret, bgtask.UndecodableValue)
        assert "only_in_the_job" in secret.error and secret.blob
        assert nxt == "next"
    finally:
        task.delete()


def _generator() -> Any:
    yield 1


class _Unreducible:
    def __reduce__(self) -> Any:
        raise RuntimeError("refuses to be pickled")


@pytest.mark.timeout(30)
def test_an_unserializable_message_raises_in_the_writer_before_anything_is_sent(pool: bgtask.TaskPool) -> None:
    code = r"""
import socket
import bgtask
me = bgtask.current()
data = me.stream("data")
def gen(): yield 1
errors = []
for bad in (gen(), socket.socket(), memoryview(b"x")):
    try:
        data.write(bad)
    except TypeError as exc:
        errors.append(str(exc))
try:
    me.apply_meta(bad=gen())
except TypeError:
    errors.append("meta")
data.write((data.limit, errors))
"""
    task = job(pool, code, meta={"keep": 1})
    try:
        assert task.wait(timeout=10) == 0, task.stream("stderr").read()
        [(limit_in_job, errors)] = task.stream("data").read()
        assert limit_in_job == 0 and len(errors) == 4
        assert "generator" in errors[0] and errors[3] == "meta"
        control = task.stream("control")
        for bad in (_generator(), _Unreducible(), memoryview(b"x")):
            with pytest.raises(TypeError, match="cannot be serialized"):
                control.write(bad)
        with pytest.raises(TypeError):
            task.apply_meta(bad=_generator(), fine=1)
        assert control.limit == 0
        assert task.info(fresh=True)["meta"] == {"keep": 1}
    finally:
        task.delete()


# -- 1. stdin -------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cat_fed_megabytes_through_stdin_reads_back_byte_identical(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    text = "ünïcode ✓\n"
    mine = os.urandom(6 << 20) + text.encode()
    theirs = os.urandom(3 << 20 | 12345)
    (tmp_path / "theirs").write_bytes(theirs)
    # retain_output=0: nothing is kept after it was read, so start == limit at the end
    task = pool.spawn(["cat"], retain_output=0)
    try:
        out = task.stream("stdout")
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.extend(out.follow()))
        reader.start()
        stdin = task.stream("stdin")
        assert stdin.write(mine[:6 << 20]) == 6 << 20
        assert stdin.write(text) == len(mine)                  # str: UTF-8
        # another client process goes on where we stopped, and closes
        run_client(pool, f"import bgtask\ns = bgtask.Task({task.pid}).stream('stdin')\n"
                         f"s.write(open({str(tmp_path / 'theirs')!r}, 'rb').read())\ns.close()")
        assert task.wait(timeout=30) == 0
        reader.join(30)
        assert not reader.is_alive()
        back = b"".join(received)
        assert len(back) == len(mine) + len(theirs)
        assert hashlib.sha256(back).digest() == hashlib.sha256(mine + theirs).digest()
        total = len(mine) + len(theirs)
        assert (stdin.start, stdin.limit, stdin.eof) == (total, total, True)
        assert stdin.info()["delivered"] == total
        assert (out.start, out.limit, out.eof) == (total, total, True)
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_stdin_writes_of_concurrent_client_processes_stay_whole_and_in_order(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["cat"])
    try:
        writer = (f"import bgtask, sys\ns = bgtask.Task({task.pid}).stream('stdin')\n"
                  "for i in range(300): s.write(f'{sys.argv[1]} {i} ' + sys.argv[1] * 200 + '\\n')")
        procs = [subprocess.Popen([PY, "-c", writer, name], env=client_env(pool)) for name in "XYZ"]
        for p in procs:
            assert p.wait(timeout=20) == 0
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 0
        lines = task.stream("stdout").read().decode().splitlines()
        assert len(lines) == 900
        for name in "XYZ":
            assert [ln for ln in lines if ln.startswith(name)] == [
                f"{name} {i} " + name * 200 for i in range(300)]
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_stdin_back_pressure_blocks_or_times_out_and_loses_nothing(pool: bgtask.TaskPool) -> None:
    # The job does not read its stdin until it is told to.
    code = r"""
import shutil, sys
import bgtask
assert bgtask.current().stream("control").read(timeout=25) == ["go"]
shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)
"""
    task = job(pool, code)
    try:
        stdin = task.stream("stdin")
        payload = os.urandom(6 << 20)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            stdin.write(payload, timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 5
        accepted = stdin.limit
        # Bounded: the supervisor took at most its buffer (1 MiB) and one more chunk.
        assert 0 < accepted <= 2 << 20
        assert stdin.start < accepted        # accepted, not yet delivered to the job
        assert not stdin.eof
        # Without a timeout, write() blocks until the job reads.
        done: list[int] = []
        writer = threading.Thread(target=lambda: done.append(stdin.write(payload[accepted:])))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and not done
        assert stdin.limit <= 2 << 20
        task.stream("control").write("go")
        writer.join(20)
        assert done == [len(payload)]
        stdin.close()
        assert task.wait(timeout=20) == 0, task.stream("stderr").read()
        back = task.stream("stdout").read()
        assert len(back) == len(payload) and back == payload   # nothing lost, nothing twice
        assert stdin.start == stdin.limit == len(payload)
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_a_writer_blocked_on_stdin_gets_an_error_when_the_job_ends(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])       # never reads its stdin
    try:
        stdin = task.stream("stdin")
        errors: list[BaseException] = []

        def write() -> None:
            try:
                stdin.write(os.urandom(4 << 20))
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)
        writer = threading.Thread(target=write)
        writer.start()
        wait_for(lambda: stdin.limit > 0)
        time.sleep(0.2)
        assert writer.is_alive()
        task.kill()
        writer.join(10)
        assert not writer.is_alive()
        [exc] = errors
        assert isinstance(exc, bgtask.StreamClosedError) and "ended" in str(exc)
        info = stdin.info()
        # what was accepted but never delivered is counted, not silently lost
        assert info["delivered"] + info["discarded"] == info["limit"] == stdin.limit > 0
        assert stdin.eof
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_writing_stdin_after_close_or_after_the_end_raises(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sh", "-c", "cat; echo end of file; sleep 30"])
    try:
        stdin = task.stream(0)
        assert not stdin.eof
        stdin.write(b"last words\n")
        stdin.close()
        assert stdin.eof
        wait_for(lambda: task.stream("stdout").read(0) == b"last words\nend of file\n")
        with pytest.raises(bgtask.StreamClosedError, match="stdin was closed"):
            stdin.write(b"too late")
        task.kill("TERM")
        assert task.wait(timeout=10) == -15
        with pytest.raises(bgtask.StreamClosedError, match="ended"):
            stdin.write("after the end")
        with pytest.raises(bgtask.StreamClosedError):
            stdin.write(b"")
        assert stdin.limit == len(b"last words\n")
        # and from another client process: a clear error, not a hang
        out = run_client(pool, "import bgtask\ntry:\n"
                               f"    bgtask.Task({task.pid}).stream('stdin').write(b'x')\n"
                               "except bgtask.StreamClosedError as exc:\n    print('refused:', exc)")
        assert out.startswith("refused:") and "ended" in out
        with pytest.raises(ValueError):
            stdin.read()
        with pytest.raises(ValueError):
            task.stream("stdout").write(b"x")
        with pytest.raises(TypeError):
            stdin.write(42)  # type: ignore[arg-type]
    finally:
        task.delete()
    with pytest.raises(bgtask.TaskNotFoundError):
        task.stream("control").write("to nobody")


@pytest.mark.timeout(30)
def test_writing_stdin_of_a_job_that_closed_it_raises(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sh", "-c", "exec 0<&-; echo closed; sleep 30"])
    try:
        stdin = task.stream("stdin")
        wait_for(lambda: task.stream("stdout").read(0) == b"closed\n")
        stdin.write(b"nobody reads this")      # accepted; the pipe has no reader
        wait_for(lambda: stdin.eof)
        info = stdin.info()
        assert info["discarded"] == len(b"nobody reads this") and info["start"] == info["limit"]
        with pytest.raises(bgtask.StreamClosedError, match="the job closed its stdin"):
            stdin.write(b"more")
        assert task.info(fresh=True)["status"]["running"]
    finally:
        task.delete(timeout=1)


# -- checks: many messages ---------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_many_small_messages_without_loss(pool: bgtask.TaskPool) -> None:
    n = 100_000
    code = f"""
import bgtask
me = bgtask.current()
write = me.stream("data").write
for i in range({n}):
    write(i)
assert me.stream("control").read(timeout=60) == ["done"]
"""
    t0 = time.monotonic()
    task = job(pool, code)
    try:
        data = task.stream("data")
        got: list[Any] = []
        while len(got) < n:                     # read while the job writes
            batch = data.read(timeout=30)
            assert batch, f"stalled after {len(got)} messages"
            got += batch
            time.sleep(0.005)                   # let a batch build up
        elapsed = time.monotonic() - t0
        assert got == list(range(n))
        task.stream("control").write("done")
        assert task.wait(timeout=10) == 0
        assert (data.start, data.limit) == (n, n)
        sys.stderr.write(f"\n{n} messages job -> client: {elapsed:.1f} s\n")
    finally:
        task.delete()


@pytest.mark.timeout(60)
def test_write_many_both_ways_in_order_and_batched(pool: bgtask.TaskPool) -> None:
    n = 100_000
    code = f"""
import bgtask
me = bgtask.current()
got = []
while len(got) < {n} + 20:
    got += me.stream("control").read(timeout=30)
assert got[:{n}] == list(range({n})), "control out of order"
assert [len(b) for b in got[{n}:]] == [1 << 20] * 20
me.stream("data").write_many(i * i for i in range({n}))   # any iterable
"""
    task = job(pool, code)
    try:
        control = task.stream("control")
        assert control.write_many(range(n)) == n
        big = [bytes([i]) * (1 << 20) for i in range(20)]   # 20 MiB: more than one call
        assert control.write_many(big) == n + 20
        assert task.wait(timeout=30) == 0, task.stream("stderr").read()
        data = task.stream("data")
        assert data.read() == [i * i for i in range(n)]
        assert control.write_many([]) == n + 20             # nothing to send
    finally:
        task.delete()


def test_write_many_refuses_before_anything_is_sent(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        control = task.stream("control")
        with pytest.raises(TypeError, match="message 2 of type generator"):
            control.write_many([1, 2, (i for i in ()), 4])   # a generator: dill cannot
        assert control.limit == 0                             # not even the first two
        with pytest.raises(TypeError):
            control.write_many("abc")                         # a str is one message, not three
        with pytest.raises(TypeError):
            control.write_many(5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="messages"):
            task.stream("stdin").write_many([b"x"])
        with pytest.raises(ValueError):
            task.stream("stdout").write_many([b"x"])
        with pytest.raises(TypeError):                        # raw: a list of non-blobs
            task.call_remote_method("stream_write", "control", ["x"])
        with pytest.raises(TypeError):                        # raw: a list is for messages
            task.call_remote_method("stream_write", "stdin", [b"x"])
        assert control.limit == 0
    finally:
        task.delete()


# -- 4. restart keeps the conversation ---------------------------------------------------------------

@pytest.mark.timeout(30)
def test_restart_keeps_the_conversation(pool: bgtask.TaskPool) -> None:
    code = r"""
import sys
import bgtask
me = bgtask.current()
line = sys.stdin.readline()
run = me.info(fresh=True)["restarts"]
me.stream("data").write({"run": run, "pid": me.pid, "line": line,
                         "control": me.stream("control").read(timeout=10)})
print("run", run, flush=True)
sys.stdin.read()                                 # until the client closes stdin
"""
    task = job(pool, code)
    try:
        data, control, stdin, out = (task.stream(n) for n in ("data", "control", "stdin", "stdout"))
        control.write("c1")
        stdin.write("first\n")
        wait_for(lambda: data.limit == 1)
        assert task.restart() is False              # still running
        control.write("c2")                         # this run never reads it
        stdin.close()
        assert task.wait(timeout=10) == 0
        control.write("c3")                         # written while the job is not running
        assert (control.start, control.limit) == (1, 3)
        assert data.eof and control.eof and stdin.eof
        first_out = out.limit
        assert out.read(0) == b"run 0\n"
        stdin_first = stdin.limit
        assert stdin_first == len(b"first\n")

        assert task.restart() is True
        assert not data.eof and not stdin.eof       # a new run: a new stdin
        assert stdin.write("second\n") == stdin_first + len(b"second\n")
        wait_for(lambda: data.limit == 2)
        stdin.close()
        assert task.wait(timeout=10) == 0
        # every offset went on from where the first run left it
        assert data.read(0) == [
            {"run": 0, "pid": task.pid, "line": "first\n", "control": ["c1"]},
            {"run": 1, "pid": task.pid, "line": "second\n", "control": ["c2", "c3"]},
        ]
        assert data.read(1) == data.read(0)[1:]
        assert (control.start, control.limit) == (3, 3)
        assert out.read(first_out) == b"run 1\n" and out.limit == first_out + len(b"run 1\n")
        assert stdin.start == stdin.limit == stdin_first + len(b"second\n")
        assert task.info(fresh=True)["restarts"] == 1
    finally:
        task.delete()


# -- the README example --------------------------------------------------------------------------------

def doc_blocks() -> list[str]:
    """The python code blocks of the README's conversation section, dedented, in order."""
    text = DOC.read_text()
    text = text[text.index("Talking to a running job\n"):]
    text = text[:text.index("\nCommand line\n")]
    blocks = []
    for m in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", text, re.M):
        blocks.append("\n".join(line[4:] for line in m.group(1).splitlines()).strip() + "\n")
    return blocks


@pytest.mark.timeout(60)
def test_the_documented_conversation_runs(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    blocks = doc_blocks()
    worker = next(b for b in blocks if b.startswith("# worker.py"))
    client = next(b for b in blocks if b.startswith("# client.py"))
    (tmp_path / "worker.py").write_text(worker)
    (tmp_path / "client.py").write_text(client)
    out = run_client(pool, client, timeout=40, cwd=str(tmp_path))
    *steps, status, result, stopped = out.splitlines()
    # the job stops at the first step after "stop" arrived: 5, or a little later
    stopped_at = int(re.fullmatch(r"stopped at step (\d+)", stopped).group(1))  # type: ignore[union-attr]
    assert 5 <= stopped_at < 100
    assert [re.sub(r" \(\d+% done\)$", "", s) for s in steps] == [
        f"step {i}: {i * i}" for i in range(1, stopped_at + 1)]
    assert steps[0] == "step 1: 1 (1% done)"
    assert (status, result) == ("exit status 0", f"result {stopped_at ** 2}")
    [stdin_example] = [b for b in blocks if b not in (worker, client)]
    out = run_client(pool, stdin_example, timeout=40, cwd=str(tmp_path))
    assert out == "apple\nbanana\ncherry\n20 20\n"
    assert not pool.search()
