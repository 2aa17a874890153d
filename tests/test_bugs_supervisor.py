"""Supervisor bugs of issues 11 and 12, each pinned at its cause with real processes.

Each test failed on 5f13101 (the code before the supervisor split) unless its docstring
says otherwise. The signals-by-hand contract (issue 10) is in test_faults.py.
"""

from __future__ import annotations

import json
import marshal
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import PY, child_result, pid_alive, processes_of_pool, py, start_in_child, task_files, wait_for

import bgtask

pytestmark = pytest.mark.timeout(60)

Spawn = Callable[..., bgtask.Task]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- issue 11 #2: wait() racing another client's restart() ----------------------------------------

def test_wait_answers_the_ended_runs_status_when_another_client_restarts(spawn: Spawn, tmp_path: Path) -> None:
    """The first run exits 3 leaving a child that holds stdout (so wait() waits up to
    COLLECT_GRACE for the output); another client restarts meanwhile, and the new run
    keeps running. The waiter gets 3 -- not a RemoteError (AssertionError), not None."""
    ran = tmp_path / "ran"
    task = spawn(f"if [ -e {ran} ]; then exec sleep 60; fi; touch {ran}; sleep 2 & exit 3", shell=True)
    wait_for(lambda: task.info(fresh=True)["status"]["returncode"] == 3)
    result: dict[str, object] = {}

    def waiter() -> None:  # its own thread: its own connection, as another client
        try:
            result["rc"] = task.wait(timeout=10)
        except Exception as exc:  # reported below
            result["rc"] = exc

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)  # the waiter is collecting the output now (the child holds stdout)
    assert task.restart() is True
    t.join(10)
    assert result["rc"] == 3, result


# -- issue 11 #3: a failed spawn starts its job later anyway ---------------------------------------

def _set_spawn_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    import importlib

    for name in ("bgtask._client.spawn", "bgtask._client.pool"):  # now / at 5f13101
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "SPAWN_TIMEOUT"):
            monkeypatch.setattr(mod, "SPAWN_TIMEOUT", seconds)
            return
    raise AssertionError("no SPAWN_TIMEOUT")


def test_a_failed_spawn_never_starts_its_job_later(pool: bgtask.TaskPool, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped process holds the sweep lock the new supervisor takes while making its
    files; spawn() gives up (SpawnError). Once the lock is free, the supervisor must not
    start the job: it gave up when its spawner did."""
    _set_spawn_timeout(monkeypatch, 1.0)
    path = str(pool.path / f".bgtask-{os.geteuid()}.lock")
    holder = subprocess.Popen(
        [PY, "-c", "import fcntl, os, sys, time\n"
                   "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
                   "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", path],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        os.kill(holder.pid, signal.SIGSTOP)
        # Free the lock a while after spawn() gave up (it then sweeps, under that lock).
        freer = threading.Timer(2.0, holder.kill)
        freer.start()
        marker = tmp_path / "started"
        t0 = time.monotonic()
        with pytest.raises(bgtask.SpawnError):
            pool.spawn(["sh", "-c", f"touch {marker}; exec sleep 60"])
        freer.join()
        assert time.monotonic() - t0 < 20
        time.sleep(1.5)  # the old supervisor got the lock by now, and started the job
        assert not marker.exists(), "the job of a failed spawn was started"
        assert processes_of_pool(str(pool.path)) == []
        assert task_files(pool) == []
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]


# -- issue 11 #6: a lock stays exclusive while the orphaned job runs -----------------------------

def test_a_lock_is_held_while_the_orphan_of_a_killed_supervisor_runs(pool: bgtask.TaskPool, spawn: Spawn) -> None:
    task = spawn(["sleep", "60"], lock="nightly")
    job = task.info()["child_pid"]
    os.kill(task.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(task.pid))
    try:
        assert pid_alive(job)
        with pytest.raises(bgtask.TaskLockedError):
            spawn(["sleep", "60"], lock="nightly")
    finally:
        os.kill(job, signal.SIGKILL)
    wait_for(lambda: not pid_alive(job))
    pool.search()  # sweeps the dead supervisor's files
    # The orphan is gone: the lock is free again, and restart() takes it again.
    again = spawn(["true"], lock="nightly")
    assert again.wait(timeout=10) == 0
    assert again.restart() is True
    assert again.wait(timeout=10) == 0


def test_a_restarted_run_holds_the_lock_too(spawn: Spawn) -> None:
    task = spawn(["sleep", "60"], lock="L")
    task.kill("KILL")
    task.wait(timeout=10)
    assert task.restart() is True
    with pytest.raises(bgtask.TaskLockedError):
        spawn(["true"], lock="L")


# -- issue 11 #7: delete() of a finished task leaves TERM-ignoring stragglers ----------------------

def test_delete_kills_stragglers_that_ignore_term(spawn: Spawn) -> None:
    task = spawn("(trap '' TERM; exec sleep 60) & echo $!", shell=True)
    assert task.wait(timeout=10) == 0
    straggler = int(task.stream("stdout").read())
    assert pid_alive(straggler)
    t0 = time.monotonic()
    task.delete(timeout=1)
    assert time.monotonic() - t0 < 5
    wait_for(lambda: not pid_alive(straggler), timeout=3)


# -- issue 11 #8: a job that moved to another process group -------------------------------------

_MOVE = ("import os, sys, time\n"
         "os.setpgid(0, os.getpgid(os.getppid()))  # into the supervisor's group\n"
         "print('moved', flush=True); time.sleep(60)")


def test_kill_reaches_a_job_that_left_its_process_group(spawn: Spawn) -> None:
    task = spawn(py(_MOVE))
    wait_for(lambda: task.stream("stdout").read(0) == b"moved\n")
    assert task.kill("TERM") is True
    assert task.wait(timeout=10) == -signal.SIGTERM


def test_delete_reaches_a_job_that_left_its_process_group(spawn: Spawn) -> None:
    task = spawn(py(_MOVE))
    job = task.info()["child_pid"]
    wait_for(lambda: task.stream("stdout").read(0) == b"moved\n")
    task.delete(timeout=1)
    wait_for(lambda: not pid_alive(job), timeout=3)


# -- issue 11 #12: a consumed message's memory kept while its writer is idle ---------------------

def test_a_consumed_message_is_freed_while_its_writer_is_idle(spawn: Spawn) -> None:
    task = spawn(["sleep", "60"])
    base = _rss(task.pid)
    size = 64 << 20
    task.stream("control").write(b"x" * size)  # this thread's connection then stays idle
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(task.stream("control").read()))
    reader.start()
    reader.join(30)
    assert len(got) == 1 and len(got[0]) == size  # type: ignore[arg-type]
    got.clear()
    wait_for(lambda: _rss(task.pid) < base + size // 4, timeout=5)


# -- issue 11 #13: exposed methods check their arguments against the state they change ------------

def test_stream_putback_cannot_rewind_offsets(spawn: Spawn) -> None:
    task = spawn(["sleep", "60"])
    task.stream("control").write("one")
    assert task.stream("control").read() == ["one"]
    with pytest.raises(ValueError):
        task.call_remote_method("stream_putback", "control", [b"x"] * 5, 1)
    info = task.info(fresh=True)["streams"]["control"]
    assert (info["start"], info["limit"], info["unread"]) == (1, 1, 0)


def test_a_consuming_read_cannot_consume_past_the_limit(spawn: Spawn) -> None:
    """A consuming read starting past the end consumed the bytes before it unread (and
    said its next offset was past the limit)."""
    task = spawn("echo hello; exec sleep 60", shell=True)
    out = task.stream("stdout")
    wait_for(lambda: out.limit == 6)
    with pytest.raises(ValueError):
        task.call_remote_method("stream_read", "stdout", 100, None, True, 0)
    assert out.read() == b"hello\n"


# -- issue 12: spawn() returned tasks that died when their threads could not start ----------------

_OTHER_UID = 50000 + os.getpid() % 10000  # nobody else's processes: we count them


def _processes_of(uid: int, zombies: bool = False) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and (zombies or pid_alive(int(name))):
                    found.append(int(name))
            except OSError:
                pass
    return found


def _spawn_as(uid: int, nproc: int, pool: str) -> dict[str, object]:
    """In a child that became *uid* under RLIMIT_NPROC=*nproc*: start a supervisor the
    way spawn() does (boot.main, spec on stdin, reports on stdout -- in-process, as the
    interpreter may be out of that user's reach), then ask the task for its info."""
    from bgtask._supervisor import boot, server

    assert server  # imported now, while this user can read it

    spec = {"argv": ["/bin/sleep", "30"], "command": None, "shell": False, "cwd": "/",
            "retain": 0, "max_buffer": 1 << 20, "drop": False, "lock": None, "meta": {},
            "env": {"PATH": "/usr/bin:/bin", "BGTASK_POOL": pool}}

    def body() -> bytes:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        res: dict[str, object] = {}
        r0, w0 = os.pipe()
        r1, w1 = os.pipe()
        try:
            g = os.fork()
        except OSError as exc:
            return json.dumps({"outcome": "raised", "why": str(exc)}).encode()
        if g == 0:
            try:
                os.dup2(r0, 0)
                os.dup2(w1, 1)
                for fd in (r0, w0, r1, w1):
                    os.close(fd)
                boot.main(pool)
            finally:
                os._exit(1)
        os.close(r0)
        os.close(w1)
        os.write(w0, marshal.dumps(spec))
        os.close(w0)
        os.waitpid(g, 0)
        data = b""
        while True:
            part = os.read(r1, 65536)
            if not part:
                break
            data += part
            if b"ok" in data or b"error" in data:
                time.sleep(0.05)
        final = None
        while len(data) >= 4:
            n = int.from_bytes(data[:4], "big")
            msg = marshal.loads(data[4:4 + n])
            data = data[4 + n:]
            if msg[0] != "pid":
                final = msg
        if final is None or final[0] != "ok":
            res["outcome"] = "raised"
            res["why"] = repr(final)
            return json.dumps(res).encode()
        time.sleep(0.5)
        task = bgtask.Task(int(final[1]), bgtask.TaskPool(pool))
        try:
            res["state"] = task.info(fresh=True)["state"]
            res["outcome"] = "answers"
            task.delete(timeout=1)
        except Exception as exc:
            res["outcome"] = "returned a dead task"
            res["why"] = f"{type(exc).__name__}: {exc}"
        return json.dumps(res).encode()

    pid, fd = start_in_child(body)
    code, out = child_result(pid, fd)
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: RLIMIT_NPROC does not apply to root")
def test_spawn_under_a_low_process_limit_answers_or_raises() -> None:
    """RLIMIT_NPROC counts threads. At every limit, the supervisor either reports an
    error (spawn() raises SpawnError) or returns a task that answers -- never "started"
    followed by a task that died because its threads could not start."""
    uid = _OTHER_UID
    outcomes = {}
    for nproc in (4, 6, 8, 10):
        pool = tempfile.mkdtemp(prefix="bgn", dir="/tmp")
        os.chown(pool, uid, uid)
        try:
            outcomes[nproc] = _spawn_as(uid, nproc, pool)
        finally:
            left = _processes_of(uid)
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            # Zombies count against RLIMIT_NPROC too, until init reaps them.
            wait_for(lambda: not _processes_of(uid, zombies=True), timeout=5)
            subprocess.run(["rm", "-rf", pool], check=False)
    assert all(o["outcome"] in ("raised", "answers") for o in outcomes.values()), outcomes
    assert any(o["outcome"] == "answers" for o in outcomes.values()), outcomes
