"""Wire-level failures with real processes and signals: a client must get one of our
exceptions, in time, and never die or hang."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import py, wait_for

import bgtask
from bgtask import _paths, _process
from bgtask._client import connection


def sleeper(pool: bgtask.TaskPool) -> bgtask.Task:
    return pool.spawn(py("import time; time.sleep(60)"))


def test_a_client_with_default_sigpipe_survives_a_supervisor_dying_between_calls(
        pool: bgtask.TaskPool) -> None:
    task = sleeper(pool)
    job = task.info()["child_pid"]
    assert job is not None
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, bgtask\n"
         "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
         f"t = bgtask.Task({task.pid})\n"
         "t.info()\n"
         "print('ready', flush=True)\n"
         "sys.stdin.readline()\n"
         "try:\n"
         "    t.info(fresh=True)\n"
         "except bgtask.TaskNotFoundError:\n"
         "    print('not found', flush=True)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "BGTASK_POOL": str(pool.path)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        os.kill(task.pid, signal.SIGKILL)  # its connection stays cached in the child
        while _alive(task.pid):
            time.sleep(0.01)
        out, _ = child.communicate("\n", timeout=10)
        assert child.returncode == 0, f"the client died with {child.returncode} (SIGPIPE is -13)"
        assert out == "not found\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        os.killpg(job, signal.SIGKILL)  # orphaned by the supervisor's death


def _alive(pid: int) -> bool:
    return not _process.is_gone(pid)


def test_400_clients_at_once_wait_their_turn_and_are_served(pool: bgtask.TaskPool) -> None:
    task = sleeper(pool)
    try:
        errors: list[BaseException] = []
        go = threading.Event()

        def client() -> None:
            go.wait()
            try:
                bgtask.Task(task.pid).info()
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(400)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(60)
        assert not errors, f"{len(errors)} of 400 failed, e.g. {errors[0]!r}"
    finally:
        task.delete()


def test_a_stopped_supervisor_is_unresponsive_within_about_a_second(pool: bgtask.TaskPool) -> None:
    task = sleeper(pool)
    os.kill(task.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _process.proc_state(task.pid) == "T")  # every thread stopped
        t0 = time.monotonic()
        with pytest.raises(bgtask.TaskUnresponsiveError) as info:
            bgtask.Task(task.pid).info()
        took = time.monotonic() - t0
        assert took < 3.0, f"took {took:.1f} s"
        assert isinstance(info.value, TimeoutError)
        assert info.value.pid == task.pid and info.value.since is not None
        assert "since" in str(info.value)
    finally:
        os.kill(task.pid, signal.SIGCONT)
        task.delete()


def test_a_call_in_flight_to_a_stopped_supervisor_is_unresponsive(
        pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch) -> None:
    task = sleeper(pool)
    try:
        handle = bgtask.Task(task.pid)
        handle.info()  # connected
        monkeypatch.setattr(connection, "ANSWER_GRACE", 0.5)
        os.kill(task.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _process.proc_state(task.pid) == "T")  # every thread stopped
            with pytest.raises(bgtask.TaskUnresponsiveError):
                handle.info(fresh=True)
        finally:
            os.kill(task.pid, signal.SIGCONT)
    finally:
        task.delete()


def test_a_handshake_sent_a_byte_at_a_time_is_cut_off(pool: bgtask.TaskPool) -> None:
    """One deadline for the whole handshake (10 s), not one per read."""
    task = sleeper(pool)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(20)
        sock.connect(_paths.sock_path(str(pool.path), task.pid))
        t0 = time.monotonic()
        try:
            assert sock.recv(4096)  # the challenge
            closed = False
            for byte in b"\x00\x00\x00\x30" + b"x" * 48:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    closed = True
                    break
                ready, _, _ = __import__("select").select([sock], [], [], 1.0)
                if ready and sock.recv(1) == b"":
                    closed = True
                    break
                if time.monotonic() - t0 > 16:
                    break
            assert closed, "the trickling handshake was never cut off"
            assert time.monotonic() - t0 < 13
        finally:
            sock.close()
        assert task.info()["pid"] == task.pid
    finally:
        task.delete()


def test_silent_connections_do_not_lock_the_owner_out(pool: bgtask.TaskPool) -> None:
    """600 connections that never speak, against a supervisor with 1024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        task = sleeper(pool)  # the supervisor inherits the 1024-fd limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    silent: list[socket.socket] = []
    try:
        path = _paths.sock_path(str(pool.path), task.pid)
        for _ in range(600):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(path)
            silent.append(s)
        time.sleep(0.5)  # let the supervisor accept what it will
        t0 = time.monotonic()
        assert bgtask.Task(task.pid).info()["pid"] == task.pid
        assert time.monotonic() - t0 < 9
    finally:
        for s in silent:
            s.close()
        task.delete()
