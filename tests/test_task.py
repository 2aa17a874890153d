"""Task: the handle, connecting, info, meta, signals, pause, restart, wait, delete, fork."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, child_result, pid_alive, py, start_in_child, task_files, wait_for

import bgtask


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- the handle ------------------------------------------------------------------------------------

def test_task_handle_does_not_connect(pool: bgtask.TaskPool) -> None:
    real = pool.spawn(["sleep", "30"])
    try:
        fds = open_fds()
        for _ in range(1000):
            bgtask.Task(real.pid, pool)
        t = bgtask.Task(4_000_000, pool)  # no such task: nothing is checked yet
        assert t.pid == 4_000_000 and t.pool == pool
        assert open_fds() == fds, "Task() opened something"
        with pytest.raises(bgtask.TaskNotFoundError):
            t.info()
        assert bgtask.Task(real.pid).pool == pool  # the default pool (BGTASK_POOL)
    finally:
        real.delete()


@pytest.mark.parametrize(("pid", "exc"), [
    pytest.param("123", TypeError, id="str"),
    pytest.param(1.0, TypeError, id="float"),
    pytest.param(None, TypeError, id="None"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param(0, ValueError, id="zero"),
    pytest.param(-5, ValueError, id="negative"),
])
def test_task_rejects_bad_pids(pool: bgtask.TaskPool, pid: object, exc: type) -> None:
    with pytest.raises(exc):
        bgtask.Task(pid)  # type: ignore[arg-type]


def test_task_rejects_a_pool_that_is_not_a_pool(pool: bgtask.TaskPool) -> None:
    with pytest.raises(TypeError):
        bgtask.Task(123, str(pool.path))  # type: ignore[arg-type]


def test_task_equality_hash_and_pickle(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        other = bgtask.Task(task.pid, pool)
        assert other == task and hash(other) == hash(task)
        assert bgtask.Task(task.pid + 1, pool) != task
        back = pickle.loads(pickle.dumps(task))
        assert back == task
        assert back.info()["pid"] == task.pid
        assert str(task.pid) in repr(task) and "running" in repr(task)
    finally:
        task.delete()
    assert "gone" in repr(task)


# -- connect / disconnect -------------------------------------------------------------------------

def test_connect_raises_or_fills_fail_reason(pool: bgtask.TaskPool) -> None:
    missing = bgtask.Task(4_000_000, pool)
    with pytest.raises(bgtask.TaskNotFoundError) as ei:
        missing.connect()
    assert ei.value.pid == 4_000_000
    reason: dict = {}
    assert missing.connect(fail_reason=reason) is False
    assert reason, "fail_reason was not filled"
    assert isinstance(reason.get("error"), bgtask.TaskNotFoundError)
    assert reason.get("type") == "TaskNotFoundError"
    assert "4000000" in reason.get("message", "")


def test_connect_disconnect_and_reconnect(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        fds = open_fds()
        reason: dict = {}
        assert task.connect(fail_reason=reason) is True
        assert reason == {}
        assert task.connect() is True  # again: the same connection
        assert len(open_fds() - fds) == 1, "one connection per task and thread"
        task.disconnect()
        assert open_fds() == fds, "disconnect() closed the connection"
        task.disconnect()  # twice is fine
        assert task.info(fresh=True)["pid"] == task.pid  # reconnects on use
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_one_handle_used_from_many_threads(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("print('x' * 100)"), meta={"name": "threads"})
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(30):
                assert task.info(fresh=True)["meta"]["name"] == "threads"
                assert task.stream("stdout").read(0, 5) in (b"", b"xxxxx")
                assert task.stream("stderr").limit == 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
    finally:
        task.delete()


def test_threads_that_end_do_not_leave_connections_behind(pool: bgtask.TaskPool) -> None:
    """A handle shared by short-lived threads (a thread per request) must not keep one
    socket per thread that ever used it: in the caller, and a thread in the supervisor."""
    task = pool.spawn(["sleep", "30"])
    try:
        task.info(fresh=True)
        fds = open_fds()
        for _ in range(20):
            th = threading.Thread(target=lambda: task.info(fresh=True))
            th.start()
            th.join(10)
        import gc

        gc.collect()
        assert len(open_fds() - fds) == 0, "connections of finished threads are still open"
        assert task.info(fresh=True)["pid"] == task.pid
    finally:
        task.delete()


def test_connection_after_the_supervisor_is_gone(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    other = bgtask.Task(task.pid, pool)
    assert other.connect()
    task.delete()
    with pytest.raises(bgtask.TaskNotFoundError):
        other.info(fresh=True)
    reason: dict = {}
    assert other.connect(fail_reason=reason) is False
    assert isinstance(reason["error"], bgtask.TaskNotFoundError)


# -- info ------------------------------------------------------------------------------------------------

def test_info_keys_and_values(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    before = time.time()
    task = pool.spawn(["sleep", "30"], meta={"name": "info"}, cwd=tmp_path)
    try:
        info = task.info()
        assert info["pid"] == task.pid
        assert isinstance(info["child_pid"], int) and pid_alive(info["child_pid"])
        assert info["argv"] == ["sleep", "30"]
        assert info["cwd"] == str(tmp_path)
        assert info["meta"] == {"name": "info"}
        assert info["owner"] == os.geteuid()
        assert isinstance(info["started_at"], float) and before - 1 <= info["started_at"] <= time.time() + 1
        assert info["ended_at"] is None
        assert info["restarts"] == 0
        assert info["status"] == {"running": True, "paused": False, "exit_code": None, "signal": None,
                                  "returncode": None}
        assert set(info["streams"]) >= {"stdout", "stderr", "stdin", "data", "control"}
        for name, s in info["streams"].items():
            assert {"start", "limit"} <= set(s), name
            assert s["start"] == s["limit"] == 0, name
        task.kill()
        assert task.wait(timeout=10) == -signal.SIGKILL
        info = task.info(fresh=True)
        assert info["child_pid"] is None
        assert isinstance(info["ended_at"], float) and info["ended_at"] >= info["started_at"]
        assert info["status"] == {"running": False, "paused": False, "exit_code": None,
                                  "signal": signal.SIGKILL, "returncode": -signal.SIGKILL}
    finally:
        task.delete()


def test_info_of_a_normal_exit(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys; sys.exit(7)"))
    try:
        assert task.wait(timeout=10) == 7
        st = task.info(fresh=True)["status"]
        assert st == {"running": False, "paused": False, "exit_code": 7, "signal": None, "returncode": 7}
    finally:
        task.delete()


def test_info_is_cached_until_fresh(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        first = task.info()
        assert first["status"]["running"] is True
        task.kill()
        task.wait(timeout=10)
        assert task.info() is first, "info() is cached"
        assert task.info()["status"]["running"] is True  # stale, as asked for
        fresh = task.info(fresh=True)
        assert fresh["status"]["running"] is False
        assert task.info() is fresh
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_info_is_never_stale_in_the_supervisor(pool: bgtask.TaskPool) -> None:
    """The supervisor keeps its encoded info reply while nothing changes: every kind of
    change must show in the very next info(fresh=True)."""
    code = ("import sys, bgtask\n"
            "me = bgtask.current()\n"
            "for line in sys.stdin:\n"
            "    w = line.strip()\n"
            "    if w == 'out': print('x', flush=True)\n"
            "    elif w == 'err': print('e', file=sys.stderr, flush=True)\n"
            "    elif w == 'data': me.stream('data').write(1)\n"
            "    elif w == 'exit': sys.exit(3)\n")
    task = pool.spawn(py(code), env={"PYTHONPATH": REPO})

    def info() -> dict:
        task.info(fresh=True)
        return task.info(fresh=True)  # usually answered from the supervisor's cache

    def stream(name: str) -> dict:
        return info()["streams"][name]

    try:
        stdin = task.stream("stdin")
        assert stream("stdout")["limit"] == 0
        stdin.write("out\n")
        wait_for(lambda: stream("stdout")["limit"] == 2)   # output arrived (the pump)
        assert stream("stdin")["delivered"] == 4              # the feeder
        stdin.write("err\n")
        wait_for(lambda: stream("stderr")["limit"] == 2)
        assert task.apply_meta(k=1) and info()["meta"] == {"k": 1}
        assert task.stream("stdout").read() == b"x\n"
        assert stream("stdout")["unread"] == 0 and stream("stdout")["cursor"] == 2
        task.pause()
        assert info()["status"]["paused"] is True
        task.resume()
        assert info()["status"]["paused"] is False
        stdin.write("data\n")
        wait_for(lambda: stream("data")["limit"] == 1)
        task.stream("control").write("c")
        assert stream("control")["limit"] == 1
        assert task.stream("control").read() == ["c"]
        assert stream("control")["unread"] == 0
        stdin.write("exit\n")
        assert task.wait(10) == 3
        i = info()
        assert i["status"]["returncode"] == 3 and i["child_pid"] is None and i["ended_at"]
        assert i["streams"]["stdin"]["eof"] is True
        assert task.restart() is True
        i = info()
        assert i["restarts"] == 1 and i["status"]["running"] and i["ended_at"] is None
        stdin = task.stream("stdin")
        stdin.close()
        wait_for(lambda: not info()["status"]["running"])  # EOF on stdin ends the job
        assert info()["status"]["returncode"] == 0
    finally:
        task.delete()


# -- apply_meta --------------------------------------------------------------------------------------

def test_apply_meta_has_dict_update_semantics(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"], meta={"a": 1, "b": 2})
    try:
        assert task.apply_meta({"b": 3}, c=4) == {"a": 1, "b": 3, "c": 4}
        assert task.apply_meta(c=None) == {"a": 1, "b": 3, "c": None}
        assert task.apply_meta({"a": "m"}, a="kw") == {"a": "kw", "b": 3, "c": None}  # kw wins
        assert task.apply_meta() == {"a": "kw", "b": 3, "c": None}
        assert task.apply_meta({}) == {"a": "kw", "b": 3, "c": None}
        # visible to any other handle, and in our cached info
        assert bgtask.Task(task.pid, pool).info()["meta"] == {"a": "kw", "b": 3, "c": None}
        assert task.info()["meta"] == {"a": "kw", "b": 3, "c": None}
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_apply_meta_merges_in_the_supervisor(pool: bgtask.TaskPool) -> None:
    """Concurrent updates of different keys from different clients all survive: the
    merge happens in the supervisor, not as read-modify-write in a client."""
    task = pool.spawn(["sleep", "30"], meta={"base": 0})
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        handle = bgtask.Task(task.pid, pool)
        try:
            for i in range(25):
                handle.apply_meta({f"{k}-{i}": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
        meta = task.info(fresh=True)["meta"]
        assert len(meta) == 1 + 4 * 25
        assert meta["3-24"] == 24 and meta["base"] == 0
    finally:
        task.delete()


def test_apply_meta_refuses_bad_values_before_sending(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"], meta={"a": 1})
    try:
        with pytest.raises(TypeError):
            task.apply_meta({1: "x"})
        with pytest.raises(TypeError):
            task.apply_meta(ok=1, gen=(i for i in ()))  # dill cannot serialize a generator
        with pytest.raises(TypeError):
            task.apply_meta(42)  # type: ignore[arg-type]
        assert task.info(fresh=True)["meta"] == {"a": 1}, "nothing of a refused update was applied"
    finally:
        task.delete()


def test_apply_meta_after_the_job_has_ended(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        task.wait(timeout=10)
        assert task.apply_meta(result="done") == {"result": "done"}
    finally:
        task.delete()


# -- kill --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "kill", "sigkill", 9, signal.SIGKILL, "9"])
def test_kill_accepts_names_numbers_and_signals(pool: bgtask.TaskPool, sig: object) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        assert task.kill(sig) is True
        assert task.wait(timeout=10) == -9
    finally:
        task.delete()


def test_kill_default_is_kill_and_term_works(pool: bgtask.TaskPool) -> None:
    a = pool.spawn(["sleep", "30"])
    b = pool.spawn(["sleep", "30"])
    try:
        assert a.kill() is True
        assert b.kill("TERM") is True
        assert a.wait(timeout=10) == -signal.SIGKILL
        assert b.wait(timeout=10) == -signal.SIGTERM
        assert b.info(fresh=True)["status"]["signal"] == signal.SIGTERM
    finally:
        a.delete()
        b.delete()


def test_kill_reaches_the_whole_process_group(pool: bgtask.TaskPool) -> None:
    task = pool.spawn("sleep 30 & echo $!; wait", shell=True)
    try:
        grandchild = int(task.stream("stdout").read(timeout=10))
        assert pid_alive(grandchild)
        assert task.kill("TERM") is True
        assert task.wait(timeout=10) == -signal.SIGTERM
        wait_for(lambda: not pid_alive(grandchild), timeout=5)
    finally:
        task.delete()


def test_kill_returns_false_when_the_job_is_not_running(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        assert task.wait(timeout=10) == 0
        assert task.kill() is False
        assert task.kill("TERM") is False
        assert task.info(fresh=True)["status"]["returncode"] == 0, "the exit status is unchanged"
    finally:
        task.delete()


@pytest.mark.parametrize(("sig", "exc"), [
    ("NOPE", ValueError), ("SIGNOPE", ValueError), ("", ValueError), (0, ValueError), (999, ValueError),
    (-9, ValueError), (1.5, TypeError), (None, TypeError), (True, TypeError),
])
def test_bad_signal_raises_before_anything_is_sent(pool: bgtask.TaskPool, sig: object, exc: type) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        with pytest.raises(exc):
            task.kill(sig)
        assert task.info(fresh=True)["status"]["running"] is True
    finally:
        task.delete()


# -- pause / resume --------------------------------------------------------------------------------

TICKER = py("import time\nwhile True:\n    print('t', flush=True)\n    time.sleep(0.01)")


@pytest.mark.timeout(20)
def test_pause_stops_the_job_and_resume_continues_it(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(TICKER)
    out = task.stream("stdout")
    try:
        wait_for(lambda: out.limit > 0)
        assert task.pause() in (True, None)
        st = task.info(fresh=True)["status"]
        assert st["paused"] is True and st["running"] is True
        # Let output already in the pipe arrive, then nothing more may come.
        seen = [out.limit]

        def settled() -> bool:
            time.sleep(0.05)
            seen.append(out.limit)
            return seen[-1] == seen[-2]

        wait_for(settled, timeout=5)
        frozen = out.limit
        time.sleep(0.3)
        assert out.limit == frozen, "a paused job produced output"
        assert "paused" in repr(task)
        task.resume()
        st = task.info(fresh=True)["status"]
        assert st["paused"] is False and st["running"] is True
        wait_for(lambda: out.limit > frozen, timeout=5)
        task.pause(True)
        assert task.info(fresh=True)["status"]["paused"] is True
        task.pause(False)  # = resume
        assert task.info(fresh=True)["status"]["paused"] is False
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_status_follows_quick_pause_resume_pairs(pool: bgtask.TaskPool) -> None:
    """The supervisor also sees each stop and continue of its job; a late "stopped" report
    must not override a resume() that came after it (nor "continued" a later pause())."""
    task = pool.spawn(["sleep", "30"])

    def paused() -> bool:
        return bool(task.info(fresh=True)["status"]["paused"])

    try:
        for _ in range(100):
            task.pause()
            task.resume()
            time.sleep(0.002)  # the reaper's reports come in between
            wait_for(lambda: not paused(), timeout=2)
        time.sleep(0.05)
        assert not paused()
        for _ in range(100):
            task.resume()
            task.pause()
            time.sleep(0.002)
            wait_for(paused, timeout=2)
        time.sleep(0.05)
        assert paused()
        child = task.info()["child_pid"]
        with open(f"/proc/{child}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T", "paused in name only"
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_a_job_stopped_from_outside_shows_as_paused(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        child = task.info()["child_pid"]
        os.kill(child, signal.SIGSTOP)
        wait_for(lambda: task.info(fresh=True)["status"]["paused"], timeout=5)
        os.kill(child, signal.SIGCONT)
        wait_for(lambda: not task.info(fresh=True)["status"]["paused"], timeout=5)
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_a_paused_job_can_be_killed(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        task.pause()
        assert task.kill() is True
        assert task.wait(timeout=10) == -signal.SIGKILL
        st = task.info(fresh=True)["status"]
        assert st["running"] is False and st["paused"] is False
        assert task.resume() is False, "nothing to resume"
    finally:
        task.delete()


@pytest.mark.timeout(40)
def test_a_paused_job_can_be_deleted(pool: bgtask.TaskPool) -> None:
    """The job exits right after its stop was reported: the supervisor must still see the
    exit (repeated: it is a race between the stop report and the exit)."""
    for i in range(24):
        task = pool.spawn(["sleep", "30"])
        child = task.info()["child_pid"]
        task.pause()
        t0 = time.monotonic()
        if i % 2:
            task.delete(timeout=5)
            assert time.monotonic() - t0 < 3, "TERM+CONT should end a paused job at once"
        else:
            assert task.kill("TERM") is True
            task.resume()
            assert task.wait(timeout=3) == -signal.SIGTERM, "the exit of a paused job was missed"
            task.delete()
        assert not pid_alive(child)


# -- restart --------------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_restart_is_refused_while_running(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        child = task.info()["child_pid"]
        assert task.restart() is False
        info = task.info(fresh=True)
        assert info["restarts"] == 0 and info["child_pid"] == child
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_restart_reruns_the_same_job_and_offsets_continue(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    code = ("import json, os, sys;"
            "sys.stdout.write(json.dumps([os.getcwd(), os.environ['BGT_MARK'], sys.argv[1:]]) + '\\n');"
            "sys.stdout.flush(); sys.stderr.write('e\\n'); sys.stdin.read(); sys.exit(3)")
    # retain_output=0: what was read is freed, so start shows the offsets going on
    task = pool.spawn(py(code) + ["arg"], env={"BGT_MARK": "same"}, cwd=tmp_path, retain_output=0)
    try:
        out = task.stream("stdout")
        first_line = out.read(timeout=10)
        n = len(first_line)
        assert json.loads(first_line) == [str(tmp_path), "same", ["arg"]]
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 3
        first = task.info(fresh=True)
        assert first["status"]["exit_code"] == 3

        assert task.restart() is True
        info = task.info(fresh=True)
        assert info["restarts"] == 1
        assert info["status"] == {"running": True, "paused": False, "exit_code": None, "signal": None,
                                  "returncode": None}, "the exit status resets"
        assert info["ended_at"] is None
        assert info["started_at"] >= first["started_at"]
        assert info["child_pid"] not in (None, first["child_pid"])
        assert info["argv"] == first["argv"]
        assert task.stream("stdin").eof is False, "stdin is open again"
        # offsets continue where the first run ended
        second_line = out.read(timeout=10)
        assert second_line == first_line, "same argv, env and cwd"
        assert out.limit == 2 * n
        assert out.start == 2 * n
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 3
        assert task.stream("stderr").read() == b"e\ne\n"
        assert task.stream("stderr").limit == 4
        assert out.eof is True
        assert task.restart() is True
        assert out.eof is False, "eof holds until a restart"
        assert task.kill() is True
        assert task.wait(timeout=10) == -9
        assert task.info(fresh=True)["restarts"] == 2
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_restart_output_comes_after_the_held_back_output_of_the_run_before(pool: bgtask.TaskPool,
                                                                         tmp_path: Path) -> None:
    """The first run is killed while its output is held back by a full buffer (some of it
    still in the pipe); after restart() the new run's output follows all of it."""
    flag = tmp_path / "ran-once"
    script = f"if [ -e {flag} ]; then echo SECOND-RUN; else touch {flag}; head -c 200000 /dev/zero; fi"
    task = pool.spawn(script, shell=True, max_buffer=20_000)
    try:
        out = task.stream("stdout")
        wait_for(lambda: out.info()["unread"] >= 20_000)
        time.sleep(0.1)
        assert task.info(fresh=True)["status"]["running"], "the first run should be held back"
        assert task.kill() is True
        assert task.wait(timeout=10) == -signal.SIGKILL
        assert task.restart() is True
        data = b"".join(out.follow())
        assert data.endswith(b"SECOND-RUN\n")
        head = data[: -len(b"SECOND-RUN\n")]
        assert len(head) > 20_000 and head.count(0) == len(head), "the first run's output was interleaved"
        assert task.wait(timeout=10) == 0
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_restart_that_cannot_exec_raises_spawn_error(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    task = pool.spawn([str(script)], lock="restart-lock")
    try:
        assert task.wait(timeout=10) == 0
        script.unlink()
        with pytest.raises(bgtask.SpawnError) as ei:
            task.restart()
        assert not isinstance(ei.value, bgtask.TaskLockedError)
        assert str(script) in str(ei.value)
        pool.spawn(["true"], lock="restart-lock").delete()  # the failed restart let the lock go
        info = task.info(fresh=True)
        assert info["status"]["running"] is False and info["status"]["returncode"] == 0
        assert info["restarts"] == 0
        assert task.stream("stdout").read() == b"ran\n"
    finally:
        task.delete()


# -- wait -------------------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_wait_with_timeout(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert task.wait(timeout=0.2) is None
        assert 0.15 < time.monotonic() - t0 < 3
        assert task.wait(timeout=0) is None
        with pytest.raises(ValueError):
            task.wait(timeout=-1)
        task.kill("INT")
        assert task.wait(timeout=10) == -signal.SIGINT
        assert task.wait(timeout=0) == -signal.SIGINT
        assert task.wait() == -signal.SIGINT
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_wait_from_several_threads_and_handles(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import time; time.sleep(0.3); raise SystemExit(5)"))
    try:
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(bgtask.Task(task.pid, pool).wait(10)))
                   for _ in range(3)]
        threads.append(threading.Thread(target=lambda: results.append(task.wait())))
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert results == [5, 5, 5, 5]
    finally:
        task.delete()


# -- delete ---------------------------------------------------------------------------------------------

STUBBORN = py("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
              "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)")


@pytest.mark.timeout(20)
def test_delete_kills_a_job_that_ignores_term(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(STUBBORN)
    assert task.stream("stdout").read(timeout=10) == b"ready\n"
    child = task.info()["child_pid"]
    t0 = time.monotonic()
    task.delete(timeout=0.5)
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 5, elapsed
    # delete() returns when both are gone
    assert not pid_alive(child)
    assert not pid_alive(task.pid)
    assert task_files(pool) == []


@pytest.mark.timeout(20)
def test_delete_returns_when_job_and_supervisor_are_gone(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    child = task.info()["child_pid"]
    t0 = time.monotonic()
    task.delete()
    assert time.monotonic() - t0 < 2, "a job that obeys TERM is not waited for"
    assert not pid_alive(child) and not pid_alive(task.pid)
    assert task_files(pool) == []
    assert pool.search() == []
    with pytest.raises(bgtask.TaskNotFoundError):
        task.delete()
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(task.pid, pool).delete()
    with pytest.raises(bgtask.TaskNotFoundError):
        task.info(fresh=True)


@pytest.mark.timeout(20)
def test_delete_takes_the_jobs_stragglers_along(pool: bgtask.TaskPool) -> None:
    # The leader obeys TERM; its child ignores it and would outlive it.
    task = pool.spawn("(trap '' TERM; exec sleep 30) & echo $!; wait", shell=True)
    grandchild = int(task.stream("stdout").read(timeout=10))
    assert pid_alive(grandchild)
    t0 = time.monotonic()
    task.delete(timeout=5)
    assert time.monotonic() - t0 < 3, "the straggler was not killed at once"
    # It has been sent SIGKILL before delete() returned; it may take a moment to die.
    wait_for(lambda: not pid_alive(grandchild), timeout=2)


@pytest.mark.timeout(20)
def test_delete_ends_readers_and_waiters_of_other_clients(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sh", "-c", "while true; do echo x; sleep 0.02; done"])
    outcome: dict = {}

    def follow() -> None:
        try:
            for _ in bgtask.Task(task.pid, pool).stream("stdout").follow():
                pass
            outcome["follow"] = "ended"
        except bgtask.TaskNotFoundError:
            outcome["follow"] = "gone"

    def wait() -> None:
        try:
            outcome["wait"] = bgtask.Task(task.pid, pool).wait()
        except bgtask.TaskNotFoundError:
            outcome["wait"] = "gone"

    threads = [threading.Thread(target=f) for f in (follow, wait)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    task.delete()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a client blocked on a deleted task hangs"
    assert outcome["follow"] in ("ended", "gone")
    assert outcome["wait"] in (-signal.SIGTERM, "gone")


@pytest.mark.timeout(40)
def test_delete_succeeds_while_other_clients_are_busy(pool: bgtask.TaskPool) -> None:
    """Another client's call finishing while delete() runs must not cut off delete()'s
    answer: delete() returns normally, it does not raise TaskNotFoundError."""
    for _ in range(15):
        task = pool.spawn(["sleep", "30"])
        other = bgtask.Task(task.pid, pool)
        other.connect()
        stop = threading.Event()

        busy = threading.Event()

        def hammer(other: bgtask.Task, stop: threading.Event, busy: threading.Event) -> None:
            try:
                while not stop.is_set():
                    other.info(fresh=True)
                    busy.set()
            except bgtask.TaskNotFoundError:
                pass

        th = threading.Thread(target=hammer, args=(other, stop, busy))
        th.start()
        try:
            assert busy.wait(10)
            task.delete()
        finally:
            stop.set()
            th.join(10)
        assert not pid_alive(task.pid)


@pytest.mark.timeout(40)
def test_delete_right_after_another_connection_was_used(pool: bgtask.TaskPool) -> None:
    """search() then delete(): the supervisor's thread that answered search's info() may
    still be finishing when delete() arrives; it must not end the process under
    delete()'s answer."""
    for _ in range(20):
        task = pool.spawn(["true"])
        assert task.wait(timeout=10) == 0
        assert pool.search() == [task]
        task.delete()
        assert not pid_alive(task.pid)


def test_delete_a_finished_task(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("print('left unread')"))
    assert task.wait(timeout=10) == 0
    task.delete()
    assert not pid_alive(task.pid)
    assert task_files(pool) == []


def test_delete_from_another_handle(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    task.connect()
    bgtask.Task(task.pid, pool).delete()
    assert not pid_alive(task.pid)
    with pytest.raises(bgtask.TaskNotFoundError):
        task.info(fresh=True)


def test_delete_rejects_a_bad_timeout(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        with pytest.raises(ValueError):
            task.delete(timeout=-1)
        with pytest.raises(ValueError):
            task.delete(math.nan)
        # like every other timeout (wait, read, write): a str is the wrong type, not value
        with pytest.raises(TypeError):
            task.delete("5")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            task.delete(True)
        assert task.info(fresh=True)["status"]["running"] is True
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_delete_without_a_timeout_waits_the_tasks_grace(
        pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete() (timeout=None) gives the job the task's grace between TERM and KILL: the
    grace the supervisor reports, or the contract's 5.0 s from one that reports none."""
    plain = bgtask.Task.info
    try:
        task = pool.spawn(STUBBORN, grace=0.5)  # type: ignore[call-arg]
    except TypeError:  # spawn() without grace yet: have the supervisor's info report one
        task = pool.spawn(STUBBORN)
        monkeypatch.setattr(bgtask.Task, "info",
                            lambda self, fresh=False: {**plain(self, fresh), "grace": 0.5})
    assert task.stream("stdout").read(timeout=10) == b"ready\n"
    assert task._grace() == 0.5
    t0 = time.monotonic()
    task.delete()
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 5, elapsed
    assert task_files(pool) == []
    monkeypatch.setattr(bgtask.Task, "info", lambda self, fresh=False: {**plain(self, fresh), "grace": None})
    other = pool.spawn(["sleep", "30"])
    try:
        assert other._grace() == 5.0  # the default when a supervisor does not say
    finally:
        other.delete(0)


# -- call_remote_method ---------------------------------------------------------------------------------

def test_call_remote_method_uses_raw_wire_values(pool: bgtask.TaskPool) -> None:
    import dill

    task = pool.spawn(py("print('raw')"), meta={"name": "raw"})
    try:
        assert task.wait(timeout=10) == 0
        info = task.call_remote_method("info")
        assert info["pid"] == task.pid
        assert isinstance(info["meta"]["name"], bytes), "meta travels as dill blobs"
        assert dill.loads(info["meta"]["name"]) == "raw"
        meta = task.call_remote_method("apply_meta", {"k": dill.dumps([1, 2])})
        assert set(meta) == {"name", "k"} and dill.loads(meta["k"]) == [1, 2]
        assert task.info(fresh=True)["meta"] == {"name": "raw", "k": [1, 2]}
        assert task.call_remote_method("stream_info", "stdout")["limit"] == 4
        assert task.call_remote_method("wait", 1.0) == 0
        assert task.call_remote_method("kill", 9) is False
        for name in ("shutdown", "debug_info", "_end_run", "__init__", "nope"):
            with pytest.raises(ValueError):
                task.call_remote_method(name)
        # A bad argument fails in the supervisor and travels back as an exception.
        with pytest.raises((ValueError, TypeError)):
            task.call_remote_method("stream_info", "nope")
        assert task.info(fresh=True)["pid"] == task.pid, "the supervisor is still fine"
    finally:
        task.delete()


# -- fork hygiene ----------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_task_used_in_a_forked_child_reconnects(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import time\nfor i in range(100000):\n    print(i, flush=True)\n    time.sleep(0.001)"),
                      meta={"name": "fork"})
    try:
        assert task.info(fresh=True)["pid"] == task.pid  # the parent is connected

        def in_child() -> bytes:
            for _ in range(200):  # concurrently with the parent below
                assert task.info(fresh=True)["meta"]["name"] == "fork"
                assert isinstance(task.stream("stdout").read(0, 10), bytes)
            return b"ok"

        child = start_in_child(in_child)
        for _ in range(200):
            assert task.info(fresh=True)["meta"]["name"] == "fork"
            assert task.stream("stderr").limit == 0
        assert child_result(*child) == (0, b"ok")
        # The child may still hold its inherited copy of our socket; what it must not do
        # is talk on it -- 400 interleaved calls above never got a wrong reply (which
        # test_forked_child_does_not_reuse_the_parents_connection checks directly).
        assert task.info(fresh=True)["status"]["running"] is True
        assert task.apply_meta(after="fork") == {"name": "fork", "after": "fork"}
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_forked_child_does_not_reuse_the_parents_connection(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        task.connect()
        conn = task._conns.peek()  # white-box: the parent's connection
        parent_inode = os.fstat(conn.fileno()).st_ino

        def in_child() -> bytes:
            task.info(fresh=True)
            used = task._conns.peek()
            ok = (used is not conn and os.fstat(used.fileno()).st_ino != parent_inode
                  and used.owner_pid == os.getpid())
            return b"ok" if ok else b"shared"

        _code, answer = child_result(*start_in_child(in_child))
        assert answer == b"ok", answer
        assert task._conns.peek() is conn, "the parent keeps its connection"
        assert task.info(fresh=True)["pid"] == task.pid
    finally:
        task.delete()


# -- what a user sees in ipython: completion, tracebacks -------------------------------------------

def test_tab_completion_offers_the_everyday_api(pool: bgtask.TaskPool) -> None:
    task = bgtask.Task(4194000, pool)  # no connection needed
    names = dir(task)
    assert {"info", "state", "meta", "stream", "wait", "kill", "delete", "pid", "pool"} <= set(names)
    assert not {"connect", "disconnect", "call_remote_method"} & set(names)
    assert callable(task.connect) and callable(task.call_remote_method)  # they still work
    stream = task.stream("stdout")
    assert {"read", "follow", "write", "start", "limit", "eof"} <= set(dir(stream))
    assert all(hasattr(type(stream), n) for n in dir(stream))
    assert set(dir(pool)) == {"path", "spawn", "search", "clean"}
    assert pool.backend is not None


def _bgtask_frames(exc: BaseException) -> list[str]:
    import traceback

    return [f"{os.path.basename(fr.filename)}:{fr.name}" for fr in traceback.extract_tb(exc.__traceback__)
            if os.sep + "bgtask" + os.sep in fr.filename]


def test_a_task_not_found_traceback_shows_few_internal_frames(pool: bgtask.TaskPool) -> None:
    with pytest.raises(bgtask.TaskNotFoundError) as info:
        bgtask.Task(4194000, pool).info()
    frames = _bgtask_frames(info.value)
    # the public method, its one call path, and where errors start: never the
    # connection's, the backend's or the wire's frames
    assert len(frames) <= 3, frames
    assert frames[0] == "task.py:info", frames
    assert not any(f.startswith(("local.py", "connection.py", "framing.py")) for f in frames), frames


@pytest.mark.timeout(40)
def test_ctrl_c_in_follow_has_a_short_traceback_and_consumes_nothing(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys, time; sys.stdin.readline(); print('hello', flush=True); time.sleep(30)"))
    try:
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt) as info:
            for _chunk in task.stream("stdout").follow():
                pass
        timer.join()
        frames = _bgtask_frames(info.value)
        assert len(frames) <= 3 and not any(f.startswith(("connection.py", "framing.py")) for f in frames), \
            frames
        task.stream("stdin").write("go\n")
        # The interrupted read was waiting in the supervisor: what comes now is not
        # consumed by it (its reply has no reader; the supervisor takes it back).
        got = b""
        deadline = time.monotonic() + 20
        while b"hello\n" not in got and time.monotonic() < deadline:
            got += bgtask.Task(task.pid, pool).stream("stdout").read(timeout=1)
        assert got == b"hello\n"
    finally:
        task.delete(0)
