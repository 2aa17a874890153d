"""The command line (``bgtask ...``, ``python -m bgtask``) and the ipython niceties.

Every subcommand runs at least once as a separate process against a real pool; the
rest run in process (``main([...])``), which is cheaper.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import warnings
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import py, stopped, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

import bgtask
from bgtask import _format
from bgtask.cli import main

ROOT = str(Path(__file__).resolve().parents[1])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # BGTASK_POOL comes from the pool fixture
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def bg(*args: str, input: bytes | None = None, timeout: float = 30,
       **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m bgtask ARGS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "bgtask", *args], input=input, capture_output=True,
                          timeout=timeout, env=_env(**env), cwd=ROOT)


def out(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.decode() if isinstance(proc.stdout, bytes) else proc.stdout


def err(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: ``(status, stdout, stderr)``."""
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bgtask"), stderr
    for needle in needles:
        assert needle in lines[0], stderr


def delete_all(pool: bgtask.TaskPool) -> None:
    for task in pool.search():
        task.delete(timeout=1.0)


# -- spawn -------------------------------------------------------------------------------------


def test_spawn_prints_the_task_id_and_passes_every_option(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    code = "import os; print(os.environ['GREETING'], os.getcwd())"
    proc = bg("spawn", "--name", "nightly import", "--meta", "retries=3", "--meta", "owner=ops",
              "--meta", 'tags=["a", "b"]', "--env", "GREETING=hi there", "--cwd", str(tmp_path),
              "--retain", "1K", "--lock", "nightly", "--", *py(code))
    assert proc.returncode == 0, err(proc)
    assert re.fullmatch(r"\d+\n", out(proc)), out(proc)
    task = bgtask.Task(int(out(proc)), pool)
    try:
        assert task.wait(timeout=10) == 0
        info = task.info(fresh=True)
        assert info["meta"] == {"name": "nightly import", "retries": 3, "owner": "ops", "tags": ["a", "b"]}
        assert info["cwd"] == str(tmp_path)
        assert info["lock"] == "nightly"
        assert info["streams"]["stdout"]["retain_output"] == 1024
        assert task.stream("stdout").read() == f"hi there {tmp_path}\n".encode()
    finally:
        task.delete()


def test_spawn_with_the_shell_joins_the_words(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    status, stdout, _ = cli(capsys, "spawn", "--shell", "--", "echo", "$((6*7));", "exit 4")
    assert status == 0
    task = bgtask.Task(int(stdout), pool)
    try:
        assert task.wait(timeout=10) == 4
        assert task.info()["command"] == "echo $((6*7)); exit 4"
        assert task.stream("stdout").read() == b"42\n"
    finally:
        task.delete()


def test_spawn_follow_streams_the_output_and_exits_with_the_jobs_status(pool: bgtask.TaskPool) -> None:
    code = "import sys, time; print('out 1', flush=True); print('err', file=sys.stderr); print('out 2'); sys.exit(3)"
    proc = bg("spawn", "--follow", "--", *py(code))
    assert proc.returncode == 3, err(proc)
    assert out(proc) == "out 1\nout 2\n"
    m = re.search(r"bgtask: task (\d+)", err(proc))
    assert m, err(proc)
    assert "err\n" in err(proc)
    assert [t.pid for t in pool.search()] == [int(m.group(1))]
    delete_all(pool)


def test_spawn_follow_rm_leaves_nothing(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    status, stdout, stderr = cli(capsys, "spawn", "-f", "--rm", "--", *py("import os; os.kill(os.getpid(), 15)"))
    assert status == 128 + signal.SIGTERM, stderr
    assert pool.search() == []


@pytest.mark.parametrize(("args", "status", "needle"), [
    pytest.param([], 2, "needs a command", id="no-command"),
    pytest.param(["--"], 2, "needs a command", id="only-dashes"),
    pytest.param(["--meta", "novalue", "--", "true"], 2, "KEY=VALUE", id="bad-meta"),
    pytest.param(["--env", "X", "--", "true"], 2, "KEY=VALUE", id="bad-env"),
    pytest.param(["--retain", "lots", "--", "true"], 2, "size", id="bad-size"),
    pytest.param(["--rm", "--", "true"], 2, "--follow", id="rm-without-follow"),
    pytest.param(["--", "/no/such/program"], 1, "cannot execute", id="no-such-program"),
    pytest.param(["--cwd", "/no/such/dir", "--", "true"], 1, "working directory", id="bad-cwd"),
    pytest.param(["--lock", "bad name!", "--", "true"], 1, "lock name", id="bad-lock-name"),
])
def test_spawn_errors_are_one_line(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                                   args: list[str], status: int, needle: str) -> None:
    got, stdout, stderr = cli(capsys, "spawn", *args)
    assert got == status
    assert stdout == ""
    assert_one_line_error(stderr, needle)
    assert pool.search() == []


def test_spawn_while_the_lock_is_held(pool: bgtask.TaskPool) -> None:
    holder = pool.spawn(["sleep", "30"], lock="nightly")
    try:
        proc = bg("spawn", "--lock", "nightly", "--", "true")
        assert proc.returncode == 1
        assert_one_line_error(err(proc), "lock 'nightly' is held")
    finally:
        holder.delete()
    assert pool.search() == []


# -- ls ------------------------------------------------------------------------------------------


def _four_tasks(pool: bgtask.TaskPool) -> dict[str, bgtask.Task]:
    tasks = {
        "running": pool.spawn(["sleep", "30"], meta={"name": "nightly import", "owner": "ops"}),
        "paused": pool.spawn(["sleep", "30"], meta={"owner": "dev", "n": 3}),
        "exited": pool.spawn(py("print('x' * 2000); raise SystemExit(2)"), meta={"name": "report"}),
        "killed": pool.spawn(["sleep", "30"], meta={"n": "3"}),
    }
    tasks["paused"].pause()
    tasks["killed"].kill("KILL")
    assert tasks["exited"].wait(timeout=10) == 2
    assert tasks["killed"].wait(timeout=10) == -9
    return tasks


def test_ls_shows_a_table_with_the_state_of_each_job(pool: bgtask.TaskPool) -> None:
    tasks = _four_tasks(pool)
    try:
        proc = bg("ls")
        assert proc.returncode == 0, err(proc)
        lines = out(proc).splitlines()
        assert lines[0].split() == ["PID", "STATE", "STARTED", "RUNTIME", "UNREAD", "NAME", "COMMAND"]
        rows = {int(line.split()[0]): line for line in lines[1:]}
        assert sorted(rows) == sorted(t.pid for t in tasks.values())
        assert re.search(r" running .* nightly import +sleep 30$", rows[tasks["running"].pid])
        assert " paused " in rows[tasks["paused"].pid]
        assert re.search(r" exited 2 .* 2\.0K +report +\S", rows[tasks["exited"].pid])
        assert " killed SIGKILL " in rows[tasks["killed"].pid]
        # `ps` is the same command
        assert bg("ps").returncode == 0
    finally:
        delete_all(pool)


def test_ls_filters(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = _four_tasks(pool)

    def pids(*args: str) -> list[int]:
        status, stdout, stderr = cli(capsys, "ls", "-q", *args)
        assert status == 0, stderr
        return [int(x) for x in stdout.split()]

    try:
        assert pids() == sorted(t.pid for t in tasks.values())
        assert pids("--running") == sorted([tasks["running"].pid, tasks["paused"].pid])
        assert pids("--finished") == sorted([tasks["exited"].pid, tasks["killed"].pid])
        assert pids("--meta", "owner=ops") == [tasks["running"].pid]
        # JSON when it parses, the string too: `n=3` finds both 3 and "3"
        assert pids("--meta", "n=3") == sorted([tasks["paused"].pid, tasks["killed"].pid])
        assert pids("--meta", "n=3", "--finished") == [tasks["killed"].pid]
        assert pids("--meta", "name=nobody") == []
        status, _, stderr = cli(capsys, "ls", "--running", "--finished")
        assert status == 2
        assert_one_line_error(stderr, "not allowed with")
    finally:
        delete_all(pool)


class Opaque:
    """A meta value JSON cannot carry, and that other processes cannot even decode (this
    module is not importable there)."""

    def __repr__(self) -> str:
        return "Opaque()"


def _comparable(info: dict) -> dict:
    # JSON has no tuples; meta values it cannot carry become their repr.
    return json.loads(json.dumps(_format.jsonable_info(info)))


def test_ls_json_and_info_json_carry_the_facts_of_info(pool: bgtask.TaskPool) -> None:
    tasks = _four_tasks(pool)
    odd = pool.spawn(["true"], meta={"name": "odd", "when": {1, 2}, "d": Decimal("1.5"), "nan": float("nan"),
                                     "t": (1, "a"), "obj": Opaque()})
    try:
        assert odd.wait(timeout=10) == 0
        tasks["running"].apply_meta(stage="done")
        proc = bg("ls", "--json")
        assert proc.returncode == 0, err(proc)
        listed = json.loads(out(proc))
        assert [i["pid"] for i in listed] == sorted(t.pid for t in [*tasks.values(), odd])
        by_pid = {i["pid"]: i for i in listed}
        assert by_pid[odd.pid]["meta"].pop("obj").startswith("<bgtask.UndecodableValue ")
        for item in listed:
            info = bgtask.Task(item["pid"], pool).info(fresh=True)
            info["meta"].pop("obj", None)
            expected = _comparable(info)
            if info["status"]["running"]:  # the one thing that moves: unread output of a live job
                item.pop("streams"), expected.pop("streams")
            assert item == expected
        assert by_pid[odd.pid]["meta"] == {"name": "odd", "when": "{1, 2}", "d": "Decimal('1.5')", "nan": "nan",
                                           "t": [1, "a"]}
        assert by_pid[tasks["exited"].pid]["status"] == {"running": False, "paused": False, "exit_code": 2,
                                                         "signal": None, "returncode": 2}
        assert by_pid[tasks["killed"].pid]["status"]["returncode"] == -9
        assert isinstance(by_pid[tasks["exited"].pid]["started_at"], float)

        proc = bg("info", str(odd.pid), "--json")
        assert proc.returncode == 0, err(proc)
        shown = json.loads(out(proc))
        assert shown["meta"].pop("obj").startswith("<bgtask.UndecodableValue ")
        info = odd.info(fresh=True)
        info["meta"].pop("obj")
        assert shown == _comparable(info)
    finally:
        delete_all(pool)


@pytest.mark.timeout(120)
def test_ls_with_50_tasks_stays_readable(pool: bgtask.TaskPool) -> None:
    names = ["nightly import", "a rather long task name that goes on and on", "", "x"]
    tasks = [pool.spawn(["sh", "-c", "sleep 60", *["long-argument"] * (i % 7)],
                        meta={"name": names[i % 4]} if names[i % 4] else None)
             for i in range(50)]
    try:
        started = time.monotonic()
        shown = _in_a_terminal("ls", COLUMNS="80", NO_COLOR="1")
        elapsed = time.monotonic() - started
        lines = shown.splitlines()
        assert len(lines) == 51
        assert max(len(line) for line in lines) <= 80
        # aligned: the STATE column starts at the same place on every line
        col = lines[0].index("STATE")
        assert all(line[col - 1] == " " and line[col:col + 7] == "running" for line in lines[1:])
        assert sorted(int(line.split()[0]) for line in lines[1:]) == sorted(t.pid for t in tasks)
        assert any(line.endswith("...") for line in lines)  # long names and commands are cut
        # at 80 columns, names and commands share what is left fairly
        cut = [line for line in lines if "a rather long" in line][0]
        assert len(cut.split("  ")[-2]) >= 15 and len(cut.split("  ")[-1]) >= 15, cut
        assert elapsed < 10, elapsed
        for wide in (_in_a_terminal("ls", "--wide", COLUMNS="80", NO_COLOR="1"), out(bg("ls", COLUMNS="80"))):
            # -w on a terminal, and any pipe (`ls | cat`): nothing is cut
            assert "..." not in wide
            assert "a rather long task name that goes on and on" in wide
            assert any(len(line) > 80 and line.endswith(" long-argument") for line in wide.splitlines())
    finally:
        proc = bg("rm", "-f", "--timeout", "1", *[str(t.pid) for t in tasks], timeout=90)
        assert proc.returncode == 0, err(proc)
    assert pool.search() == []


def test_ls_of_an_empty_pool_and_the_pool_option(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    other = tmp_path / "p"
    task = bgtask.TaskPool(other).spawn(["sleep", "30"])
    try:
        assert out(bg("ls", "-q")) == ""  # $BGTASK_POOL: the fixture's pool, empty
        assert out(bg("--pool", str(other), "ls", "-q")).split() == [str(task.pid)]
        assert out(bg("ls", "--pool", str(other), "-q")).split() == [str(task.pid)]
        assert out(bg("ls", "-q", BGTASK_POOL=str(other))).split() == [str(task.pid)]
        proc = bg("--pool", "/etc/passwd", "ls")
        assert proc.returncode == 1
        assert_one_line_error(err(proc), "/etc/passwd")
    finally:
        task.delete()


# -- info, cat, tail ---------------------------------------------------------------------------


def test_info(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"], meta={"name": "nightly import", "d": Decimal("2"), "obj": Opaque()},
                      lock="nightly")
    try:
        proc = bg("info", str(task.pid))
        assert proc.returncode == 0, err(proc)
        text = out(proc)
        child = task.info(fresh=True)["child_pid"]
        assert re.search(rf"^task +{task.pid}$", text, re.M)
        assert re.search(rf"^state +running \(job pid {child}\)$", text, re.M)
        assert re.search(r"^command +sleep 30$", text, re.M)
        assert re.search(r"^meta +d = Decimal\('2'\)$", text, re.M)  # sorted by key
        assert re.search(r"^ +name = \"nightly import\"$", text, re.M)
        assert re.search(r"^ +obj = <bgtask.UndecodableValue \d+ bytes: ModuleNotFoundError", text, re.M)
        assert re.search(r"^lock +nightly$", text, re.M)
        assert re.search(r"^stdout +start 0, limit 0, unread 0 bytes$", text, re.M)
    finally:
        task.delete()


def test_cat_consumes_unless_told_otherwise(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(py("import sys; sys.stdout.write('0123456789'); sys.stderr.write('E' * 5)"),
                      retain_output=4)
    try:
        assert task.wait(timeout=10) == 0
        pid = str(task.pid)
        assert cli(capsys, "cat", pid, "--peek") == (0, "0123456789", "EEEEE")
        assert cli(capsys, "cat", pid, "--stdout", "--from", "2", "--to", "5") == (0, "234", "")
        assert cli(capsys, "cat", pid, "--stdout", "--from", "-3") == (0, "789", "")
        assert cli(capsys, "cat", pid, "--stdout", "--to", "-7") == (0, "012", "")
        proc = bg("cat", "--stdout", pid)
        assert (proc.returncode, out(proc), err(proc)) == (0, "0123456789", "")
        assert cli(capsys, "cat", pid, "--stdout") == (0, "", "")  # consumed
        assert cli(capsys, "cat", pid, "--stdout", "--from", "6") == (0, "6789", "")  # retained
        status, _, stderr = cli(capsys, "cat", pid, "--stdout", "--from", "0")
        assert status == 1
        assert_one_line_error(stderr, "no longer held")
        assert cli(capsys, "cat", pid, "--stderr") == (0, "", "EEEEE")
    finally:
        task.delete()


def test_cat_into_a_closed_pipe_is_quiet(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys; sys.stdout.write('x' * 1000000)"))
    try:
        assert task.wait(timeout=10) == 0
        cmd = f"{sys.executable} -m bgtask cat {task.pid} | head -c 10"
        proc = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, env=_env(), timeout=30)
        assert proc.stdout == b"x" * 10
        assert proc.stderr == b""
    finally:
        task.delete()


def test_tail_shows_the_last_lines_without_consuming(pool: bgtask.TaskPool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(py("import sys\nfor i in range(20000): print('line', i)\nsys.stdout.write('partial')"))
    try:
        assert task.wait(timeout=10) == 0
        proc = bg("tail", "-n", "3", str(task.pid))
        assert (proc.returncode, out(proc)) == (0, "line 19998\nline 19999\npartial")
        status, stdout, _ = cli(capsys, "tail", str(task.pid))
        assert stdout.splitlines()[0] == "line 19991"
        assert len(stdout.splitlines()) == 10
        assert cli(capsys, "tail", "-n", "0", str(task.pid)) == (0, "", "")
        assert task.info(fresh=True)["streams"]["stdout"]["unread"] > 100000
        status, stdout, _ = cli(capsys, "tail", "-f", "-n", "1", str(task.pid))  # ended: returns
        assert (status, stdout) == (0, "partial")
    finally:
        task.delete()


def _read_until(fd: int, needle: bytes | None, timeout: float = 15.0) -> bytes:
    """Read a pty master until *needle* shows up (``None``: until the other side closes)."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle is None or needle not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} not seen within {timeout} s; got {data!r}")
        r, _, _ = select.select([fd], [], [], remaining)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            chunk = b""
        if not chunk:
            if needle is None:
                return data
            raise AssertionError(f"{needle!r} not seen before the end; got {data!r}")
        data += chunk
    return data


def _under_a_terminal(*args: str, **extra: str) -> tuple[int, int]:
    """Start ``python -m bgtask ARGS`` with a pty as its controlling terminal."""
    env = _env(**extra)
    if "NO_COLOR" not in extra:  # the tests decide whether colour is wanted
        env.pop("NO_COLOR", None)
    with warnings.catch_warnings():  # 3.12+ warns about fork() in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid, fd = pty.fork()
    if pid == 0:
        try:
            # As in a terminal session: a test runner started in the background (`&`)
            # ignores SIGINT, and exec passes that on.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, [sys.executable, "-m", "bgtask", *args], env)
        finally:
            os._exit(127)
    return pid, fd


def _in_a_terminal(*args: str, **extra: str) -> str:
    """What ``python -m bgtask ARGS`` shows on a terminal (stdout and stderr), ``\\r\\n``
    turned back into ``\\n``; fails unless it exits 0."""
    pid, fd = _under_a_terminal(*args, **extra)
    try:
        shown = _read_until(fd, None)
        assert _reap(pid) == 0, shown
    finally:
        os.close(fd)
    return shown.decode().replace("\r\n", "\n")


def _reap(pid: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the command did not end")


def test_tail_follow_under_a_terminal(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys; print('first', flush=True); sys.stdin.readline(); print('second')"))
    pid, fd = _under_a_terminal("tail", "-f", str(task.pid))
    try:
        seen = _read_until(fd, b"first\r\n")  # while the job still runs
        assert task.info(fresh=True)["status"]["running"]
        task.stream("stdin").write("go\n")
        seen += _read_until(fd, None)  # tail -f ends with the job
        assert _reap(pid) == 0
        assert seen.replace(b"\r\n", b"\n") == b"first\nsecond\n"
        assert task.info(fresh=True)["streams"]["stdout"]["unread"] == 13  # not consumed
    finally:
        os.close(fd)
        task.delete()


@pytest.mark.parametrize("command", [
    pytest.param(["tail", "-f"], id="tail-f"),
    pytest.param(["wait"], id="wait"),
])
def test_ctrl_c_under_a_terminal_exits_quietly_with_130(pool: bgtask.TaskPool, command: list[str]) -> None:
    task = pool.spawn(py("import time; print('ready', flush=True); time.sleep(30)"))
    wait_for(lambda: task.stream("stdout").read(0) == b"ready\n")
    pid, fd = _under_a_terminal(*command, str(task.pid))
    try:
        if command[0] == "tail":
            _read_until(fd, b"ready\r\n")
        time.sleep(0.3)
        os.write(fd, b"\x03")
        rest = _read_until(fd, None).decode().replace("\r\n", "\n").replace("^C", "")
        assert _reap(pid) == 130
        assert rest.replace("ready\n", "").strip() == ""  # no "error: interrupted"
        assert task.info(fresh=True)["status"]["running"]  # the job is not ours to stop
    finally:
        os.close(fd)
        task.delete()


def test_ctrl_c_in_spawn_follow_exits_with_130(pool: bgtask.TaskPool) -> None:
    pid, fd = _under_a_terminal("spawn", "--follow", "--", *py("import time; print('up', flush=True); time.sleep(30)"))
    try:
        _read_until(fd, b"up\r\n")
        time.sleep(0.2)
        os.write(fd, b"\x03")
        rest = _read_until(fd, None).decode()
        assert _reap(pid) == 130
        assert "error" not in rest
    finally:
        os.close(fd)
        delete_all(pool)


# -- send, msg, meta ---------------------------------------------------------------------------


def test_send_writes_stdin(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    task = pool.spawn(["cat"])
    pid = str(task.pid)
    try:
        assert bg("send", pid, "hello", "world").returncode == 0
        assert cli(capsys, "send", pid, "-n", "no newline|") == (0, "", "")
        proc = bg("send", pid, "-", input=b"\x00binary\xff from stdin\n")
        assert proc.returncode == 0, err(proc)
        status, _, stderr = cli(capsys, "send", pid)
        assert status == 2
        assert_one_line_error(stderr, "nothing to send")
        assert bg("send", pid, "--eof").returncode == 0
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"hello world\nno newline|\x00binary\xff from stdin\n"
        status, _, stderr = cli(capsys, "send", pid, "too late")
        assert status == 1
        assert_one_line_error(stderr, "stdin")
    finally:
        task.delete()


def test_send_text_then_eof_in_process(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    task = pool.spawn(py("import sys; print(sys.stdin.read().upper(), end='')"))
    try:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"piped\n")))
        assert cli(capsys, "send", str(task.pid), "-", "--eof")[0] == 0
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"PIPED\n"
    finally:
        task.delete()


MESSAGES = """
import bgtask, sys
data = bgtask.current().stream("data")
for obj in [{"n": 1, "ok": True}, "text", [1, 2.5, None], {1, 2}, float("inf")]:
    data.write(obj)
print("sent", flush=True)
sys.stdin.readline()
data.write("last")
"""


def test_msg_prints_one_message_per_line(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(py(MESSAGES))
    pid = str(task.pid)
    try:
        wait_for(lambda: task.stream("stdout").read(0) == b"sent\n")
        expected = '{"n": 1, "ok": true}\n"text"\n[1, 2.5, null]\n{1, 2}\ninf\n'
        assert cli(capsys, "msg", pid, "--peek") == (0, expected, "")
        proc = bg("msg", pid)
        assert (proc.returncode, out(proc)) == (0, expected)
        assert cli(capsys, "msg", pid) == (0, "", "")  # consumed
        task.stream("stdin").write("go\n")
        proc = bg("msg", "-f", pid)  # until the job ends
        assert (proc.returncode, out(proc)) == (0, '"last"\n')
    finally:
        task.delete()


def test_meta_shows_and_sets(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(["sleep", "30"], meta={"name": "job", "obj": Decimal("1.5")})
    pid = str(task.pid)
    try:
        proc = bg("meta", pid, "stage=done", "tries=2", 'extra={"a": [1]}')
        assert proc.returncode == 0, err(proc)
        assert out(proc) == 'extra={"a": [1]}\nname="job"\nobj=Decimal(\'1.5\')\nstage="done"\ntries=2\n'
        assert task.info(fresh=True)["meta"]["extra"] == {"a": [1]}
        status, stdout, _ = cli(capsys, "meta", pid, "--json")
        assert json.loads(stdout) == {"name": "job", "obj": "Decimal('1.5')", "stage": "done", "tries": 2,
                                      "extra": {"a": [1]}}
        status, _, stderr = cli(capsys, "meta", pid, "novalue")
        assert status == 2
        assert_one_line_error(stderr, "KEY=VALUE")
    finally:
        task.delete()


# -- kill, pause, resume, restart, wait ---------------------------------------------------------


def test_kill_pause_resume(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(["sleep", "30"])
    pid = str(task.pid)
    try:
        assert bg("pause", pid).returncode == 0
        assert task.info(fresh=True)["status"]["paused"]
        assert bg("resume", pid).returncode == 0
        assert not task.info(fresh=True)["status"]["paused"]
        for bad in ("BOGUS", "0", "SIG_DFL"):
            status, _, stderr = cli(capsys, "kill", pid, "-s", bad)
            assert status == 1
            assert_one_line_error(stderr, "signal")
        proc = bg("kill", pid, "-s", "int")
        assert proc.returncode == 0, err(proc)
        assert task.wait(timeout=10) == -signal.SIGINT
        for command in ("kill", "pause", "resume"):
            proc = bg(command, pid)
            assert proc.returncode == 1
            assert_one_line_error(err(proc), "not running")
    finally:
        task.delete()


def test_kill_sends_term_by_default_to_several_tasks(pool: bgtask.TaskPool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pool.spawn(["sleep", "30"]), pool.spawn(["sleep", "30"])
    try:
        status, _, stderr = cli(capsys, "kill", str(a.pid), "999999999", str(b.pid))
        assert status == 1  # the unknown one is reported; the others are killed
        assert_one_line_error(stderr, "no task 999999999")
        assert a.wait(timeout=10) == b.wait(timeout=10) == -signal.SIGTERM
    finally:
        delete_all(pool)


def test_restart(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    done = pool.spawn(py("print('run')"))
    running = pool.spawn(["sleep", "30"])
    try:
        assert done.wait(timeout=10) == 0
        proc = bg("restart", str(done.pid))
        assert proc.returncode == 0, err(proc)
        assert done.wait(timeout=10) == 0
        assert done.info(fresh=True)["restarts"] == 1
        assert done.stream("stdout").read() == b"run\nrun\n"
        # a running job is stopped first (TERM), then run again
        running.pause()
        child = running.info(fresh=True)["child_pid"]
        assert cli(capsys, "restart", "--timeout", "2", str(running.pid))[0] == 0
        info = running.info(fresh=True)
        assert info["restarts"] == 1 and info["status"]["running"] and info["child_pid"] != child
    finally:
        delete_all(pool)


@pytest.mark.parametrize(("code", "status"), [
    pytest.param("raise SystemExit(0)", 0, id="exit-0"),
    pytest.param("raise SystemExit(7)", 7, id="exit-7"),
    pytest.param("import os; os.kill(os.getpid(), 9)", 128 + 9, id="killed-by-SIGKILL"),
])
def test_wait_exits_with_the_jobs_status(pool: bgtask.TaskPool, code: str, status: int) -> None:
    task = pool.spawn(py(code))
    try:
        proc = bg("wait", str(task.pid))
        assert (proc.returncode, out(proc), err(proc)) == (status, "", "")
    finally:
        task.delete()


def test_wait_timeout(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        started = time.monotonic()
        status, _, stderr = cli(capsys, "wait", str(task.pid), "--timeout", "0.2")
        assert status == 124
        assert time.monotonic() - started < 3
        assert_one_line_error(stderr, "still running")
    finally:
        task.delete()


# -- rm, clean -----------------------------------------------------------------------------------


def test_rm_and_clean(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    running = pool.spawn(["sleep", "30"])
    done = [pool.spawn(["true"]) for _ in range(3)]
    for t in done:
        assert t.wait(timeout=10) == 0
    proc = bg("rm", str(running.pid))
    assert proc.returncode == 1
    assert_one_line_error(err(proc), "is running")
    proc = bg("rm", str(done[0].pid))
    assert (proc.returncode, out(proc)) == (0, "")
    proc = bg("clean")
    assert (proc.returncode, sorted(map(int, out(proc).split()))) == (0, sorted(t.pid for t in done[1:]))
    extra = pool.spawn(["true"])
    assert extra.wait(timeout=10) == 0
    assert cli(capsys, "rm", "--finished") == (0, "", "")
    assert [t.pid for t in pool.search()] == [running.pid]
    status, _, stderr = cli(capsys, "rm")
    assert status == 2
    assert_one_line_error(stderr, "--finished")
    assert bg("rm", "-f", str(running.pid)).returncode == 0
    assert pool.search() == []
    proc = bg("rm", str(running.pid))
    assert proc.returncode == 1
    assert_one_line_error(err(proc), f"no task {running.pid}")


# -- errors ----------------------------------------------------------------------------------------

PID_COMMANDS = [
    ["info", "{pid}"], ["cat", "{pid}"], ["tail", "-f", "{pid}"], ["send", "{pid}", "x"],
    ["msg", "{pid}"], ["meta", "{pid}"], ["meta", "{pid}", "k=v"], ["kill", "{pid}"],
    ["pause", "{pid}"], ["resume", "{pid}"], ["restart", "{pid}"], ["wait", "{pid}"],
    ["rm", "{pid}"], ["rm", "-f", "{pid}"],
]


@pytest.mark.parametrize("args", [pytest.param(a, id="-".join(a[:2]).replace("{pid}", "")) for a in PID_COMMANDS])
def test_unknown_task_is_one_line(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                                  args: list[str]) -> None:
    status, stdout, stderr = cli(capsys, *[a.format(pid=999999999) for a in args])
    assert (status, stdout) == (1, "")
    assert_one_line_error(stderr, "no task 999999999")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's task")
def test_another_users_task_is_one_line(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str]) -> None:
    # What a task of uid 65534 looks like in a shared pool: a socket that is not ours.
    path = os.path.join(pool.path, "3999999.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    os.chown(path, 65534, 65534)
    proc = bg("info", "3999999")
    assert proc.returncode == 1
    assert_one_line_error(err(proc), "belongs to uid 65534")
    for args in PID_COMMANDS:
        status, _, stderr = cli(capsys, *[a.format(pid=3999999) for a in args])
        assert status == 1, args
        assert_one_line_error(stderr, "belongs to uid 65534")
    assert cli(capsys, "ls", "-q") == (0, "", "")  # not listed either


@pytest.mark.parametrize("args", [
    pytest.param([], id="nothing"),
    pytest.param(["frobnicate"], id="unknown-command"),
    pytest.param(["info"], id="missing-pid"),
    pytest.param(["info", "abc"], id="bad-pid"),
    pytest.param(["info", "-5"], id="negative-pid"),
    pytest.param(["kill", "1", "-s"], id="missing-signal"),
    pytest.param(["wait", "1", "--timeout", "soon"], id="bad-timeout"),
    pytest.param(["wait", "1", "--timeout", "inf"], id="infinite-timeout"),
    pytest.param(["spawn", "--retain", "inf", "--", "true"], id="infinite-size"),
    pytest.param(["ls", "--bogus"], id="unknown-option"),
])
def test_usage_errors_exit_2(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    status, stdout, stderr = cli(capsys, *args)
    assert (status, stdout) == (2, "")
    assert "Traceback" not in stderr
    if args:
        assert_one_line_error(stderr)


def test_usage_error_as_a_process_and_help(pool: bgtask.TaskPool) -> None:
    proc = bg("info", "abc")
    assert proc.returncode == 2
    assert_one_line_error(err(proc), "not a task id: 'abc'")
    proc = bg("--help")
    assert proc.returncode == 0
    for command in ("spawn", "ls", "info", "cat", "tail", "send", "msg", "meta", "kill", "pause",
                    "resume", "restart", "wait", "rm", "clean"):
        assert command in out(proc)
    assert out(bg("--version")).strip() == f"bgtask {bgtask.__version__}"


# -- reprs and ipython ---------------------------------------------------------------------------


def test_reprs_tell_where_things_stand(pool: bgtask.TaskPool) -> None:
    running = pool.spawn(["sleep", "30"], meta={"name": "nightly import"})
    done = pool.spawn(py("print('hello')"))
    killed = pool.spawn(["sleep", "30"])
    try:
        assert repr(running) == f"<bgtask.Task {running.pid} running 'nightly import'>"
        running.pause()
        assert repr(running) == f"<bgtask.Task {running.pid} paused 'nightly import'>"
        assert done.wait(timeout=10) == 0
        assert repr(done) == f"<bgtask.Task {done.pid} exited 0>"
        killed.kill()
        assert killed.wait(timeout=10) == -9
        assert repr(killed) == f"<bgtask.Task {killed.pid} killed SIGKILL>"  # the words of ls
        assert repr(done.stream("stdout")) == f"<bgtask.Stream {done.pid}/stdout start=0 limit=6 unread=6 bytes eof>"
        assert repr(pool) == f"<bgtask.TaskPool {str(pool.path)!r} 3 tasks>"
    finally:
        delete_all(pool)
    assert repr(done) == f"<bgtask.Task {done.pid} gone>"
    assert repr(pool) == f"<bgtask.TaskPool {str(pool.path)!r} 0 tasks>"


def test_ipython_pretty_printers(pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch) -> None:
    pretty = pytest.importorskip("IPython.lib.pretty").pretty
    monkeypatch.setenv("COLUMNS", "100")
    task = pool.spawn(["sleep", "30"], meta={"name": "nightly import", "owner": "ops"})
    try:
        shown = pretty(task).splitlines()
        assert shown[0] == f"<bgtask.Task {task.pid} running 'nightly import'>"
        assert any(re.fullmatch(r" +command +sleep 30", line) for line in shown)
        assert any(re.fullmatch(r" +meta +name = 'nightly import'", line) for line in shown)  # Python, not JSON
        # inside a list (search results) a task stays one line
        assert pretty(pool.search()) == f"[<bgtask.Task {task.pid} running 'nightly import'>]"
        shown = pretty(pool).splitlines()
        assert shown[0] == f"<bgtask.TaskPool {str(pool.path)!r} 1 task>"
        assert shown[1].split() == ["PID", "STATE", "STARTED", "RUNTIME", "UNREAD", "NAME", "COMMAND"]
        assert shown[2].split()[:2] == [str(task.pid), "running"]
    finally:
        task.delete()
    assert pretty(task) == f"<bgtask.Task {task.pid} gone>"
    assert pretty(pool) == f"<bgtask.TaskPool {str(pool.path)!r} 0 tasks>"


def test_formatting_helpers() -> None:
    from bgtask import _format

    assert [_format.size_text(n) for n in (0, 1023, 1024, 1536, 10 << 20, 3 << 30)] == \
        ["0", "1023", "1.0K", "1.5K", "10M", "3.0G"]
    assert [_format.duration_text(s) for s in (0.42, 42, 185, 7380, 4 * 86400 + 3600)] == \
        ["0.4s", "42s", "3m05s", "2h03m", "4d01h"]
    assert _format.value_text({"a": 1}) == '{"a": 1}'
    assert _format.value_text(Opaque()) == "Opaque()"
    assert _format.value_text(float("nan")) == "nan"


# -- what a new user falls into (issue 10) -------------------------------------------------------


def _pipeline(script: str) -> subprocess.CompletedProcess[bytes]:
    """*script* run by bash, with ``bgtask`` meaning this checkout's command line."""
    prelude = f"bgtask() {{ {sys.executable} -m bgtask \"$@\"; }}\n"
    return subprocess.run(["/bin/bash", "-c", prelude + script], capture_output=True, env=_env(),
                          timeout=60, cwd=ROOT)


def test_cat_into_head_consumes_only_what_got_out(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys\nfor i in range(400000): print(f'line {i:07d}')"))  # 5.2 MB
    try:
        assert task.wait(timeout=30) == 0
        total = task.info(fresh=True)["streams"]["stdout"]["limit"]
        proc = _pipeline(f"bgtask cat {task.pid} | head -2; echo status ${{PIPESTATUS[0]}}")
        assert proc.stdout == b"line 0000000\nline 0000001\nstatus 141\n", proc.stderr
        assert proc.stderr == b""
        held = task.info(fresh=True)["streams"]["stdout"]
        assert held["unread"] > total - (1 << 20)  # at most what the pipe held was consumed
        # what is left is exactly the rest: the next read goes on where the pipe broke
        full = b"".join(f"line {i:07d}\n".encode() for i in range(400000))
        assert task.stream("stdout").read() == full[held["cursor"]:]
    finally:
        task.delete()


def test_cat_drains_a_job_that_is_still_writing(pool: bgtask.TaskPool) -> None:
    # 3 MB through a 256K buffer: the job blocks until cat has made room, several times.
    code = "import sys, time\nsys.stdout.write('x' * 3000000); sys.stdout.flush(); time.sleep(30)"
    task = pool.spawn(py(code), max_buffer=256 << 10)
    try:
        wait_for(lambda: task.info(fresh=True)["streams"]["stdout"]["limit"] >= 256 << 10)
        proc = bg("cat", str(task.pid))
        assert proc.returncode == 0, err(proc)
        assert len(proc.stdout) == 3000000
        assert task.info(fresh=True)["status"]["running"]
    finally:
        task.delete()


def test_cat_and_tail_show_both_streams_each_on_its_own(pool: bgtask.TaskPool) -> None:
    code = "import sys; print('out 1'); print('err 1', file=sys.stderr); print('out 2'); sys.exit(1)"
    task = pool.spawn(py(code))
    pid = str(task.pid)
    try:
        assert task.wait(timeout=10) == 1
        proc = bg("tail", pid)
        assert (proc.returncode, out(proc), err(proc)) == (0, "out 1\nout 2\n", "err 1\n")
        proc = bg("tail", "-n", "1", "--stderr", pid)
        assert (out(proc), err(proc)) == ("", "err 1\n")
        proc = bg("tail", "-f", "--stdout", pid)
        assert (out(proc), err(proc)) == ("out 1\nout 2\n", "")
        proc = bg("cat", "--stderr", pid)
        assert (proc.returncode, out(proc), err(proc)) == (0, "", "err 1\n")
        proc = bg("cat", pid)
        assert (proc.returncode, out(proc), err(proc)) == (0, "out 1\nout 2\n", "")  # stderr was consumed
        assert task.info(fresh=True)["streams"]["stderr"]["unread"] == 0
        assert bg("cat", "--stdout", "--stderr", pid).returncode == 2
    finally:
        task.delete()


def _columns(line: str, names: list[str]) -> list[int]:
    """The display column at which each of *names* starts in *line*."""
    from wcwidth import wcswidth

    return [wcswidth(line[:line.index(n)]) for n in names]


def test_ls_aligns_wide_characters_by_display_width(pool: bgtask.TaskPool) -> None:
    pool.spawn(["sleep", "30"], meta={"name": "日本語 🚀"})
    pool.spawn(["sleep", "31"], meta={"name": "plain"})
    try:
        for shown in (out(bg("ls")), _in_a_terminal("ls", COLUMNS="200", NO_COLOR="1")):
            lines = shown.splitlines()
            assert _columns(lines[1], ["sleep 30"]) == _columns(lines[2], ["sleep 31"]) == \
                _columns(lines[0], ["COMMAND"])
        # cut on a narrow terminal: still no wider than the terminal
        for line in _in_a_terminal("ls", COLUMNS="72", NO_COLOR="1").splitlines():
            from wcwidth import wcswidth

            assert wcswidth(line) <= 72, line
    finally:
        delete_all(pool)


EVIL = "\x1b[31mred\x1b[0m\x07\x9b2J\u202eevil"


def test_control_characters_are_shown_escaped(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["printf", "%s", EVIL], meta={"name": EVIL, "note": EVIL, EVIL: 1})
    try:
        assert task.wait(timeout=10) == 0
        for args in (["ls"], ["ls", "--wide"], ["info", str(task.pid)], ["meta", str(task.pid)]):
            for shown in (out(bg(*args)), _in_a_terminal(*args, NO_COLOR="1")):
                for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
                    assert bad not in shown, (args, shown)
                assert "\\x1b[31mred" in shown, (args, shown)
        # the job's own output is its own: cat passes it on as it is
        assert bg("cat", str(task.pid)).stdout == EVIL.encode()
    finally:
        task.delete()


def test_colour_on_a_terminal_only(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        shown = _in_a_terminal("ls")
        assert "\x1b[32mrunning" in shown
        assert "\x1b[" not in _in_a_terminal("ls", NO_COLOR="1")
        assert "\x1b[" not in out(bg("ls"))
        pid, fd = _under_a_terminal("info", "999999999")
        try:
            shown_err = _read_until(fd, None).decode()
            assert _reap(pid) == 1
        finally:
            os.close(fd)
        assert "\x1b[1;31mbgtask: error:\x1b[0m no task 999999999" in shown_err
        assert "\x1b[" not in err(bg("info", "999999999"))
    finally:
        task.delete()


@pytest.mark.parametrize(("args", "status", "needles"), [
    pytest.param(["--pool", "/etc/passwd", "ls"], 1, ["/etc/passwd", "not a directory"], id="pool-a-file"),
    pytest.param(["wait", "1", "--timeout", "-1"], 2, ["must not be negative"], id="negative-timeout"),
    pytest.param(["tail", "-n", "-2", "1"], 2, ["must not be negative"], id="negative-lines"),
    pytest.param(["ls", "--bogus"], 2, ["bgtask ls: error: unrecognized arguments: --bogus",
                                         "bgtask ls --help"], id="option-of-a-command"),
    pytest.param(["logs", "1"], 2, ["unknown command 'logs'", "'cat' or 'tail'"], id="logs"),
    pytest.param(["stop", "1"], 2, ["did you mean 'kill'"], id="stop"),
    pytest.param(["status", "1"], 2, ["did you mean 'info'"], id="status"),
    pytest.param(["sapwn"], 2, ["did you mean 'spawn'"], id="typo"),
    pytest.param(["spawn", "--", "ls | wc -l"], 1, ["--shell", "bgtask spawn --shell -- 'ls | wc -l'"],
                 id="shell-line-as-one-word"),
])
def test_errors_speak_the_users_language(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                                        args: list[str], status: int, needles: list[str]) -> None:
    got, stdout, stderr = cli(capsys, *args)
    assert (got, stdout) == (status, "")
    assert_one_line_error(stderr, *needles)
    assert "[Errno" not in stderr and "not a number" not in stderr


def test_a_script_without_a_shebang_gets_a_hint(pool: bgtask.TaskPool, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    status, _, stderr = cli(capsys, "spawn", "--", str(script))
    assert status == 1
    assert_one_line_error(stderr, "#!")
    assert pool.search() == []


def test_counts_and_values_read_as_english_and_python() -> None:
    info = {"pid": 1, "status": {"running": False, "exit_code": 0}, "argv": ["true"], "cwd": "/",
            "meta": {"gone": None, "flag": True}, "streams": {"data": {"start": 0, "limit": 1, "unread": 1},
                                                              "stdout": {"start": 0, "limit": 1, "unread": 1}}}
    python = _format.info_lines(info)  # ipython's view
    assert any(line.endswith("gone = None") for line in python)
    assert any(line.endswith("flag = True") for line in python)
    assert any(line.endswith("unread 1 message") for line in python)
    assert any(line.endswith("unread 1 byte") for line in python)
    cli_view = _format.info_lines(info, style="json")  # the command line's: JSON
    assert any(line.endswith("gone = null") for line in cli_view)


def test_a_stopped_supervisor_in_ls_and_info(pool: bgtask.TaskPool, spawn) -> None:
    """issue 10 #4: ls lists it as unresponsive within about a second (red on a terminal,
    like other failing states); info exits 1 with one line that says since when."""
    frozen = spawn(["sleep", "60"], meta={"name": "frozen"})
    with stopped(frozen.pid):
        t0 = time.monotonic()
        shown = bg("ls")
        took = time.monotonic() - t0
        assert shown.returncode == 0, err(shown)
        row = [line for line in out(shown).splitlines() if line.split()[:1] == [str(frozen.pid)]]
        assert row and row[0].split()[1] == "unresponsive", out(shown)
        assert took < 6.0, f"ls took {took:.1f} s (a whole connect timeout is 10 s)"
        assert "\x1b[31munresponsive" in _in_a_terminal("ls")
        listed = json.loads(out(bg("ls", "--json")))
        assert [(i["pid"], i["state"]) for i in listed] == [(frozen.pid, "unresponsive")]
        shown = bg("info", str(frozen.pid))
        assert shown.returncode == 1
        assert_one_line_error(err(shown), str(frozen.pid), "stopped", "since", f"kill -CONT {frozen.pid}")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from("\x1b\x7f\x9b\u2028\u2029\u061c\u200e\u202e\u2066\u200d\xa0"))))
def test_printable_escapes_exactly_the_unsafe_characters(text: str) -> None:
    """The fast path (``str.isprintable``) and the per-character check agree: nothing
    unsafe gets through, and safe text comes back as it was."""
    from bgtask._format.text import _unsafe, printable

    shown = printable(text)
    assert not any(_unsafe(ch) for ch in shown)
    assert (shown == text) == (not any(_unsafe(ch) for ch in text))
