"""spawn(): argv, env, cwd, meta, buffers, locks, failures, and detachment from the caller."""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Point, fork, pid_alive, py, task_files, wait_for

import bgtask


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:].decode().split()


def ppid_of(pid: int) -> int:
    return int(stat_fields(pid)[1])


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is *pid*."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                f = stat_fields(int(name))
            except OSError:
                continue
            if int(f[1]) == pid:
                out.append((int(name), f[0]))
    return out


#: where bgtask is imported from, for Python processes and jobs that import it too
SRC = os.path.dirname(os.path.dirname(os.path.abspath(bgtask.__file__)))


def with_src() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))


ENV_DUMP = py("import json, os; print(json.dumps(dict(os.environ)))")


def run_and_read(task: bgtask.Task, timeout: float = 10.0) -> bytes:
    assert task.wait(timeout=timeout) is not None, "the job did not end"
    return task.stream("stdout").read()


# -- argv ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "kw"), [
    pytest.param("echo hi", {}, id="str-without-shell"),
    pytest.param(b"echo", {}, id="bytes"),
    pytest.param(["echo", "hi"], {"shell": True}, id="list-with-shell"),
    pytest.param(["echo", 1], {}, id="list-with-int"),
    pytest.param(["echo", b"hi"], {}, id="list-with-bytes"),
    pytest.param(42, {}, id="int"),
    pytest.param(iter(["true"]), {}, id="iterator"),
])
def test_bad_argv_is_a_type_error_and_starts_nothing(pool: bgtask.TaskPool, argv: object, kw: dict) -> None:
    with pytest.raises(TypeError):
        pool.spawn(argv, **kw)  # type: ignore[arg-type]
    assert task_files(pool) == []


@pytest.mark.parametrize(("option", "value", "exc"), [
    ("retain_output", -1, ValueError),
    ("max_buffer", -5, ValueError),
    ("max_buffer", 0, ValueError),
    ("retain_output", "10", TypeError),
    ("on_full", "wait", ValueError),
    ("meta", {1: "non-str key"}, TypeError),
    ("meta", [("name", "x")], TypeError),
    ("meta", {"gen": (i for i in ())}, TypeError),  # dill cannot serialize a generator
    ("env", {"A": 1}, TypeError),
    ("env", {"A=B": "x"}, ValueError),
    ("shell", "yes", TypeError),
    ("lock", "../escape", ValueError),
    ("lock", 5, TypeError),
])
def test_bad_options_raise_before_anything_starts(pool: bgtask.TaskPool, option: str, value: object,
                                                  exc: type) -> None:
    with pytest.raises(exc):
        pool.spawn(["true"], **{option: value})
    assert task_files(pool) == []


@pytest.mark.parametrize("argv", [[], [""], ["true", "a\0b"]], ids=["empty", "empty-program", "nul"])
def test_bad_argv_values_are_value_errors(pool: bgtask.TaskPool, argv: list[str]) -> None:
    with pytest.raises(ValueError):
        pool.spawn(argv)
    assert task_files(pool) == []


def test_exec_form_passes_arguments_verbatim(pool: bgtask.TaskPool) -> None:
    args = ["a b", "$HOME", "'quoted'", "", "*", "ünïcode"]
    task = pool.spawn(py("import sys, json; print(json.dumps(sys.argv[1:]))") + args)
    try:
        assert json.loads(run_and_read(task)) == args
        assert task.info()["argv"] == py("import sys, json; print(json.dumps(sys.argv[1:]))") + args
    finally:
        task.delete()


def test_shell_form_runs_through_bin_sh(pool: bgtask.TaskPool) -> None:
    task = pool.spawn("echo out-$((1+2)); echo err >&2; exit 4", shell=True)
    try:
        assert task.wait(timeout=10) == 4
        assert task.stream("stdout").read() == b"out-3\n"
        assert task.stream("stderr").read() == b"err\n"
        assert task.info()["argv"][:2] == ["/bin/sh", "-c"]
    finally:
        task.delete()


def test_program_is_found_in_path(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["echo", "found"])
    try:
        assert run_and_read(task) == b"found\n"
    finally:
        task.delete()


# -- env ---------------------------------------------------------------------------------------

def test_env_is_added_to_the_callers_environment(pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGT_INHERITED", "from-caller")
    monkeypatch.setenv("BGT_OVERRIDDEN", "old")
    monkeypatch.setenv("BGT_REMOVED", "doomed")
    task = pool.spawn(ENV_DUMP, env={"BGT_ADDED": "new", "BGT_OVERRIDDEN": "new", "BGT_REMOVED": None,
                                     "BGT_NEVER_SET": None})
    try:
        env = json.loads(run_and_read(task))
    finally:
        task.delete()
    assert env["BGT_INHERITED"] == "from-caller"
    assert env["BGT_ADDED"] == "new"
    assert env["BGT_OVERRIDDEN"] == "new"
    assert "BGT_REMOVED" not in env
    assert "BGT_NEVER_SET" not in env
    assert env["BGTASK_POOL"] == str(pool.path)
    assert env["BGTASK_PID"] == str(task.pid)


def test_job_gets_bgtask_pool_and_pid_even_if_env_says_otherwise(pool: bgtask.TaskPool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGTASK_PID", "1")  # as if we were a job ourselves
    task = pool.spawn(ENV_DUMP, env={"BGTASK_POOL": "/elsewhere", "BGTASK_PID": "2"})
    try:
        env = json.loads(run_and_read(task))
    finally:
        task.delete()
    assert env["BGTASK_POOL"] == str(pool.path)
    assert env["BGTASK_PID"] == str(task.pid)


def test_default_pool_inside_a_job_is_the_jobs_pool(pool: bgtask.TaskPool) -> None:
    code = ("import bgtask; sub = bgtask.spawn(['true']); print(sub.pool.path, sub.pid, flush=True);"
            "sub.wait(10); sub.delete()")
    task = pool.spawn(py(code), env={"PYTHONPATH": with_src()["PYTHONPATH"]})
    try:
        assert task.wait(timeout=20) == 0, task.stream("stderr").read()
        where, _sub = task.stream("stdout").read().decode().split()
        assert where == str(pool.path)
    finally:
        task.delete()


# -- cwd ---------------------------------------------------------------------------------------

def test_cwd_defaults_to_the_callers_cwd_at_spawn_time(pool: bgtask.TaskPool, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    task = pool.spawn(py("import os, time; time.sleep(0.2); print(os.getcwd())"))
    monkeypatch.chdir(tmp_path)  # a later change of ours does not move the job
    try:
        assert run_and_read(task).decode().strip() == str(here)
        assert task.info()["cwd"] == str(here)
    finally:
        task.delete()


def test_explicit_cwd(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    task = pool.spawn(py("import os; print(os.getcwd())"), cwd=tmp_path)
    try:
        assert run_and_read(task).decode().strip() == str(tmp_path)
        assert task.info()["cwd"] == str(tmp_path)
    finally:
        task.delete()


def test_relative_cwd_is_taken_from_the_callers_cwd(pool: bgtask.TaskPool, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    task = pool.spawn(py("import os; print(os.getcwd())"), cwd="sub")
    try:
        assert run_and_read(task).decode().strip() == str(tmp_path / "sub")
        assert task.info()["cwd"] == str(tmp_path / "sub")
    finally:
        task.delete()


# -- meta ----------------------------------------------------------------------------------------

def test_meta_values_of_any_dillable_kind(pool: bgtask.TaskPool) -> None:
    meta = {"name": "Hello World", "n": 3, "nested": {"a": [1, 2, (3, 4)], "s": {5}}, "raw": b"\0\xff",
            "point": Point(1, 2), "none": None, "square": lambda v: v * v}
    task = pool.spawn(["sleep", "30"], meta=meta)
    try:
        got = bgtask.Task(task.pid, pool).info()["meta"]
        square = got.pop("square")
        assert square(7) == 49
        del meta["square"]
        assert got == meta
    finally:
        task.delete()


def test_meta_is_visible_from_another_process(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"], meta={"name": "elsewhere", "items": [1, 2]})
    try:
        code = (f"import bgtask, json; m = bgtask.Task({task.pid}).info()['meta'];"
                "print(json.dumps(m))")
        out = subprocess.run(py(code), capture_output=True, text=True, timeout=20, env=with_src())
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"name": "elsewhere", "items": [1, 2]}
    finally:
        task.delete()


def test_no_meta_is_an_empty_dict(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        assert task.info()["meta"] == {}
    finally:
        task.delete()


# -- max_buffer and on_full -------------------------------------------------------------------------

def pattern(size: int) -> bytes:
    """SIZE bytes that say where they are: every 64 KiB block starts with its number."""
    block = bytes(range(256)) * 256
    return b"".join(i.to_bytes(4, "big") + block[4:] for i in range(size // len(block) + 1))[:size]


# Writes pattern(SIZE) to stdout in 64 KiB writes, then its sha256 and "done" to stderr.
PRODUCER = "import hashlib, sys\n" + inspect.getsource(pattern) + """
data = pattern(int(sys.argv[1]))
for i in range(0, len(data), 65536):
    sys.stdout.buffer.write(data[i:i + 65536])
sys.stdout.flush()
sys.stderr.write(hashlib.sha256(data).hexdigest() + " done")
"""


def producer(size: int) -> list[str]:
    return py(PRODUCER) + [str(size)]


@pytest.mark.timeout(30)
def test_on_full_block_holds_the_job_back_and_loses_nothing(pool: bgtask.TaskPool) -> None:
    size = 4 << 20  # far more than max_buffer plus a (grown) pipe buffer
    task = pool.spawn(producer(size), max_buffer=64 * 1024, on_full="block")
    try:
        out = task.stream("stdout")
        wait_for(lambda: out.info()["unread"] >= 64 * 1024, timeout=10)
        time.sleep(0.2)
        info = task.info(fresh=True)
        assert info["status"]["running"], "the job should be blocked on its full pipe"
        assert info["streams"]["stdout"]["unread"] <= 64 * 1024
        assert info["streams"]["stdout"]["limit"] < size
        assert task.stream("stderr").read() == b"", "the job got past its output"
        h = hashlib.sha256()
        n = 0
        for chunk in out.follow():
            h.update(chunk)
            n += len(chunk)
        assert n == size
        assert task.wait(timeout=10) == 0
        digest, done = task.stream("stderr").read().split()
        assert done == b"done"
        assert h.hexdigest().encode() == digest
        assert out.info()["dropped"] == 0
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_on_full_drop_drops_the_oldest_and_counts_them(pool: bgtask.TaskPool) -> None:
    size, keep = 1 << 20, 10_000
    task = pool.spawn(producer(size), max_buffer=keep, on_full="drop", retain_output=5000)
    try:
        assert task.wait(timeout=10) == 0
        out = task.stream("stdout")
        wait_for(lambda: out.eof, timeout=5)
        info = out.info()
        assert info["limit"] == size
        assert info["dropped"] == size - keep
        assert out.start == size - keep, "start is the first byte not dropped"
        # the kept bytes are the newest ones, intact
        expected_tail = pattern(size)[-keep:]
        assert out.read(out.start, size) == expected_tail
        with pytest.raises(bgtask.OutputGoneError) as ei:
            out.read(out.start - 1, size)
        assert ei.value.start == size - keep
        assert out.read() == expected_tail
        assert out.read() == b""
    finally:
        task.delete()


# -- lock ---------------------------------------------------------------------------------------------

def test_lock_is_exclusive_while_the_job_runs(pool: bgtask.TaskPool) -> None:
    first = pool.spawn(["sleep", "30"], lock="nightly")
    try:
        before = task_files(pool)
        with pytest.raises(bgtask.TaskLockedError) as ei:
            pool.spawn(["sleep", "30"], lock="nightly")
        assert isinstance(ei.value, bgtask.SpawnError)
        assert ei.value.lock == "nightly"
        assert "nightly" in str(ei.value)
        assert task_files(pool) == before, "a refused spawn leaves no files"
        assert [t.pid for t in pool.search()] == [first.pid]
        # Another name is another lock.
        other = pool.spawn(["true"], lock="weekly")
        other.delete()
        # Released when the job exits (the supervisor stays).
        assert first.kill() is True
        assert first.wait(timeout=10) == -signal.SIGKILL
        second = pool.spawn(["sleep", "30"], lock="nightly")
        try:
            # restart() takes the lock again: it is held now.
            with pytest.raises(bgtask.TaskLockedError):
                first.restart()
            assert first.info(fresh=True)["status"]["running"] is False
        finally:
            second.delete()
        assert first.restart() is True
        with pytest.raises(bgtask.TaskLockedError):
            pool.spawn(["true"], lock="nightly")
    finally:
        first.delete()
    # Deleting the holder releases it too.
    pool.spawn(["true"], lock="nightly").delete()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_lock_names_are_per_user(pool: bgtask.TaskPool) -> None:
    """Two users of a shared pool may each hold a lock called "nightly"."""
    from bgtask._supervisor import launch as _supervisor

    os.chmod(pool.path, 0o1777)  # a shared pool
    mine = pool.spawn(["sleep", "30"], lock="nightly")
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    child = fork()
    if child == 0:  # the other user: takes "nightly" the way its supervisor would
        code = 1
        try:
            os.close(go_w)
            os.close(ready_r)
            os.setgid(65534)
            os.setuid(65534)
            fd = _supervisor.take_lock(str(pool.path), "nightly")
            os.write(ready_w, b"held")
            os.read(go_r, 1)  # hold it until the parent has tried
            os.close(fd)
            code = 0
        except BaseException as exc:
            os.write(ready_w, repr(exc).encode()[:200])
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 300) == b"held", "the other user could not take its own 'nightly'"
        # ... and while both hold theirs, a second one of ours is still refused.
        with pytest.raises(bgtask.TaskLockedError):
            pool.spawn(["true"], lock="nightly")
    finally:
        os.close(go_w)
        os.close(ready_r)
        _, status = os.waitpid(child, 0)
        mine.delete()
    assert os.waitstatus_to_exitcode(status) == 0


# -- failures -----------------------------------------------------------------------------------------

def _not_executable(tmp_path: Path) -> str:
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\necho never\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(("make", "kw", "err", "filename"), [
    pytest.param(lambda t: ["/nonexistent/prog"], {}, errno.ENOENT, "/nonexistent/prog", id="no-such-path"),
    pytest.param(lambda t: ["bgtask-no-such-program-xyz"], {}, errno.ENOENT, "bgtask-no-such-program-xyz",
                 id="not-in-PATH"),
    pytest.param(lambda t: [_not_executable(t)], {}, errno.EACCES, None, id="not-executable"),
    pytest.param(lambda t: [str(t)], {}, errno.EACCES, None, id="a-directory"),
    pytest.param(lambda t: ["true"], {"cwd": "/nonexistent/dir"}, errno.ENOENT, "/nonexistent/dir",
                 id="missing-cwd"),
    pytest.param(lambda t: ["true"], {"cwd": "/etc/hostname"}, errno.ENOTDIR, "/etc/hostname", id="cwd-is-a-file"),
])
def test_spawn_error_says_why_and_leaves_nothing_behind(pool: bgtask.TaskPool, tmp_path: Path, make,
                                                       kw: dict, err: int, filename: str | None) -> None:
    argv = make(tmp_path)
    before_children = children_of(os.getpid())
    with pytest.raises(bgtask.SpawnError) as ei:
        pool.spawn(argv, **kw)
    e = ei.value
    assert not isinstance(e, bgtask.TaskLockedError)
    assert e.errno == err, str(e)
    assert os.strerror(err) in str(e)
    if filename is not None:
        assert e.filename == filename
        assert filename in str(e)
    assert task_files(pool) == []
    assert pool.search() == []
    assert children_of(os.getpid()) == before_children, "no process (not even a zombie) is left"


def test_a_shell_command_that_is_not_found_is_an_exit_code_not_a_spawn_error(pool: bgtask.TaskPool) -> None:
    # The shell itself starts fine; it is the shell that reports 127.
    task = pool.spawn("bgtask-no-such-program-xyz", shell=True)
    try:
        assert task.wait(timeout=10) == 127
        assert b"not found" in task.stream("stderr").read()
    finally:
        task.delete()


def test_spawn_returns_only_after_exec(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        child = task.info()["child_pid"]
        assert isinstance(child, int)
        with open(f"/proc/{child}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[:2] == [b"sleep", b"30"]
        assert os.path.basename(os.readlink(f"/proc/{child}/exe")) == "sleep"
        # The job leads its own process group (signals reach its children too).
        assert int(stat_fields(child)[2]) == child
        assert ppid_of(child) == task.pid
    finally:
        task.delete()


# -- detachment ---------------------------------------------------------------------------------------

def test_supervisor_is_detached_from_the_caller(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        assert ppid_of(task.pid) != os.getpid()
        # Its own session (field 6 of /proc/PID/stat, index 3 after the command name), and
        # no controlling terminal (tty_nr, index 4): a hang-up or a ^C does not reach it.
        # Our own session id may be 0 (a session led from outside our pid namespace, as in
        # CI containers); the supervisor's is the pid of spawn's intermediate process.
        fields = stat_fields(task.pid)
        assert int(fields[3]) not in (0, os.getsid(0))
        assert int(fields[4]) == 0
        assert os.getpgid(task.pid) != os.getpgid(0)
        assert children_of(os.getpid()) == [], "spawn left a child (or a zombie) in the caller"
    finally:
        task.delete()
    assert children_of(os.getpid()) == []


@pytest.mark.timeout(30)
def test_task_survives_the_callers_exit_and_is_read_from_another_process(pool: bgtask.TaskPool) -> None:
    spawner = ("import bgtask;"
               "t = bgtask.spawn(['sh', '-c', 'echo from-the-job; echo to-err >&2; sleep 30'],"
               " meta={'name': 'orphan'});"
               "print(t.pid)")
    out = subprocess.run(py(spawner), capture_output=True, text=True, timeout=20, env=with_src(), cwd="/")
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    task = bgtask.Task(pid, pool)
    try:
        assert pid_alive(pid), "the supervisor died with the process that spawned it"
        reader = (f"import bgtask; t = bgtask.Task({pid});"
                  "print(t.info()['meta']['name']);"
                  "print(t.stream('stdout').read(timeout=10).decode(), end='')")
        out = subprocess.run(py(reader), capture_output=True, text=True, timeout=20, env=with_src(), cwd="/")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "orphan\nfrom-the-job\n"
        assert task.info()["status"]["running"] is True
        assert task.stream("stderr").read(timeout=10) == b"to-err\n"
    finally:
        task.delete()
    assert not pid_alive(pid)


def test_supervisor_and_job_do_not_inherit_the_callers_fds(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    secret = tmp_path / "inheritable"
    secret.write_text("x")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        task = pool.spawn(["sleep", "30"])
        try:
            pipe_inode = os.fstat(r).st_ino
            for proc in (task.pid, task.info()["child_pid"]):
                for name in os.listdir(f"/proc/{proc}/fd"):
                    try:
                        target = os.readlink(f"/proc/{proc}/fd/{name}")
                    except OSError:
                        continue
                    assert target != str(secret), f"process {proc} inherited our file as fd {name}"
                    assert target != f"pipe:[{pipe_inode}]", f"process {proc} inherited our pipe"
            # The supervisor does not hold the caller's stdin/stdout/stderr (a caller run by
            # subprocess.run(capture_output=True) would never see end of file).
            for n in ("0", "1", "2"):
                assert os.readlink(f"/proc/{task.pid}/fd/{n}") == os.devnull
            # The job has exactly stdin, stdout and stderr.
            child = task.info()["child_pid"]
            assert sorted(int(n) for n in os.listdir(f"/proc/{child}/fd")) == [0, 1, 2]
        finally:
            task.delete()
    finally:
        os.close(fd)
        os.close(r)
        os.close(w)


def test_job_signals_are_not_inherited_as_ignored(pool: bgtask.TaskPool) -> None:
    """A job started from Python must not inherit SIGPIPE ignored: `yes | head` ends."""
    task = pool.spawn("yes | head -c 5", shell=True)
    try:
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"y\ny\ny"
    finally:
        task.delete()


def test_many_spawns_leave_no_zombies(pool: bgtask.TaskPool) -> None:
    tasks = [pool.spawn(["true"]) for _ in range(5)]
    try:
        assert children_of(os.getpid()) == []
        assert [t.pid for t in pool.search()] == sorted(t.pid for t in tasks)
    finally:
        for t in tasks:
            t.delete()
    assert pool.search() == []


def test_spawn_from_a_directory_that_was_removed(pool: bgtask.TaskPool, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(bgtask.SpawnError, match="cwd"):
        pool.spawn(["true"])
    task = pool.spawn(["true"], cwd="/")
    task.delete()
    assert task_files(pool) == []


def test_stat_of_socket_and_token(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        sock = os.lstat(pool.path / f"{task.pid}.sock")
        token = os.lstat(pool.path / f"{task.pid}.token")
        assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
        assert stat.S_ISREG(token.st_mode) and stat.S_IMODE(token.st_mode) == 0o600
    finally:
        task.delete()
    assert task_files(pool) == []


@pytest.mark.parametrize("template", ["1", "0"])
def test_spawn_uses_this_interpreter_without_site(pool: bgtask.TaskPool, template: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor runs under sys.executable (the job's python is the user's choice),
    isolated and without site; forked from the fork server (the default) its command line
    is the server's, started fresh it names the pool."""
    monkeypatch.setenv("BGTASK_TEMPLATE", template)
    task = pool.spawn(["sleep", "30"])
    try:
        with open(f"/proc/{task.pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        assert os.path.realpath(cmd[0]) == os.path.realpath(sys.executable) or cmd[0] == os.fsencode(
            sys.executable)
        assert cmd[1:3] == [b"-I", b"-S"]
        if template == "0":
            assert str(pool.path).encode() in cmd
        else:
            assert b"bgtask._supervisor.template" in cmd[4]
    finally:
        task.delete()


def test_a_caller_that_ignores_sigchld(pool: bgtask.TaskPool) -> None:
    """Servers ignore SIGCHLD to avoid zombies; an ignored signal survives exec. The job's
    exit must still be seen, and the job's own children must still be waitable."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        task = pool.spawn("sleep 0.1 & wait $!; echo waited=$?; exit 3", shell=True)
    finally:
        signal.signal(signal.SIGCHLD, old)
    try:
        assert task.wait(timeout=10) == 3, "the supervisor never saw its job exit"
        assert task.stream("stdout").read() == b"waited=0\n"
        with open(f"/proc/{task.pid}/status") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
        assert not ignored & (1 << (signal.SIGCHLD - 1)), "the supervisor ignores SIGCHLD"
    finally:
        task.delete()


def test_job_starts_with_default_signal_dispositions(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        with open(f"/proc/{task.info()['child_pid']}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        ignored = int(fields["SigIgn"].split()[0], 16)
        blocked = int(fields["SigBlk"].split()[0], 16)
        for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            assert not ignored & (1 << (sig - 1)), f"the job ignores {sig.name}"
        assert blocked == 0, "the job starts with signals blocked"
    finally:
        task.delete()


def test_spawning_and_failing_leaks_no_fds(pool: bgtask.TaskPool) -> None:
    fds = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        task = pool.spawn(py("print('x')"))
        assert task.wait(timeout=10) == 0
        assert task.stream("stdout").read() == b"x\n"
        assert pool.search() == [task]
        task.delete()
        with pytest.raises(bgtask.SpawnError):
            pool.spawn(["/nonexistent/prog"])
        holder = pool.spawn(["sleep", "30"], lock="fd-test")
        with pytest.raises(bgtask.TaskLockedError):
            pool.spawn(["true"], lock="fd-test")
        holder.delete()
    assert set(os.listdir("/proc/self/fd")) == fds


def test_spawn_from_several_threads(pool: bgtask.TaskPool) -> None:
    import threading

    tasks: list[bgtask.Task] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                tasks.append(pool.spawn(["true"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert len({t.pid for t in tasks}) == 12
        assert [t.pid for t in pool.search()] == sorted(t.pid for t in tasks)
    finally:
        for t in tasks:
            t.delete()
