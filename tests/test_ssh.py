"""Remote pools over OpenSSH, against a real sshd on 127.0.0.1 (``tests/sshd.py``) and a
remote user ``bgtremote`` with its own interpreter and bgtask."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import sshd
from helpers import end_pool

import bgtask
from bgtask._client import sshmux

pytestmark = [pytest.mark.timeout(60)]

_why = sshd.available()
if _why:
    pytest.skip(f"ssh tests: {_why}", allow_module_level=True)


def _tcp_listeners() -> set[str]:
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":  # LISTEN
                    out.add(parts[1])
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[sshd.Server]:
    before = _tcp_listeners()
    srv = sshd.start()
    try:
        yield srv
        # No listener but the sshd appeared: ssh forwards are Unix sockets in 0700.
        new = _tcp_listeners() - before
        assert all(addr.endswith(f":{srv.port:04X}") for addr in new), new
    finally:
        srv.stop()


@pytest.fixture
def remote(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[bgtask.TaskPool]:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    path = f"/tmp/bgtr{uuid.uuid4().hex[:8]}"
    pool = bgtask.TaskPool(f"{server.url}{path}?python={server.python}")
    try:
        yield pool
    finally:
        try:
            for task in pool.search():
                task.delete()
        except bgtask.BgTaskError:
            pass
        pool.backend.close()  # type: ignore[attr-defined]
        leftovers = end_pool(path)
        assert not leftovers, leftovers


def test_url_parsing_and_identity(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = bgtask.TaskPool("ssh://alice@example.invalid:2222/srv/pool?python=/opt/py")
    assert str(pool) == "ssh://alice@example.invalid:2222/srv/pool?python=/opt/py"
    assert pool.path == pool.path.__class__("/srv/pool")
    assert pickle.loads(pickle.dumps(pool)) == pool
    assert bgtask.TaskPool("ssh://h/p", remote_python="python3") == bgtask.TaskPool("ssh://h/p")
    for bad in ("ssh://", "ssh://h:99999/p", "ssh://h/p?bogus=1"):
        with pytest.raises(ValueError):
            bgtask.TaskPool(bad)
    with pytest.raises(ValueError):
        bgtask.TaskPool("/tmp/x", remote_python="python3")
    monkeypatch.setenv("BGTASK_POOL", "ssh://bob@h2/q")
    assert str(bgtask.TaskPool()) == "ssh://bob@h2/q"


def test_every_verb(remote: bgtask.TaskPool) -> None:
    task = remote.spawn(["sh", "-c", 'echo out; echo err >&2; pwd; echo "$BGTASK_POOL $FOO ${HOME:+home}"; '
                         "read x; echo got $x"], env={"FOO": "bar", "HOME": None}, meta={"name": "v"})
    assert task.pool == remote and task.info()["meta"] == {"name": "v"}
    assert task.stream("stdin").write(b"abc\n") == 4
    assert task.wait(10) == 0
    out = task.stream("stdout").read()
    assert out == f"out\n{sshd.pwd.getpwnam(sshd.USER).pw_dir}\n{remote.path} bar \ngot abc\n".encode()
    assert task.stream("stderr").read() == b"err\n"
    assert task.apply_meta(k=1) == {"name": "v", "k": 1} and task.meta["k"] == 1
    assert [t.pid for t in remote.search(meta={"name": "v"})] == [task.pid]
    assert task.restart() is True
    assert task.wait(10) is not None or True
    sleeper = remote.spawn(["sleep", "30"], cwd="/tmp")
    assert sleeper.info()["cwd"] == "/tmp"
    assert sleeper.pause() and sleeper.state == "paused"
    assert sleeper.resume() and sleeper.state == "running"
    assert sleeper.kill("TERM") and sleeper.wait(10) == -signal.SIGTERM
    task.stream("stdin").close()
    task.wait(10)
    assert sorted(remote.clean()) == sorted([task.pid, sleeper.pid])
    assert remote.search() == []
    with pytest.raises(bgtask.TaskNotFoundError):
        bgtask.Task(task.pid, remote).info()


def test_messages_with_current_there(remote: bgtask.TaskPool, server: sshd.Server) -> None:
    code = ("import bgtask\nt = bgtask.current()\n"
            "for m in t.stream('control'):\n    t.stream('data').write({'echo': m}); break\n")
    task = remote.spawn([server.python, "-c", code])
    task.stream("control").write([1, "two"])
    assert next(iter(task.stream("data"))) == {"echo": [1, "two"]}
    assert task.wait(10) == 0
    task.delete()


def test_follow_survives_a_killed_master(remote: bgtask.TaskPool, server: sshd.Server) -> None:
    task = remote.spawn(["sh", "-c", "i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"])
    got = b""
    killed = False
    for chunk in task.stream("stdout").follow():
        got += chunk
        if not killed and got.count(b"\n") >= 5:
            for pid in server.master_pids():
                os.kill(pid, signal.SIGKILL)
            killed = True
    assert killed
    assert got == b"".join(b"line%d\n" % i for i in range(40))
    task.delete()


def test_unreachable_host(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    port = sshd._free_port()
    pool = bgtask.TaskPool(f"ssh://{sshd.USER}@127.0.0.1:{port}/tmp/x")  # does not connect
    t0 = time.monotonic()
    for call in (pool.search, lambda: pool.spawn(["true"]), lambda: bgtask.Task(1, pool).info()):
        with pytest.raises(bgtask.HostUnreachableError) as exc:
            call()
        assert exc.value.host == "127.0.0.1" and "refused" in str(exc.value)
    assert time.monotonic() - t0 < 10


def test_unknown_host_key_fails_without_prompt(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    config = os.path.join(server.tmp, "ssh_config_nokh")
    with open(server.config) as f, open(config, "w") as g:
        g.write(f.read().replace(os.path.join(server.tmp, "known_hosts"), "/dev/null"))
    monkeypatch.setenv("BGTASK_SSH_CONFIG", config)
    monkeypatch.setenv("BGTASK_SSH_DIR", os.path.join(server.tmp, "run"))
    with pytest.raises(bgtask.HostUnreachableError, match="Host key verification failed"):
        bgtask.TaskPool(server.url + "/tmp/x").search()


def test_remote_without_bgtask(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    pool = bgtask.TaskPool(server.url + "/tmp/x", remote_python="/usr/bin/python3")
    with pytest.raises(bgtask.HostUnreachableError, match="not installed.*remote_python"):
        pool.search()


def test_cli_remote_and_merged_ls(remote: bgtask.TaskPool, server: sshd.Server, pool_dir: str) -> None:
    r = remote.spawn(["sleep", "30"], meta={"name": "far"})
    local = bgtask.TaskPool(pool_dir).spawn(["sleep", "30"], meta={"name": "near"})
    try:
        env = dict(os.environ, BGTASK_POOL=str(remote))
        run = [sys.executable, "-m", "bgtask"]
        out = subprocess.run([*run, "ls"], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert str(r.pid) in out.stdout
        out = subprocess.run([*run, "ls", "--pool", str(remote), "--pool", pool_dir], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "HOST" in lines[0]
        far = next(ln for ln in lines if str(r.pid) in ln)
        near = next(ln for ln in lines if str(local.pid) in ln)
        assert far.split()[0] == "127.0.0.1" and not near.startswith("127.0.0.1")
        out = subprocess.run([*run, "kill", "--pool", str(remote), str(r.pid)], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert r.wait(10) == -signal.SIGTERM
    finally:
        local.delete()
        r.delete()


def test_master_shared_and_no_fallback(remote: bgtask.TaskPool, server: sshd.Server) -> None:
    remote.search()
    masters = server.master_pids()
    assert len(masters) == 1
    # a second process shares it (no second login)
    code = (f"import bgtask;p=bgtask.TaskPool({str(remote)!r});p.search();"
            "p.backend.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert server.master_pids() == masters
    ctl = sshmux.control_path(remote.backend.target)  # type: ignore[attr-defined]
    assert oct(os.stat(os.path.dirname(ctl)).st_mode & 0o777) == "0o700"


def test_async_every_verb(remote: bgtask.TaskPool) -> None:
    import asyncio

    apool = bgtask.AsyncTaskPool(str(remote))
    assert str(apool) == str(remote)

    async def main() -> None:
        task = await apool.spawn(["sh", "-c", "echo out; read x; echo got $x; echo err >&2"],
                                 env={"FOO": "bar"}, meta={"name": "a"})
        assert str(task.pool) == str(remote)
        assert (await task.info())["meta"] == {"name": "a"}
        assert await task.stream("stdin").write(b"abc\n") == 4
        await task.stream("stdin").close()
        got = b"".join([c async for c in task.stream("stdout").follow()])
        assert got == b"out\ngot abc\n"
        assert await task.wait(10) == 0
        assert await task.stream("stderr").read(0) == b"err\n"
        assert await task.apply_meta(k=1) == {"name": "a", "k": 1}
        assert [t.pid for t in await apool.search(meta={"name": "a"})] == [task.pid]
        code = ("import bgtask\nt = bgtask.current()\n"
                "for m in t.stream('control'):\n    t.stream('data').write({'echo': m}); break\n")
        talker = await apool.spawn([remote.backend.python, "-c", code])  # type: ignore[attr-defined]
        await talker.stream("control").write([1, "two"])
        assert [m async for m in talker.stream("data").follow()] == [{"echo": [1, "two"]}]
        sleeper = await apool.spawn(["sleep", "30"])
        assert await sleeper.pause() and await sleeper.state() == "paused"
        assert await sleeper.resume() and await sleeper.state() == "running"
        assert await sleeper.kill("TERM") and await sleeper.wait(10) == -signal.SIGTERM
        # a follow cancelled mid-call over the forward: closed at once, the task goes on
        waiter = asyncio.ensure_future(task.stream("stdout").follow(0).__anext__())
        assert await waiter == b"out\ngot abc\n"
        await talker.wait(10)
        assert sorted(await apool.clean()) == sorted([task.pid, talker.pid, sleeper.pid])
        assert await apool.search() == []
        with pytest.raises(bgtask.TaskNotFoundError):
            await bgtask.AsyncTask(task.pid, apool).info(fresh=True)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        apool.sync.backend.close()  # type: ignore[attr-defined]


def test_async_follow_survives_a_killed_master_and_cancels_cleanly(remote: bgtask.TaskPool,
                                                                    server: sshd.Server) -> None:
    import asyncio

    apool = bgtask.AsyncTaskPool(remote)

    async def main() -> None:
        task = await apool.spawn(["sh", "-c", "i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); "
                                  "sleep 0.05; done"])
        got = b""
        killed = False
        async for chunk in task.stream("stdout").follow():
            got += chunk
            if not killed and got.count(b"\n") >= 5:
                for pid in server.master_pids():
                    os.kill(pid, signal.SIGKILL)
                killed = True
        assert killed
        assert got == b"".join(b"line%d\n" % i for i in range(40))
        # A follow cancelled mid-call through the forward: its socket closed at once.
        sleeper = await apool.spawn(["sleep", "30"])
        fds = len(os.listdir("/proc/self/fd"))
        pending = asyncio.ensure_future(sleeper.stream("stdout").follow().__anext__())
        await asyncio.sleep(0.5)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert len(os.listdir("/proc/self/fd")) <= fds
        assert await sleeper.state() == "running"
        sleeper.disconnect()
        await sleeper.delete()
        await task.delete()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_unreachable_host(server: sshd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    apool = bgtask.AsyncTaskPool(f"ssh://{sshd.USER}@127.0.0.1:{sshd._free_port()}/tmp/x")

    async def main() -> None:
        for call in (apool.search, lambda: apool.spawn(["true"]),
                     lambda: bgtask.AsyncTask(1, apool).info()):
            with pytest.raises(bgtask.HostUnreachableError, match="refused"):
                await call()

    asyncio.run(asyncio.wait_for(main(), 30))
