"""The fork server (``_supervisor/template.py``): spawns work with it in use, killed
mid-spawn, and absent; it is owner-only and authenticated; its children share nothing
that matters with it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import end_fork_servers, fork_servers, pid_alive, wait_for
from test_security import OTHER, run_json_as

import bgtask
from bgtask._client import template as _template


@pytest.fixture(autouse=True)
def _template_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BGTASK_TEMPLATE", "1")  # the default, whatever the environment says
    yield
    _template._shunned.clear()  # a template shunned by a test is not shunned by the next


def _template_files(pool: bgtask.TaskPool) -> dict[str, os.stat_result]:
    return {n: os.lstat(os.path.join(pool.path, n)) for n in os.listdir(pool.path) if n.startswith(".tpl-")}


def _template_pid(pool: bgtask.TaskPool) -> int:
    sock = next(n for n in _template_files(pool) if n.endswith(".sock"))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.path.join(pool.path, sock))
        return int(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _works(task: bgtask.Task) -> None:
    assert task.wait(timeout=10) == 0
    assert task.stream("stdout").read() == b"hi\n"


def test_spawns_go_through_the_template_which_is_private(pool: bgtask.TaskPool, spawn) -> None:
    a = spawn(["sh", "-c", "echo hi"])
    b = spawn(["sh", "-c", "echo hi"])
    files = _template_files(pool)
    assert {n.rsplit(".", 1)[1] for n in files} == {"sock", "token", "lock"}
    for st in files.values():
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    tpl = _template_pid(pool)
    for task in (a, b):
        _works(task)
        # A supervisor of its own session, not the template's child, with its own token.
        assert os.getsid(task.pid) == task.pid or os.getsid(task.pid) != os.getsid(tpl)
    tokens = {_read(os.path.join(pool.path, f"{t.pid}.token"))[:90] for t in (a, b)}
    assert len(tokens) == 2


def test_the_template_exits_when_idle_and_the_next_spawn_starts_one(pool: bgtask.TaskPool, spawn) -> None:
    task = spawn(["sh", "-c", "echo hi"])
    _works(task)
    tpl = _template_pid(pool)
    task.delete()
    wait_for(lambda: _read(f"/proc/{tpl}/stat").split()[2:3] in ([], [b"Z"]), timeout=10)
    _works(spawn(["sh", "-c", "echo hi"]))


def test_a_template_killed_mid_spawn_costs_nothing(pool: bgtask.TaskPool, spawn) -> None:
    _works(spawn(["sh", "-c", "echo hi"]))
    tpl = _template_pid(pool)
    os.kill(tpl, signal.SIGSTOP)  # the next spawn connects and waits for its greeting...
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(spawn(["sh", "-c", "echo hi"])))
    t.start()
    time.sleep(0.5)
    os.kill(tpl, signal.SIGKILL)  # ...and then the template dies under it
    t.join(30)
    assert len(result) == 1 and isinstance(result[0], bgtask.Task)
    _works(result[0])
    _works(spawn(["sh", "-c", "echo hi"]))  # and spawns go on (a new template, or fresh)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("template", ["1", "0"])
def test_supervisors_hash_without_openssl(pool: bgtask.TaskPool, spawn, monkeypatch: pytest.MonkeyPatch,
                                          template: str) -> None:
    """The handshake's HMAC uses CPython's own SHA-256: libcrypto mapped and touched in
    every supervisor was 1.2 MB of RSS (``boot.use_builtin_hashes``); nor are the
    compressors that ``shutil`` imports loaded (``boot.skip_unused_modules``)."""
    pytest.importorskip("_sha256" if sys.version_info < (3, 12) else "_sha2")
    monkeypatch.setenv("BGTASK_TEMPLATE", template)
    task = spawn(["sleep", "30"])
    assert task.info(fresh=True)["state"] == "running"  # a whole handshake, answered
    with open(f"/proc/{task.pid}/maps") as f:
        maps = f.read()
    assert "libcrypto" not in maps and "_hashlib" not in maps
    assert "_bz2." not in maps and "_lzma." not in maps


def test_spawn_without_the_template(pool: bgtask.TaskPool, spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGTASK_TEMPLATE", "0")
    _works(spawn(["sh", "-c", "echo hi"]))
    assert _template_files(pool) == {}


def test_a_wrong_token_is_refused(pool: bgtask.TaskPool, spawn) -> None:
    from bgtask._wire.forkserver import REQUEST, TOKEN_SIZE

    _works(spawn(["sh", "-c", "echo hi"]))
    sock = next(n for n in _template_files(pool) if n.endswith(".sock"))
    files = lambda: {n for n in os.listdir(pool.path) if not n.endswith(".tmp")}  # noqa: E731  (a record being written)
    before = files()
    spec = b"x" * 10
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(os.path.join(pool.path, sock))
        s.sendall(REQUEST + b"\0" * TOKEN_SIZE + (0o22).to_bytes(4, "big") + len(spec).to_bytes(4, "big") + spec)
        try:
            assert s.recv(100) == b""  # hung up on, nothing reported
        except ConnectionResetError:
            pass  # hung up on with our bytes unread: the same
    assert files() == before  # no supervisor was started
    _works(spawn(["sh", "-c", "echo hi"]))


def _children(pid: int) -> set[int]:
    return {int(c) for c in _read(f"/proc/{pid}/task/{pid}/children").split()}


def test_the_spare_is_forked_in_advance_and_ends_with_the_template(pool: bgtask.TaskPool, spawn) -> None:
    _works(spawn(["sh", "-c", "echo hi"]))
    tpl = _template_pid(pool)  # (our connection used up a spare: the template forks another)
    tokens = lambda: {int(n.split(".")[0]) for n in os.listdir(pool.path) if n[0].isdigit()}  # noqa: E731
    # The spare that took our connection exits; its successor waits.
    wait_for(lambda: len(_children(tpl) - tokens()) == 1, timeout=10)
    time.sleep(0.3)
    spares = _children(tpl) - tokens()
    assert len(spares) == 1
    spare = spares.pop()
    assert os.getsid(spare) == spare  # a session of its own, like any supervisor
    task = spawn(["sh", "-c", "echo hi"])
    assert task.pid == spare  # the spare became that supervisor
    _works(task)
    wait_for(lambda: len(_children(tpl) - tokens()) == 1, timeout=10)
    spare = (_children(tpl) - tokens()).pop()
    os.kill(tpl, signal.SIGKILL)
    wait_for(lambda: _read(f"/proc/{spare}/stat").split()[2:3] in ([], [b"Z"]), timeout=10)
    assert task.wait(timeout=10) == 0 and task.info(fresh=True)  # it does not need its template
    _works(spawn(["sh", "-c", "echo hi"]))


def test_the_fixtures_end_a_pools_fork_server_and_its_spare(pool: bgtask.TaskPool, spawn) -> None:
    """What the pool fixture runs at teardown: the fork server a test started and its
    spare are found through the pool's files and ended, not left to exit by themselves."""
    task = spawn(["sh", "-c", "echo hi"])
    _works(task)
    tpl = _template_pid(pool)  # (uses up a spare: it exits, and the template forks another)

    def settled() -> set[int]:
        found = set(fork_servers([str(pool.path)]))
        return found if tpl in found and len(found) == 2 and (found - {tpl}) <= _children(tpl) else set()

    wait_for(settled, timeout=10)
    time.sleep(0.3)  # the used-up spare is gone, its successor waits
    found = wait_for(settled, timeout=10)
    (spare,) = found - {tpl}
    assert spare != task.pid  # the waiting spare, not the task (it holds its token)
    assert fork_servers([os.path.dirname(str(pool.path)) + "/elsewhere"]) == []
    end_fork_servers([str(pool.path)])
    assert not pid_alive(tpl) and not pid_alive(spare)
    assert task.info(fresh=True)["pid"] == task.pid  # the task is not the fork server's


def test_the_fork_server_and_its_spare_go_at_once_when_the_pool_is_removed(
        pool: bgtask.TaskPool, spawn) -> None:
    """``rm -rf`` of a pool (a temporary directory's end, ``tools/smoke``'s cleanup): the
    spare hears it through its inotify watch and both processes are gone at once, not
    at the spare's next one-second look (nor by the fixtures, which would end them)."""
    task = spawn(["sleep", "60"])
    assert _inotify_fd(task.pid) == -1  # a supervisor does not keep its spare's watch
    tpl = _template_pid(pool)  # (uses up a spare: it exits, and the template forks another)

    def spare() -> int | None:
        found = set(fork_servers([str(pool.path)])) - {tpl}
        return found.pop() if len(found) == 1 and found <= _children(tpl) else None

    wait_for(spare, timeout=10)
    time.sleep(0.3)  # the used-up spare is gone, its successor waits in its poll
    waiting = wait_for(spare, timeout=10)
    assert _read(f"/proc/{waiting}/fdinfo/{_inotify_fd(waiting)}").count(b"inotify wd:") == 2
    for task in pool.search():
        task.delete()
    time.sleep(0.3)  # the spare's poll is between two of its one-second looks
    shutil.rmtree(str(pool.path))
    t0 = time.monotonic()
    wait_for(lambda: not pid_alive(tpl) and not pid_alive(waiting), timeout=10)
    assert time.monotonic() - t0 < 0.5  # a second-long tick would miss this half the time


def _inotify_fd(pid: int) -> int:
    """The fd of *pid*'s inotify instance (the spare's removal watch), or -1."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                return int(fd)
    return -1


def test_another_user_cannot_reach_the_template(pool: bgtask.TaskPool, spawn) -> None:
    _works(spawn(["sh", "-c", "echo hi"]))
    os.chmod(pool.path, 0o755)  # as if shared: only the files' own modes protect them
    sock = next(os.path.join(pool.path, n) for n in _template_files(pool) if n.endswith(".sock"))
    token = sock[: -len(".sock")] + ".token"
    res = run_json_as(OTHER, """
import socket
for what, fn in (("connect", lambda: socket.socket(socket.AF_UNIX).connect(argv[0])),
                 ("token", lambda: open(argv[1], "rb").read())):
    try:
        fn()
        res[what] = "allowed"
    except OSError as exc:
        res[what] = type(exc).__name__
""", sock, token)
    assert res == {"connect": "PermissionError", "token": "PermissionError"}


def test_conditions_key_changes_with_what_a_job_inherits() -> None:
    import resource

    key = _template.conditions_key("/x/python", "/x/bgtask")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(64, soft // 2), hard))
    try:
        assert _template.conditions_key("/x/python", "/x/bgtask") != key
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _template.conditions_key("/x/python", "/x/bgtask") == key


def test_conditions_key_follows_a_change_made_from_outside() -> None:
    """The key's hash is reused while its parts are unchanged; a limit another process
    changes for us (``prlimit``) still gives another key at the next spawn."""
    import resource
    import subprocess

    key = _template.conditions_key("/x/python", "/x/bgtask")
    assert _template.conditions_key("/x/python", "/x/bgtask") == key  # reused
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = max(64, soft // 2)
    set_it = "import resource, sys; resource.prlimit(int(sys.argv[1]), resource.RLIMIT_NOFILE, " \
             "(int(sys.argv[2]), int(sys.argv[3])))"
    subprocess.run([sys.executable, "-c", set_it, str(os.getpid()), str(lower), str(hard)], check=True, timeout=30)
    try:
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == lower
        assert _template.conditions_key("/x/python", "/x/bgtask") != key
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _template.conditions_key("/x/python", "/x/bgtask") == key


def test_a_stopped_template_costs_one_short_wait(pool: bgtask.TaskPool, spawn) -> None:
    """A stopped fork server (and its stopped spare) cannot take a request: the spawn
    gives up on it after TEMPLATE_FIRST_REPORT, starts a fresh supervisor, and the next
    spawns of this process do not ask it again for a while. Continued later, it starts
    nothing for the request it was sent."""
    from bgtask._client.spawn import TEMPLATE_FIRST_REPORT

    first = spawn(["sh", "-c", "echo hi"])
    _works(first)
    # The template is the parent of the spare that became *first*'s supervisor. (Not
    # _template_pid: its connection would use up the spare, and the one we stopped
    # could be that one, on its way out, while the template forks the next.)
    tpl = int(_read(f"/proc/{first.pid}/stat").rsplit(b")", 1)[1].split()[1])
    tokens = lambda: {int(n.split(".")[0]) for n in os.listdir(pool.path) if n[0].isdigit()}  # noqa: E731
    wait_for(lambda: len(_children(tpl) - tokens()) == 1, timeout=10)
    stopped = [tpl, *(_children(tpl) - tokens())]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        a = spawn(["sh", "-c", "echo hi"])
        took = time.monotonic() - t0
        assert TEMPLATE_FIRST_REPORT <= took < TEMPLATE_FIRST_REPORT + 5
        t0 = time.monotonic()
        b = spawn(["sh", "-c", "echo hi"])
        assert time.monotonic() - t0 < TEMPLATE_FIRST_REPORT
        for task in (a, b):
            _works(task)
            assert task.pid not in stopped
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    time.sleep(1.0)  # the spare reads the abandoned request: its report fails, it starts nothing
    assert tokens() == {t.pid for t in pool.search()}
    assert len(pool.search()) == 3


def test_the_idle_check_looks_for_one_socket_of_ours(tmp_path) -> None:
    """The spare's idle check (``_paths.has_task_of_mine``): a task socket of ours, not a
    file, a symlink or a name that is not a pid; a missing pool has none."""
    from bgtask import _paths

    assert not _paths.has_task_of_mine(str(tmp_path / "missing"))
    (tmp_path / "123.sock").write_bytes(b"")
    os.symlink("/dev/null", tmp_path / "124.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "x125.sock"))
        assert not _paths.has_task_of_mine(str(tmp_path))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "125.sock"))
        assert _paths.has_task_of_mine(str(tmp_path))


def _mergeable_mappings(pid: int) -> int:
    """Mappings of *pid* that carry ``MADV_MERGEABLE`` (``mg`` in smaps' VmFlags)."""
    flags = [line.split()[1:] for line in _read(f"/proc/{pid}/smaps").decode().splitlines()
             if line.startswith("VmFlags:")]
    return sum("mg" in f for f in flags)


def test_bgtask_ksm_offers_the_templates_memory_to_ksm_and_only_when_asked(
        pool: bgtask.TaskPool, spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BGTASK_KSM=1``: the fork server marks its memory mergeable, its supervisors
    inherit the mark, and their jobs (exec'd) do not; without it nothing is marked.
    Whether ``ksmd`` runs is the machine's choice: the mark alone costs nothing."""
    monkeypatch.setenv("BGTASK_KSM", "1")
    merged = spawn(["sleep", "60"])
    monkeypatch.delenv("BGTASK_KSM")
    plain = spawn(["sleep", "60"])  # another key (the variable is one of its parts): another template

    def parent(pid: int) -> int:
        return int(_read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[1])

    assert parent(merged.pid) != parent(plain.pid)
    assert _mergeable_mappings(parent(merged.pid)) > 5
    assert _mergeable_mappings(merged.pid) > 5
    assert _mergeable_mappings(merged.info()["child_pid"]) == 0
    assert _mergeable_mappings(parent(plain.pid)) == 0
    assert _mergeable_mappings(plain.pid) == 0
    assert _mergeable_mappings(plain.info()["child_pid"]) == 0
    assert merged.info(fresh=True)["state"] == plain.info(fresh=True)["state"] == "running"
