"""Faults: a supervisor, a job, a caller or a client dies; pids are reused; files go stale;
the pool directory vanishes. Nothing hangs, and nothing that was promised is lost.

Decisions these tests pin down (see "Choices where the contract is silent" in the README):

* **A SIGKILLed supervisor** closes its end of every connection: a client in any call
  gets ``TaskNotFoundError`` at once (well within 2 s). Its job loses the reader of its
  pipes, so a job that writes dies of SIGPIPE by itself. The next ``search()`` or
  ``Task`` access by the owner proves the supervisor dead (its socket refuses
  connections), sends SIGTERM+SIGCONT -- SIGKILL one second later -- to the orphan's
  process group, identified by the job pid *and* start time recorded in the token file
  (so a reused pid is never hit), and removes the files.
* **Signals sent to a supervisor by hand** (TERM, INT, HUP, QUIT, USR1, USR2) are
  forwarded to the job's process group; the supervisor stays until ``delete()``.
* **A supervisor whose socket or token file is removed** (the pool directory was
  deleted, or someone unlinked the files) can never be reached again by a new client:
  it notices within a few seconds and behaves like ``delete(5)``, rather than keep a job
  running that nobody can find.
* **A client that dies** in the middle of a blocking ``read(timeout=...)`` or
  ``follow()`` only loses its own connection; a consuming read whose reply could not be
  delivered to it is undone, so the next reader gets those bytes (or messages).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import fork, pid_alive, processes_of_pool, py, task_files, wait_for
from test_security import run_as

import bgtask
from bgtask import _paths, _process
from bgtask._client.spawn import build_spec

pytestmark = pytest.mark.timeout(30)


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[1])


class Outcome:
    """What a call made in a thread ended with, and when."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.value: Any = None
        self.ended: float | None = None
        self.done = threading.Event()


def in_thread(fn: Callable[[], Any]) -> Outcome:
    out = Outcome()

    def run() -> None:
        try:
            out.value = fn()
        except BaseException as exc:  # noqa: BLE001 -- reported to the test
            out.error = exc
        finally:
            out.ended = time.monotonic()
            out.done.set()

    threading.Thread(target=run, daemon=True).start()
    return out


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Unrelated processes of ours (stand-ins for whoever reuses a pid); killed after."""
    procs: list[subprocess.Popen[bytes]] = []

    def make() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["sleep", "60"])
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()
        p.wait()


def wait_dead(task: bgtask.Task, timeout: float = 2.0) -> None:
    """Wait until *task*'s supervisor is dead, and its socket refuses connections: the
    leader thread of a killed process is a zombie a moment before the process's other
    threads are gone and its files closed. (Or its socket is gone already: a client that
    saw it die has swept it.)"""
    from bgtask._client.connection import refuses as _refuses

    path = str(task.pool.path / f"{task.pid}.sock")
    wait_for(lambda: not pid_alive(task.pid) and (not os.path.exists(path) or _refuses(path)),
             timeout=timeout)


def dead_socket(path: str) -> None:
    """Leave a socket file behind whose listener is gone: connecting is refused."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


# -- the supervisor is SIGKILLed -------------------------------------------------------------

def test_every_client_in_a_call_gets_task_not_found_when_the_supervisor_is_killed(
        pool: bgtask.TaskPool) -> None:
    # sleep reads no stdin and writes nothing: every call below blocks in the supervisor.
    task = pool.spawn(["sleep", "60"])
    job = task.info()["child_pid"]
    calls = {
        "read": lambda: bgtask.Task(task.pid, pool).stream("stdout").read(timeout=30),
        "follow": lambda: list(bgtask.Task(task.pid, pool).stream("stderr").follow()),
        "read data": lambda: bgtask.Task(task.pid, pool).stream("data").read(timeout=30),
        "wait": lambda: bgtask.Task(task.pid, pool).wait(),
        # 1 MiB is buffered in the supervisor and 64 KiB in the pipe: this one blocks
        "write": lambda: bgtask.Task(task.pid, pool).stream("stdin").write(b"x" * (3 << 20)),
    }
    outcomes = {name: in_thread(fn) for name, fn in calls.items()}
    time.sleep(0.5)  # every call is in the supervisor, blocked
    assert not any(o.done.is_set() for o in outcomes.values())
    os.kill(task.pid, signal.SIGKILL)
    killed = time.monotonic()
    for name, o in outcomes.items():
        assert o.done.wait(5), f"{name} still blocked after the supervisor died"
        assert isinstance(o.error, bgtask.TaskNotFoundError), (name, o.error)
        assert o.ended is not None and o.ended - killed < 2.0, (name, o.ended - killed)
    # The job stays until the owner next looks: search proves the supervisor dead, stops
    # the orphan and removes the files.
    wait_dead(task)
    assert task_files(pool) == [f"{task.pid}.sock", f"{task.pid}.token"]
    t0 = time.monotonic()
    assert pool.search() == []
    assert time.monotonic() - t0 < 2.0
    assert task_files(pool) == []
    assert not pid_alive(job)
    with pytest.raises(bgtask.TaskNotFoundError):
        task.info(fresh=True)


def test_a_client_sending_a_large_request_gets_task_not_found(pool: bgtask.TaskPool) -> None:
    """Killed in the middle of receiving a request (a 64 MiB meta value): the sender's
    write fails, and that is a TaskNotFoundError too, not a BrokenPipeError."""
    task = pool.spawn(["sleep", "60"])
    task.info()
    os.kill(task.pid, signal.SIGSTOP)  # the socket buffers fill up: the sender blocks
    try:
        o = in_thread(lambda: task.apply_meta(big=b"m" * (64 << 20)))
        time.sleep(0.5)
        assert not o.done.is_set()
        os.kill(task.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert o.done.wait(5)
        assert isinstance(o.error, bgtask.TaskNotFoundError), o.error
        assert o.ended is not None and o.ended - killed < 2.0
    finally:
        try:
            os.kill(task.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already reaped (by init)
    wait_dead(task)
    assert pool.search() == []
    assert task_files(pool) == []


@pytest.mark.parametrize("script", [
    pytest.param("trap '' TERM; sleep 60 & sleep 60; wait", id="all-ignore-term"),
    # The job itself dies of SIGTERM; the child it leaves behind ignores it.
    pytest.param("(trap '' TERM; exec sleep 60) & sleep 60", id="child-ignores-term"),
])
def test_orphan_that_ignores_term_is_killed_one_second_later(pool: bgtask.TaskPool, script: str) -> None:
    task = pool.spawn(["sh", "-c", script])
    job = task.info()["child_pid"]
    wait_for(lambda: len([p for p, _ in processes_of_pool(str(pool.path)) if p not in (job, task.pid)]) >= 2)
    group = [p for p, _ in processes_of_pool(str(pool.path)) if p != task.pid]
    assert len(group) >= 3 and all(os.getpgid(p) == job for p in group)
    os.kill(task.pid, signal.SIGKILL)
    wait_dead(task)
    t0 = time.monotonic()
    # A Task access proves the supervisor dead just like search() does.
    with pytest.raises(bgtask.TaskNotFoundError) as ei:
        bgtask.Task(task.pid, pool).info()
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 2.5, (elapsed, ei.value)  # TERM was ignored: KILL after one second
    wait_for(lambda: not any(pid_alive(p) for p in group), timeout=1)
    assert task_files(pool) == []


def test_a_writing_orphan_dies_of_sigpipe_by_itself(pool: bgtask.TaskPool) -> None:
    # yes(1) writes as fast as it can; max_buffer is small, so it is blocked on the pipe.
    task = pool.spawn(["yes"], max_buffer=4096)
    job = task.info()["child_pid"]
    wait_for(lambda: task.stream("stdout").limit >= 4096)
    os.kill(task.pid, signal.SIGKILL)
    # Nobody searches: the job dies because its pipe has no reader any more.
    wait_for(lambda: not pid_alive(job), timeout=2)
    wait_dead(task)
    assert pool.search() == []
    assert task_files(pool) == []


def test_supervisor_killed_while_making_its_files(pool: bgtask.TaskPool) -> None:
    """Mid-spawn, before the job exists: spawn raises SpawnError, nothing is left."""
    # Hold the per-user sweep lock: a new supervisor takes it while making its files.
    fd = _paths.open_private(_paths.sweep_lock_path(str(pool.path), os.geteuid()),
                             os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        outcome = in_thread(lambda: pool.spawn(["sleep", "60"]))
        # the supervisor: a process of the pool that is no longer our child (it forked)
        sup = wait_for(lambda: [p for p, _ in processes_of_pool(str(pool.path))
                                if ppid_of(p) != os.getpid()], timeout=5)
        assert len(sup) == 1
        os.kill(sup[0], signal.SIGKILL)
        killed = time.monotonic()
    finally:
        os.close(fd)
    assert outcome.done.wait(5)
    assert isinstance(outcome.error, bgtask.SpawnError), outcome.error
    assert outcome.ended is not None and outcome.ended - killed < 2.0
    assert task_files(pool) == []
    assert processes_of_pool(str(pool.path)) == []


def test_supervisor_killed_by_its_job_while_starting(pool: bgtask.TaskPool) -> None:
    """Mid-spawn, after the job started: either spawn fails, or the task it returned is
    found dead; either way the next search stops the orphaned job and removes the files."""
    # A busy loop of a few ms first, so that the supervisor has recorded the job (pid +
    # start time) before it is killed: it does so right after posix_spawn returns, and a
    # supervisor killed in those few microseconds leaves an orphan nobody can identify
    # (a known, accepted window). The kill lands while it reports or loads its server.
    code = "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; kill -9 $PPID; exec sleep 60"
    outcome = in_thread(lambda: pool.spawn(["sh", "-c", code]))
    assert outcome.done.wait(10)
    if outcome.error is None:
        task = outcome.value
        wait_dead(task, timeout=5)
    else:
        assert isinstance(outcome.error, bgtask.SpawnError), outcome.error
    assert pool.search() == []
    assert task_files(pool) == []
    wait_for(lambda: not processes_of_pool(str(pool.path)), timeout=3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_signals_sent_to_a_supervisor_by_hand_go_to_the_job(spawn: Callable[..., bgtask.Task],
                                                            pool: bgtask.TaskPool, sig: signal.Signals) -> None:
    """API.md, "Signals sent to a supervisor by hand": `kill <task id>` reaches the job's
    process group (like tini); the supervisor stays, with the output, until delete()."""
    task = spawn(py("import signal, sys, time\n"
                    f"signal.signal({int(sig)}, lambda s, f: (print('got', s, flush=True), sys.exit(3)))\n"
                    "print('ready', flush=True); time.sleep(60)"))
    wait_for(lambda: task.stream("stdout").read(0) == b"ready\n")
    os.kill(task.pid, sig)
    assert task.wait(timeout=10) == 3
    assert task.stream("stdout").read() == f"ready\ngot {int(sig)}\n".encode()
    # Again, with the job gone: nothing to forward, and the supervisor still stays.
    os.kill(task.pid, sig)
    time.sleep(0.3)
    assert pid_alive(task.pid)
    assert task.info(fresh=True)["status"]["returncode"] == 3
    assert {f"{task.pid}.sock", f"{task.pid}.token"} <= set(task_files(pool))
    task.delete()
    assert task_files(pool) == []


# -- the job misbehaves ------------------------------------------------------------------------

_PRELUDE = ("import os, sys, signal\n"
            "os.write(1, b'o' * 100000); os.write(2, b'e' * 3000)\n")


@pytest.mark.parametrize(("ending", "code", "signal_", "exit_code"), [
    pytest.param("sigkill", "os.kill(os.getpid(), signal.SIGKILL)", 9, None, id="sigkill"),
    pytest.param("segfault", "import ctypes; ctypes.string_at(0)", 11, None, id="segfault"),
    pytest.param("abort", "os.abort()", 6, None, id="abort"),
    pytest.param("exit", "os._exit(7)", None, 7, id="exit-7"),
    pytest.param("stdout-closed", "os.close(1); os.write(2, b'E'); os._exit(5)", None, 5,
                 id="closes-stdout-early"),
])
def test_how_the_job_ended_and_every_byte_it_wrote_are_kept(pool: bgtask.TaskPool, ending: str, code: str,
                                                            signal_: int | None, exit_code: int | None) -> None:
    task = pool.spawn(py(_PRELUDE + code))
    try:
        rc = task.wait(timeout=10)
        assert rc == (-signal_ if signal_ else exit_code)
        st = task.info(fresh=True)["status"]
        assert (st["running"], st["signal"], st["exit_code"], st["returncode"]) == (False, signal_, exit_code, rc)
        assert task.stream("stdout").read() == b"o" * 100000
        assert task.stream("stderr").read() == b"e" * 3000 + (b"E" if ending == "stdout-closed" else b"")
        assert task.stream("stdout").eof and task.stream("stderr").eof
    finally:
        task.delete()


def test_job_that_closes_stdout_early_keeps_running(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import os, sys, time\n"
                         "os.write(1, b'first'); os.close(1)\n"
                         "sys.stdin.readline(); os.write(2, b'second'); os._exit(3)"))
    try:
        out = task.stream("stdout")
        wait_for(lambda: out.eof)
        assert task.info(fresh=True)["status"]["running"] is True
        assert task.stream("stderr").eof is False
        task.stream("stdin").write(b"go\n")
        assert task.wait(timeout=10) == 3
        assert out.read() == b"first"
        assert task.stream("stderr").read() == b"second"
    finally:
        task.delete()


def test_job_killed_while_blocked_on_a_full_buffer_keeps_what_it_wrote(pool: bgtask.TaskPool) -> None:
    """on_full="block": the job is blocked writing; SIGKILL it; every write() that
    returned in the job is in the output (the pipe's contents are collected too)."""
    # 1000-byte records (atomic pipe writes); after each, its number goes to stderr.
    code = ("import os\n"
            "i = 0\n"
            "while True:\n"
            "    os.write(1, b'%0999d' % i + b'\\n')\n"
            "    os.write(2, b'%d\\n' % i)\n"
            "    i += 1\n")
    task = pool.spawn(py(code), max_buffer=64 * 1024)
    try:
        err = task.stream("stderr")
        # Stuck on the full buffer by now (64 KiB buffered, and the pipe: one page while
        # the buffer is nearly full, see io.py).
        wait_for(lambda: err.limit > 64 * 2)
        time.sleep(0.3)
        assert task.kill("KILL")
        assert task.wait(timeout=10) == -9
        last = int(err.read().split()[-1])
        out = b"".join(task.stream("stdout").follow())  # the pipe's rest comes after
        assert len(out) % 1000 == 0
        n = len(out) // 1000
        assert n >= last + 1  # every record the job finished writing is there
        assert out == b"".join(b"%0999d\n" % i for i in range(n))
    finally:
        task.delete()


def test_children_holding_the_pipes_do_not_hold_up_wait(pool: bgtask.TaskPool) -> None:
    # The job forks a child (same process group) that keeps stdout and stderr open.
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    time.sleep(60); os._exit(0)\n"
            "os.write(1, b'parent out'); os.write(2, b'parent err'); os._exit(4)")
    task = pool.spawn(py(code))
    try:
        t0 = time.monotonic()
        assert task.wait(timeout=10) == 4
        assert time.monotonic() - t0 < 5
        assert task.stream("stdout").read() == b"parent out"
        assert task.stream("stderr").read() == b"parent err"
        assert task.stream("stdout").eof is False  # the child still holds it
    finally:
        task.delete()  # takes the child along (the pool fixture checks)


def test_output_of_a_job_that_exited_long_ago_is_all_there(pool: bgtask.TaskPool) -> None:
    code = "import os; [os.write(1, bytes([i % 251]) * 4096) for i in range(200)]; os.write(2, b'done')"
    task = pool.spawn(py(code))
    try:
        assert task.wait(timeout=10) == 0
        time.sleep(0.2)
        out = task.stream("stdout").read()
        assert out == b"".join(bytes([i % 251]) * 4096 for i in range(200))
        assert task.stream("stderr").read() == b"done"
    finally:
        task.delete()


# -- callers and clients die -------------------------------------------------------------------

def test_the_caller_that_spawned_dies_right_after_spawn(pool: bgtask.TaskPool) -> None:
    code = ("import os, signal, bgtask\n"
            "t = bgtask.spawn(['sh', '-c', 'sleep 0.3; echo survived'])\n"
            "print(t.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run(py(code), capture_output=True, timeout=20)
    assert proc.returncode == -9
    task = bgtask.Task(int(proc.stdout), pool)
    try:
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"survived\n"
    finally:
        task.delete()


_CLIENT = ("import sys, bgtask\n"
           "t = bgtask.Task(int(sys.argv[1])); s = t.stream(sys.argv[2])\n"
           "t.connect(); print('ready', flush=True)\n"
           "if sys.argv[3] == 'read':\n"
           "    print(repr(s.read(timeout=30)), flush=True)\n"
           "else:\n"
           "    for x in s.follow(): print(repr(x), flush=True)\n")


@pytest.mark.parametrize(("stream", "how"), [
    pytest.param("stdout", "read", id="read-stdout"),
    pytest.param("stdout", "follow", id="follow-stdout"),
    pytest.param("data", "read", id="read-data"),
    pytest.param("data", "follow", id="follow-data"),
])
def test_a_client_dying_in_a_blocking_read_loses_nothing(pool: bgtask.TaskPool, stream: str, how: str) -> None:
    """The client is killed while the supervisor waits for output on its behalf; the
    output that then arrives is consumed for it, cannot be delivered, and is given back."""
    # The job writes when told to (a line on stdin), then waits for the next line.
    job = ("import sys, bgtask\n"
           "sys.stdin.readline()\n"
           "sys.stdout.write('x' * 5000); sys.stdout.flush()\n"
           "bgtask.current().stream('data').write({'n': 1})\n"
           "sys.stdin.readline()\n")
    task = pool.spawn(py(job))
    try:
        client = subprocess.Popen(py(_CLIENT) + [str(task.pid), stream, how],
                                  stdout=subprocess.PIPE, env={**os.environ, "BGTASK_POOL": str(pool.path)})
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        time.sleep(0.5)  # the client's read is now waiting in the supervisor
        client.kill()
        client.wait()
        client.stdout.close()
        task.stream("stdin").write(b"go\n")
        if stream == "stdout":
            # A one-page pipe hands the 5000 bytes over in two pieces: read until all came.
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < 5000 and time.monotonic() < deadline:
                got += task.stream("stdout").read(timeout=1)
            assert got == b"x" * 5000
        else:
            assert task.stream("data").read(timeout=5) == [{"n": 1}]
        # The supervisor is unaffected: it serves, and the job goes on.
        task.stream("stdin").write(b"end\n")
        assert task.wait(timeout=10) == 0
        if stream == "data":
            assert task.stream("stdout").read() == b"x" * 5000
    finally:
        task.delete()


def test_a_client_dying_in_a_blocked_write_or_wait(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    try:
        code = ("import sys, bgtask\n"
                "t = bgtask.Task(int(sys.argv[1])); t.connect(); print('ready', flush=True)\n"
                "t.stream('stdin').write(b'x' * (3 << 20)) if sys.argv[2] == 'write' else t.wait()\n")
        clients = [subprocess.Popen(py(code) + [str(task.pid), what], stdout=subprocess.PIPE,
                                    env={**os.environ, "BGTASK_POOL": str(pool.path)})
                   for what in ("write", "wait", "write", "wait")]
        for c in clients:
            assert c.stdout is not None and c.stdout.readline() == b"ready\n"
        time.sleep(0.3)
        for c in clients:
            c.kill()
            c.wait()
            assert c.stdout is not None
            c.stdout.close()
        assert task.info(fresh=True)["status"]["running"] is True
        assert task.stream("stdout").read() == b""
    finally:
        t0 = time.monotonic()
        task.delete()
        assert time.monotonic() - t0 < 3


def test_a_client_that_connects_and_never_speaks_does_not_block_others(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    try:
        idle = []
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(pool.path / f"{task.pid}.sock"))
            idle.append(s)
        t0 = time.monotonic()
        for _ in range(20):
            bgtask.Task(task.pid, pool).info()
        assert time.monotonic() - t0 < 2
        for s in idle:
            s.close()
    finally:
        task.delete()


# -- pids reused, stale files ------------------------------------------------------------------

def test_reused_pid_with_stale_files_is_never_taken_for_a_supervisor(
        pool: bgtask.TaskPool, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    """A supervisor died long ago; its pid now belongs to an unrelated process, and the
    pid of its job to another one (a different start time)."""
    stranger, job_stranger = sleeper(), sleeper()
    p = str(pool.path)
    dead_socket(_paths.sock_path(p, stranger.pid))
    fd, _token = _paths.create_token_file(p, stranger.pid)
    start = _process.proc_start_time(job_stranger.pid)
    assert start is not None
    _paths.write_job_record(fd, job_stranger.pid, start - 100)  # same pid, another process
    os.close(fd)
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(stranger.pid, pool).info()
    assert pool.search() == []
    assert task_files(pool) == []
    time.sleep(0.1)
    assert stranger.poll() is None and job_stranger.poll() is None  # neither was signalled


def _spawn_at_pid(pool: bgtask.TaskPool, want: int, argv: list[str]) -> bgtask.Task | None:
    """Spawn so that the supervisor gets pid *want* (root may set ``ns_last_pid``), or
    None when that is not allowed here or other processes keep winning the race.
    spawn() forks the boot process, which forks the supervisor: hence ``want - 2``."""
    for _ in range(30):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(want - 2))
        except OSError:
            return None
        task = pool.spawn(argv)
        if task.pid == want:
            return task
        task.delete()
    return None


def test_a_handle_never_steers_a_newer_task_that_got_the_same_pid(pool: bgtask.TaskPool) -> None:
    old = pool.spawn(["sleep", "60"])
    pid = old.pid
    handle = bgtask.Task(pid, pool)
    handle.info()                                      # bound to this supervisor
    old.delete()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))  # reaped: the pid is free
    new = _spawn_at_pid(pool, pid, ["sleep", "61"])
    if new is None:
        pytest.skip("cannot steer pid allocation here (needs root and ns_last_pid)")
    try:
        with pytest.raises(bgtask.TaskNotFoundError):
            handle.info(fresh=True)                    # its old connection is closed
        for _ in range(2):
            with pytest.raises(bgtask.TaskNotFoundError, match="newer task"):
                handle.info(fresh=True)                # a new one reaches the newcomer
        with pytest.raises(bgtask.TaskNotFoundError, match="newer task"):
            handle.kill()
        assert new.info()["status"]["running"]         # untouched
        assert bgtask.Task(pid, pool).info()["argv"] == ["sleep", "61"]
    finally:
        new.delete()


def test_stale_files_of_every_kind_are_swept_and_only_those(
        pool: bgtask.TaskPool, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    p = str(pool.path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stranger = sleeper()
    # a stale socket without a token, of a pid that is gone
    dead_socket(_paths.sock_path(p, gone.pid))
    # a token without a socket: a supervisor that died before binding (pid gone) ...
    os.close(_paths.create_token_file(p, gone.pid + 100000)[0])
    # ... and one whose pid is now an unrelated program, older than the start-up grace
    os.close(_paths.create_token_file(p, stranger.pid)[0])
    old = time.time() - 3600
    os.utime(_paths.token_path(p, stranger.pid), (old, old))
    # a live task among them
    task = pool.spawn(["sleep", "60"])
    try:
        assert pool.search() == [task]
        assert task_files(pool) == [f"{task.pid}.sock", f"{task.pid}.token"]
        assert stranger.poll() is None
    finally:
        task.delete()


def test_a_fresh_token_of_a_starting_supervisor_is_left_alone(
        pool: bgtask.TaskPool, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    stranger = sleeper()
    os.close(_paths.create_token_file(str(pool.path), stranger.pid)[0])
    assert pool.search() == []
    assert task_files(pool) == [f"{stranger.pid}.token"]


def test_a_socket_that_is_not_a_supervisor(pool: bgtask.TaskPool) -> None:
    """Some other program listens on a socket with a task's name: it is not a task, and
    since it does not refuse connections it is not proven dead either (left alone)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_paths.sock_path(str(pool.path), 4000000))
    listener.listen(8)
    os.close(_paths.create_token_file(str(pool.path), 4000000)[0])
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = listener.accept()
            except OSError:
                continue
            c.sendall(b"\x00\x00\x00\x05hello")  # not a challenge
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(bgtask.TaskNotFoundError):
            bgtask.Task(4000000, pool).info()
        assert pool.search() == []
        assert time.monotonic() - t0 < 2
        assert task_files(pool) == ["4000000.sock", "4000000.token"]
    finally:
        stop.set()
        t.join()
        listener.close()


def test_a_new_supervisor_replaces_stale_files_under_its_own_pid(pool: bgtask.TaskPool) -> None:
    """The pid of a dead supervisor comes round again: the new supervisor (here a forked
    child of the test, which knows its pid in advance) takes over the name."""
    from bgtask._supervisor import boot as _supervisor
    from bgtask._supervisor import main_loop

    p = str(pool.path)
    cfg = build_spec(pool.backend, ["sleep", "60"], meta={"who": "new"}, retain_output=0,
                     max_buffer=1 << 20)
    r, w = os.pipe()
    child = fork()
    if child == 0:  # pragma: no cover -- the child becomes a supervisor and never returns
        try:
            os.close(w)
            os.read(r, 1)
            startup = _supervisor.Startup(p, cfg)
            startup.start()
            main_loop.serve(startup)
        finally:
            os._exit(0)
    os.close(r)
    try:
        dead_socket(_paths.sock_path(p, child))
        fd, _ = _paths.create_token_file(p, child)
        _paths.write_job_record(fd, 1, 1)
        os.close(fd)
        os.write(w, b"g")
        task = bgtask.Task(child, pool)
        info = wait_for(lambda: _try(lambda: task.info(fresh=True)), timeout=10)
        assert info["meta"] == {"who": "new"}
        assert pool.search() == [task]
        task.delete()
    finally:
        os.close(w)
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert task_files(pool) == []


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except bgtask.TaskNotFoundError:
        return None


# -- the pool directory --------------------------------------------------------------------------

def test_pool_directory_deleted_under_running_tasks(pool: bgtask.TaskPool) -> None:
    tasks = [pool.spawn(["sleep", "60"]) for _ in range(2)]
    jobs = [t.info()["child_pid"] for t in tasks]
    shutil.rmtree(pool.path)
    t0 = time.monotonic()
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(tasks[0].pid, pool).info()
    assert pool.search() == []
    assert not os.path.exists(pool.path), "reading does not bring the directory back"
    assert time.monotonic() - t0 < 2
    # A spawn makes the pool again, as it makes any missing pool (0700) ...
    pool.spawn(["true"]).delete()
    assert stat.S_IMODE(os.lstat(pool.path).st_mode) == 0o700
    # ... but nobody can reach the old tasks any more: their supervisors notice (their
    # files are gone), and end like delete.
    for pid in [t.pid for t in tasks] + jobs:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10)


@pytest.mark.parametrize("suffix", [".sock", ".token"])
def test_task_file_removed_under_a_running_task(pool: bgtask.TaskPool, suffix: str) -> None:
    task = pool.spawn(["sleep", "60"])
    job = task.info()["child_pid"]
    os.unlink(pool.path / f"{task.pid}{suffix}")
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(task.pid, pool).info()
    wait_for(lambda: not pid_alive(task.pid) and not pid_alive(job), timeout=10)
    assert task_files(pool) == []


def test_socket_removed_before_the_supervisor_serves(pool: bgtask.TaskPool) -> None:
    """spawn() returns before the supervisor's server runs: a socket unlinked in that
    moment must be noticed too (the fixture checks that the job went with it)."""
    task = pool.spawn(["sleep", "60"])
    os.unlink(pool.path / f"{task.pid}.sock")
    wait_for(lambda: not pid_alive(task.pid), timeout=10)
    wait_for(lambda: task_files(pool) == [], timeout=5)


def test_an_unwritable_pool_fails_spawn_cleanly_and_search_still_works(pool: bgtask.TaskPool) -> None:
    """As another user (root ignores modes): the owner made the pool read-only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    import json

    base = tempfile.mkdtemp(prefix="bgu", dir="/tmp")
    os.chmod(base, 0o755)
    sub = os.path.join(base, "p")
    os.mkdir(sub, 0o700)
    os.chown(sub, 65534, 65534)
    code = ("import json, os, socket, sys, bgtask\n"
            "p = argv[0]; pool = bgtask.TaskPool(p); res = {}\n"
            "res['exe'] = os.access(sys.executable, os.X_OK)\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(p + '/4000001.sock'); s.close()\n"
            "os.chmod(p, 0o500)\n"
            "try:\n"
            "    pool.spawn(['true']); res['spawn'] = 'ok'\n"
            "except Exception as e:\n"
            "    res['spawn'] = [type(e).__name__, str(e)]\n"
            "try:\n"
            "    res['search'] = [t.pid for t in pool.search()]\n"
            "except Exception as e:\n"
            "    res['search'] = [type(e).__name__, str(e)]\n"
            "try:\n"
            "    bgtask.Task(4000001, pool).info(); res['task'] = 'ok'\n"
            "except Exception as e:\n"
            "    res['task'] = type(e).__name__\n"
            "os.chmod(p, 0o700)\n"
            "res['left'] = sorted(os.listdir(p))\n"
            "emit(json.dumps(res))\n")
    try:
        res = json.loads(run_as(65534, code, sub))
        assert res["spawn"][0] == "SpawnError", res
        if res["exe"]:  # else the supervisor itself cannot start as that user
            assert "ermission" in res["spawn"][1], res
        assert res["search"] == [], res
        assert res["task"] == "TaskNotFoundError", res
        assert res["left"] == ["4000001.sock"], res
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_orphan_without_a_job_record_is_found_by_its_environment(pool: bgtask.TaskPool) -> None:
    """A supervisor killed between starting its job and recording it leaves no job pid;
    the sweep finds the orphan (and its children) by BGTASK_PID/BGTASK_POOL instead."""
    from bgtask import _paths

    task = pool.spawn(["sh", "-c", "sleep 60 & exec sleep 60"])
    job = task.info()["child_pid"]
    fd = os.open(_paths.token_path(str(pool.path), task.pid), os.O_RDWR)
    try:
        _paths.write_job_record(fd, None, None)  # as if it died before recording the job
    finally:
        os.close(fd)
    os.kill(task.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(task.pid), timeout=5)
    assert pid_alive(job)
    assert pool.search() == []
    assert task_files(pool) == []
    wait_for(lambda: not processes_of_pool(str(pool.path)), timeout=3)


_STUCK_READER = ("import sys, time\n"
                 "from bgtask._client.connection import open_connection\n"
                 "from bgtask._wire.names import STATE_IDENT\n"
                 "conn = open_connection(sys.argv[1], int(sys.argv[2]))\n"
                 "conn.send((STATE_IDENT, 'stream_read', ('stdout', None, None, True, None), {}))\n"
                 "print('sent', flush=True)\n"
                 "time.sleep(60)\n")


def test_consuming_reads_queue_behind_a_reply_that_never_arrives(pool: bgtask.TaskPool) -> None:
    """A client sends a consuming read of 8 MiB and never reads the reply (its socket
    fills). Another consuming read waits behind it instead of consuming what follows;
    once the stuck client dies, its bytes go back and are read in order, none lost."""
    size = 8 << 20
    task = pool.spawn(py(f"import sys\nsys.stdout.buffer.write(bytes(range(256)) * {size // 256})\n"
                         "sys.stdout.flush(); sys.stdin.readline()\nsys.stdout.buffer.write(b'tail')\n"))
    whole = bytes(range(256)) * (size // 256) + b"tail"
    stuck = None
    try:
        wait_for(lambda: task.stream("stdout").info()["unread"] == size, timeout=20)
        stuck = subprocess.Popen(py(_STUCK_READER) + [str(pool.path), str(task.pid)], stdout=subprocess.PIPE)
        assert stuck.stdout is not None
        assert stuck.stdout.readline() == b"sent\n"
        # The stuck reply has claimed everything.
        wait_for(lambda: task.stream("stdout").info()["unread"] == 0, timeout=10)
        task.stream("stdin").write(b"go\n")
        assert task.wait(timeout=20) == 0  # the tail is held now
        # Behind the unsettled reply: the tail is neither read nor consumed.
        assert task.stream("stdout").read(timeout=0.5) == b""
        stuck.kill()
        stuck.wait()
        got = b""
        while len(got) < len(whole):
            piece = task.stream("stdout").read(timeout=10)
            assert piece, f"only {len(got)} of {len(whole)} bytes came back"
            got += piece
        assert got == whole
    finally:
        if stuck is not None:
            stuck.kill()  # no error if it is dead already; wait() reaps it
            stuck.wait()
            assert stuck.stdout is not None
            stuck.stdout.close()
        task.delete()
