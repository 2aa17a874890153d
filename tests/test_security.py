"""Security: other users of a shared pool, planted names, authentication, no TCP.

The threat model (README.rst, "Threat model"): bgtask protects a user's tasks from *other
local users*. In a shared (1777) pool another user must not list, connect to, read,
signal or delete my tasks, nor make my supervisor or my clients follow a symlink or
overwrite a file by planting names; my token and socket are never readable or writable
by others. Anyone who can authenticate as the owner (who can read the owner's token
file) can run code as the owner, as with any pickle-based channel: that is the owner
and root, and is out of scope here. Another user *can* deny service in a shared pool
(by planting the names a new task or a lock would take): spawn then fails cleanly.

"Another user" is uid/gid 65534 (nobody): a forked child of the test process that
drops to that user and reports back through a pipe (:func:`run_as`). Forked, not
exec'd, because the interpreter may live where nobody can reach it (/root/.pyenv); for
the same reason that user's own tasks are started by :func:`user_supervisor`, a forked
child that becomes a real supervisor in-process (its job is /bin/sleep). Needs root.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import end_pool, fork, pid_alive, wait_for

import bgtask
from bgtask import _paths
from bgtask._client import connection as _protocol
from bgtask._client.spawn import build_spec
from bgtask._wire import names as _names

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user"),
]

OTHER = 65534  # nobody


# -- other users ---------------------------------------------------------------------------------

def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _preload() -> None:
    """Import what the code run as another user may need, while we can still read it."""
    import concurrent.futures.thread  # noqa: F401
    import encodings.ascii  # noqa: F401
    import encodings.latin_1  # noqa: F401
    import encodings.utf_8  # noqa: F401
    import hashlib  # noqa: F401
    import traceback  # noqa: F401

    import dill  # noqa: F401
    import filelock  # noqa: F401

    import bgtask._supervisor.boot  # noqa: F401
    import bgtask._supervisor.launch  # noqa: F401
    import bgtask._supervisor.main_loop  # noqa: F401


def run_as(uid: int, code: str, *args: str) -> str:
    """Run *code* in a forked child that became *uid*; returns what it passed to
    ``emit(text)``. In the code's globals, ``argv`` is *args*.

    :raises AssertionError: the code raised (with its traceback).
    """
    _preload()
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover -- the child
        status = 0
        try:
            os.close(r)
            _become(uid)
            exec(compile(code, "<as-user>", "exec"),
                 {"__name__": "__as_user__", "argv": list(args),
                  "emit": lambda text: os.write(w, text.encode())})
        except BaseException:
            import traceback

            os.write(w, ("\nFAILED\n" + traceback.format_exc()).encode())
            status = 1
        os._exit(status)
    os.close(w)
    chunks = []
    while True:
        part = os.read(r, 65536)
        if not part:
            break
        chunks.append(part)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def run_json_as(uid: int, code: str, *args: str) -> Any:
    return json.loads(run_as(uid, "import json\nres = {}\n" + code + "\nemit(json.dumps(res))\n", *args))


class UserTask:
    """A real task of another user: a forked child that became *uid* and then a
    supervisor (in-process, so no interpreter has to be exec'd as that user)."""

    def __init__(self, uid: int, pool: str, argv: list[str]) -> None:
        from bgtask._supervisor import boot as _supervisor
        from bgtask._supervisor import main_loop

        _preload()
        cfg = build_spec(bgtask.TaskPool(pool).backend, argv, cwd="/", meta={"who": "other"},
                         retain_output=0, max_buffer=1 << 20)
        r, w = os.pipe()
        pid = fork()
        if pid == 0:  # pragma: no cover -- the child: never returns
            try:
                os.close(r)
                _become(uid)
                startup = _supervisor.Startup(pool, cfg)
                startup.start()
                assert startup.job is not None
                os.write(w, str(startup.job[0]).encode())
                os.close(w)
                main_loop.serve(startup)
            finally:
                os._exit(1)
        os.close(w)
        data = os.read(r, 100)
        os.close(r)
        assert data, "the other user's supervisor did not start"
        self.pid = pid
        self.job = int(data)
        self.reaped = False

    def kill(self) -> None:
        """End it as root, by pid (its job too); reap the supervisor (our child)."""
        for pid in (self.job, self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self.reaped:
            os.waitpid(self.pid, 0)
            self.reaped = True


@pytest.fixture
def shared() -> Iterator[str]:
    """A shared pool: a 1777 directory of root's, like /var/run/bgtask. Fails the test if
    a process of it outlives the test (of either user)."""
    path = tempfile.mkdtemp(prefix="bgs", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        left = end_pool(path)
        if left:
            pytest.fail(f"processes outlived the test: {left}")


def _files(path: str) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, uid, mode) of every entry, without following anything."""
    out = {}
    for name in os.listdir(path):
        st = os.lstat(os.path.join(path, name))
        out[name] = (st.st_ino, st.st_uid, st.st_mode)
    return out


# -- another user against my tasks -----------------------------------------------------------------

_ATTACK = r'''
import errno, os, signal, socket, bgtask
from bgtask import _paths
pool_path, pid, job = argv[0], int(argv[1]), int(argv[2])
pool = bgtask.TaskPool(pool_path)
task = bgtask.Task(pid, pool)

def attempt(name, fn):
    try:
        value = fn()
    except Exception as exc:
        res[name] = type(exc).__name__
    else:
        res[name] = "ok: " + repr(value)[:80]

attempt("search", lambda: [t.pid for t in pool.search()])
attempt("search-pattern", lambda: [t.pid for t in pool.search(meta={"secret": "s3cret"})])
attempt("info", lambda: task.info())
reason = {}
res["connect"] = [task.connect(fail_reason=reason), reason.get("type")]
attempt("read", lambda: task.stream("stdout").read())
attempt("write", lambda: task.stream("stdin").write(b"rm -rf /\n"))
attempt("kill", lambda: task.kill("TERM"))
attempt("delete", lambda: task.delete(timeout=0))
attempt("clean", lambda: pool.clean())
attempt("call", lambda: task.call_remote_method("info"))
sock_path = _paths.sock_path(pool_path, pid)
tok_path = _paths.token_path(pool_path, pid)
def raw_connect():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock_path)
    finally:
        s.close()
attempt("raw-connect", raw_connect)
attempt("token-read", lambda: open(tok_path, "rb").read())
attempt("token-write", lambda: open(tok_path, "r+b").write(b"x"))
attempt("token-create", lambda: os.open(tok_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
attempt("unlink-sock", lambda: os.unlink(sock_path))
attempt("unlink-token", lambda: os.unlink(tok_path))
attempt("rename-token", lambda: os.rename(tok_path, tok_path + ".x"))
attempt("chmod-token", lambda: os.chmod(tok_path, 0o666))
attempt("signal-supervisor", lambda: os.kill(pid, signal.SIGTERM))
attempt("signal-job", lambda: os.killpg(job, signal.SIGKILL))
attempt("sweep", lambda: bgtask._client.sweep.sweep(pool_path, pid, force_if_silent=True))
'''


def test_another_user_cannot_list_connect_read_signal_or_delete_my_tasks(shared: str) -> None:
    pool = bgtask.TaskPool(shared)
    task = pool.spawn(["sleep", "60"], meta={"secret": "s3cret"})
    try:
        job = task.info()["child_pid"]
        before = _files(shared)
        res = run_json_as(OTHER, _ATTACK, shared, str(task.pid), str(job))
        denied = {"AccessDeniedError", "PermissionError"}
        assert res["search"] == "ok: []"
        assert res["search-pattern"] == "ok: []"
        assert res["connect"] == [False, "AccessDeniedError"]
        for name in ("info", "read", "write", "kill", "delete", "call"):
            assert res[name] == "AccessDeniedError", (name, res[name])
        assert res["clean"] == "ok: []"
        for name in ("raw-connect", "token-read", "token-write", "token-create", "unlink-sock",
                     "unlink-token", "rename-token", "chmod-token", "signal-supervisor", "signal-job"):
            assert res[name] in denied, (name, res[name])
        assert res["sweep"] == "ok: None"  # death not proven: nothing touched
        # Nothing changed for the owner (the other user may have made a lock file of theirs).
        assert {n: v for n, v in _files(shared).items() if v[1] != OTHER} == before
        info = task.info(fresh=True)
        assert info["status"]["running"] and info["meta"] == {"secret": "s3cret"}
        assert task.stream("stdin").info()["limit"] == 0
    finally:
        task.delete()


def test_task_files_are_never_accessible_to_others(shared: str) -> None:
    old = os.umask(0)  # modes must not depend on the caller's umask
    try:
        task = bgtask.TaskPool(shared).spawn(["sleep", "60"], lock="nightly")
    finally:
        os.umask(old)
    try:
        # The status record is written once the supervisor serves (spawn may return first).
        wait_for(lambda: f"{task.pid}.info" in _files(shared), timeout=5)
        files = _files(shared)
        # The status record (<pid>.info) is one of the task's files: 0600 like the rest.
        # The fork server's files (.tpl-<uid>-<key>.sock/.token/.lock) are checked too.
        template = {n for n in files if n.startswith(".tpl-0-")}
        assert {n.rsplit(".", 1)[1] for n in template} <= {"sock", "token", "lock"}
        assert set(files) - template == {f"{task.pid}.sock", f"{task.pid}.token", f"{task.pid}.info",
                                         "lock-0-nightly.lock", ".bgtask-0.lock"}
        for name, (_ino, uid, mode) in files.items():
            assert uid == 0, name
            assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))
        assert stat.S_ISSOCK(files[f"{task.pid}.sock"][2])
        with open(os.path.join(shared, f"{task.pid}.token"), "rb") as f:
            token_hex = f.read().split()[1]
        # The token lives in the token file and the supervisor's memory only: not in the
        # job's environment, and the job holds no descriptor but its own 0, 1 and 2 and its lock.
        job = task.info()["child_pid"]
        with open(f"/proc/{job}/environ", "rb") as f:
            assert token_hex not in f.read()
        with open(f"/proc/{task.pid}/cmdline", "rb") as f:
            assert token_hex not in f.read()
        # 0/1/2, and the lock's fd: the job holds the lock too (it outlives a killed
        # supervisor; issue 11 #6)
        fds = sorted(os.listdir(f"/proc/{job}/fd"))
        assert fds[:3] == ["0", "1", "2"] and len(fds) == 4, fds
        assert os.readlink(f"/proc/{job}/fd/{fds[3]}").endswith("/lock-0-nightly.lock")
    finally:
        task.delete()


def test_my_tasks_and_those_of_another_user_in_one_pool(shared: str) -> None:
    """Each user sees only their own tasks; root is no exception. Root never connects to
    another user's socket, and never removes another user's files -- not even stale ones
    of a dead supervisor -- nor signals that user's orphaned job."""
    pool = bgtask.TaskPool(shared)
    mine = pool.spawn(["sleep", "60"])
    theirs = UserTask(OTHER, shared, ["sleep", "60"])
    try:
        assert pool.search() == [mine]
        with pytest.raises(bgtask.AccessDeniedError):
            bgtask.Task(theirs.pid, pool).info()
        with pytest.raises(bgtask.AccessDeniedError):
            bgtask.Task(theirs.pid, pool).delete()
        assert pool.clean() == []
        res = run_json_as(OTHER, "import bgtask\n"
                                 "p = bgtask.TaskPool(argv[0])\n"
                                 "res['search'] = [t.pid for t in p.search()]\n"
                                 "res['meta'] = p.search()[0].info()['meta']\n", shared)
        assert res == {"search": [theirs.pid], "meta": {"who": "other"}}
        # Their supervisor dies: its files are stale, its job an orphan -- but not ours.
        os.kill(theirs.pid, signal.SIGKILL)
        os.waitpid(theirs.pid, 0)
        theirs.reaped = True
        sock = _paths.sock_path(shared, theirs.pid)
        wait_for(lambda: _protocol.refuses(sock))
        before = {n: v for n, v in _files(shared).items() if n.startswith(f"{theirs.pid}.")}
        assert len(before) == 3  # socket, token file and status record
        assert pool.search() == [mine]
        with pytest.raises(bgtask.AccessDeniedError):
            bgtask.Task(theirs.pid, pool).info()
        assert {n: v for n, v in _files(shared).items() if n.startswith(f"{theirs.pid}.")} == before
        assert pid_alive(theirs.job)
        # Its owner's next search sweeps them (and stops the orphan).
        res = run_json_as(OTHER, "import bgtask\nres['search'] = bgtask.TaskPool(argv[0]).search()\n", shared)
        assert res == {"search": []}
        wait_for(lambda: not pid_alive(theirs.job), timeout=3)
        assert not any(n.startswith(f"{theirs.pid}.") for n in os.listdir(shared))
    finally:
        mine.delete()
        theirs.kill()


_PLANT = r'''
import os, socket
pool, victim, first = argv[0], argv[1], int(argv[2])
planted = []
def plant(name, kind):
    path = os.path.join(pool, name)
    if kind == "symlink":
        os.symlink(victim, path)
    elif kind == "fifo":
        os.mkfifo(path, 0o666)
    elif kind == "file":
        with open(path, "w") as f:
            f.write("bgtask-token-1 " + "ab" * 32 + "\n")
        os.chmod(path, 0o666)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(1); s.close()
    planted.append(name)
kinds = ["symlink", "fifo", "file", "socket"]
for i, pid in enumerate(range(first, first + 24)):
    # names of the next pids: a new supervisor of root's may get any of them
    plant(f"{pid}.token", kinds[i % 4] if kinds[i % 4] != "socket" else "symlink")
    plant(f"{pid}.sock", kinds[(i + 1) % 4])
for name in ("lock-0-nightly.lock", ".bgtask-0.lock", "lock-0-other.lock"):
    plant(name, "symlink")
res["planted"] = planted
'''


def test_planted_names_are_never_followed_or_overwritten(shared: str, tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    res = run_json_as(OTHER, _PLANT, shared, str(victim), str(last + 1))
    planted = _files(shared)
    assert set(planted) == set(res["planted"])
    pool = bgtask.TaskPool(shared)
    tasks = []
    try:
        for _ in range(4):
            try:
                tasks.append(pool.spawn(["sleep", "60"]))
            except bgtask.SpawnError as exc:
                # Every pid we got had a planted name: a denial of service, cleanly reported.
                assert "no free task name" in str(exc), exc
        for task in tasks:
            assert f"{task.pid}.token" not in planted and task.info()["status"]["running"]
        # A planted lock file: the spawn fails with the reason, nothing is followed.
        with pytest.raises(bgtask.SpawnError, match="lock file"):
            pool.spawn(["sleep", "60"], lock="nightly")
        # Root's search (which would sweep stale files) and clean leave them all alone.
        assert sorted(pool.search(), key=lambda t: t.pid) == sorted(tasks, key=lambda t: t.pid)
        assert pool.clean() == []
        for pid in range(last + 1, last + 25):
            with pytest.raises((bgtask.AccessDeniedError, bgtask.TaskNotFoundError)):
                bgtask.Task(pid, pool).info()
    finally:
        for task in tasks:
            task.delete()
    assert victim.read_text() == "precious"
    st = os.stat(victim)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (0, 0o644, 1)
    now = _files(shared)
    assert {n: v for n, v in now.items() if n in planted} == planted, "a planted name was touched"


# -- authentication -------------------------------------------------------------------------------

def test_a_wrong_authkey_is_refused_and_the_supervisor_still_serves(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    try:
        address = str(pool.path / f"{task.pid}.sock")
        for _ in range(3):
            with pytest.raises(multiprocessing.AuthenticationError):
                multiprocessing.connection.Client(address, authkey=b"wrong")
        assert task.info(fresh=True)["status"]["running"] is True
        # The owner's authkey works with a stock client, too.
        token, _, _ = _paths.read_token_file(str(pool.path), task.pid)
        conn = multiprocessing.connection.Client(address, authkey=_paths.authkey_from_token(token))
        conn.send((None, "accept_connection", ("stock",), {}))
        assert conn.recv() == ("#RETURN", None)
        conn.send((_names.STATE_IDENT, "stream_info", ("stdout",), {}))
        kind, result = conn.recv()
        assert kind == "#RETURN" and result["limit"] == 0
        for _ in range(2):  # the encoded (and then cached) info reply reads as a dict
            conn.send((_names.STATE_IDENT, "info", (), {}))
            kind, result = conn.recv()
            assert kind == "#RETURN" and result["pid"] == task.pid and result["status"]["running"]
        conn.close()
    finally:
        task.delete()


class _Bomb:
    """Unpickling it creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _frame(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


@pytest.mark.parametrize("when", ["before-challenge", "as-answer", "huge-length"])
def test_nothing_is_unpickled_before_authentication(pool: bgtask.TaskPool, tmp_path: Any,
                                                    when: str) -> None:
    task = pool.spawn(["sleep", "60"])
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps((None, "accept_connection", (_Bomb(str(marker)),), {}))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(pool.path / f"{task.pid}.sock"))
        if when == "before-challenge":
            s.sendall(_frame(bomb) * 3)
        elif when == "as-answer":
            (n,) = struct.unpack("!i", s.recv(4))
            s.recv(n)  # the challenge
            s.sendall(_frame(bomb) + _frame(bomb))
        else:
            s.sendall(struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
        # The supervisor refuses and hangs up.
        t0 = time.monotonic()
        data = b""
        while time.monotonic() - t0 < 5:
            try:
                part = s.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread
                break
            if not part:
                break
            data += part
        s.close()
        assert time.monotonic() - t0 < 5, "the connection was not closed"
        assert b"#RETURN" not in data
        assert not marker.exists()
        assert task.info(fresh=True)["status"]["running"] is True
    finally:
        task.delete()


def test_server_commands_cannot_stop_or_confuse_the_supervisor(pool: bgtask.TaskPool) -> None:
    """Even the owner's stock client: no shutdown, no debug_info, no other objects, no
    method outside the exposed list, and decref never drops the task's state."""
    task = pool.spawn(["sleep", "60"])
    try:
        token, _, _ = _paths.read_token_file(str(pool.path), task.pid)
        authkey = _paths.authkey_from_token(token)
        address = str(pool.path / f"{task.pid}.sock")
        for request in [(None, "shutdown", (), {}), (None, "debug_info", (), {}),
                        (None, "number_of_objects", (), {}), (None, "create", ("dict",), {}),
                        (None, "__init__", (), {})]:
            conn = multiprocessing.connection.Client(address, authkey=authkey)
            conn.send(request)
            kind, _result = conn.recv()
            assert kind == "#TRACEBACK", request
            conn.close()
        for _ in range(5):  # one server command per connection, as stock clients do
            conn = multiprocessing.connection.Client(address, authkey=authkey)
            conn.send((None, "decref", (_names.STATE_IDENT,), {}))
            assert conn.recv() == ("#RETURN", None)
            conn.close()
        conn = multiprocessing.connection.Client(address, authkey=authkey)
        conn.send((None, "accept_connection", ("x",), {}))
        assert conn.recv() == ("#RETURN", None)
        for method in ("_end_run", "startup", "__class__", "__reduce__", "_killpg", "rollback"):
            conn.send((_names.STATE_IDENT, method, (), {}))
            kind, result = conn.recv()
            assert kind == "#ERROR" and isinstance(result, AttributeError), method
        conn.send(("other-object", "info", (), {}))
        kind, result = conn.recv()
        assert kind == "#ERROR" and isinstance(result, LookupError)
        # Malformed requests: an answer each, and the connection stays in step.
        conn.send_bytes(b"\x80\x04this is not a pickle")
        assert conn.recv()[0] == "#TRACEBACK"
        for bad in [("task", "info"), "info", None, ("task", "info", "args", "kwds")]:
            conn.send(bad)
            assert conn.recv()[0] in ("#ERROR", "#TRACEBACK"), bad
        conn.send((_names.STATE_IDENT, "info", (), {}))
        kind, result = conn.recv()
        assert kind == "#RETURN" and result["pid"] == task.pid
        conn.close()
        assert task.info(fresh=True)["status"]["running"] is True
    finally:
        task.delete()


# -- the network -------------------------------------------------------------------------------------

def _inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:["):-1])
    return out


def _inet_inodes() -> set[str]:
    out = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                out.add(fields[9])
    return out


def test_no_tcp_or_udp_socket_is_ever_opened(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    try:
        handles = [bgtask.Task(task.pid, pool) for _ in range(3)]
        for h in handles:
            h.info(fresh=True)  # connections are open now
        task.stream("stdin").write(b"x")
        sup = _inodes(task.pid)
        assert len(sup) >= 4  # the listener and the connections are Unix sockets...
        assert not (sup & _inet_inodes())  # ...and none of them an internet socket
        with open(f"/proc/{task.pid}/net/unix") as f:
            unix = {line.split()[6] for line in f.read().splitlines()[1:] if len(line.split()) > 6}
        assert sup <= unix
    finally:
        task.delete()
