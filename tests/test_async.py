"""What only the asyncio API has: many follows in one loop without threads, cancellation
at each await, and a supervisor that dies or stops while awaited. (The contract's
semantics over both APIs are in ``test_contract_both.py``.)"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import threading
from typing import Any

import pytest
from helpers import py

import bgtask


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_300_follows_in_one_loop(pool: bgtask.TaskPool) -> None:
    job = "echo start $$; sleep 0.5; i=0; while [ $i -lt 50 ]; do echo line $i of $$; i=$((i+1)); done"
    tasks = [pool.spawn(job, shell=True) for _ in range(300)]
    apool = bgtask.AsyncTaskPool(pool)
    most = [0]

    async def watch() -> None:
        while True:
            most[0] = max(most[0], _threads())
            await asyncio.sleep(0.01)

    async def follow(t: bgtask.Task) -> bytes:
        return b"".join([c async for c in bgtask.AsyncTask(t.pid, apool).stream("stdout").follow()])

    async def main() -> list[bytes]:
        watcher = asyncio.ensure_future(watch())
        try:
            return list(await asyncio.gather(*(follow(t) for t in tasks)))
        finally:
            watcher.cancel()
            await asyncio.gather(*(bgtask.AsyncTask(t.pid, apool).delete(timeout=1) for t in tasks))

    outs = run(main())
    for t, out in zip(tasks, outs, strict=True):
        lines = out.decode().splitlines()
        assert lines[0].startswith("start ") and len(lines) == 51, (t.pid, out[-200:])
        job_pid = lines[0].split()[1]
        assert lines[1:] == [f"line {i} of {job_pid}" for i in range(50)]
    assert most[0] <= 16, most[0]


def test_cancelled_waiting_read_consumes_nothing(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(py("import time; time.sleep(0.4); print('x' * 10)"))
        out = task.stream("stdout")
        reader = asyncio.ensure_future(out.read(timeout=30))
        await asyncio.sleep(0.1)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert await task.wait(10) == 0
        assert await out.read() == b"x" * 10 + b"\n"
        await task.delete()

    run(main())


@pytest.mark.parametrize("stream", ["stdout", "data"])
def test_reads_cancelled_at_random_lose_and_repeat_nothing(pool: bgtask.TaskPool, stream: str) -> None:
    n = 300
    if stream == "stdout":
        code = f"import time\nfor i in range({n}): print(i, flush=True); time.sleep(0.002)"
    else:
        code = (f"import bgtask, time\nd = bgtask.current().stream('data')\n"
                f"for i in range({n}): d.write(i); time.sleep(0.002)")

    async def main() -> Any:
        task = await bgtask.AsyncTaskPool(pool).spawn(py(code))
        s = task.stream(stream)
        got: list[Any] = []
        cancelled = 0
        while True:
            try:
                got.append(await asyncio.wait_for(s.read(timeout=1), random.uniform(0, 0.004)))
            except asyncio.TimeoutError:
                cancelled += 1
            if await task.wait(0) is not None:
                rest = await s.read()
                got.append(rest)
                if not rest and await s.eof():
                    break
        await task.delete()
        return got, cancelled

    got, cancelled = run(main())
    assert cancelled > 0
    if stream == "stdout":
        assert b"".join(got).split() == [b"%d" % i for i in range(n)]
    else:
        assert [m for part in got for m in part] == list(range(n))


def test_cancelled_stdin_write_leaves_limit_exact(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(["sleep", "30"])
        stdin = task.stream("stdin")
        writer = asyncio.ensure_future(stdin.write(b"y" * (8 << 20)))
        await asyncio.sleep(0.5)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        _start, limit = await stdin.bounds()
        assert 0 < limit < 8 << 20
        await asyncio.sleep(0.6)
        assert (await stdin.bounds())[1] == limit  # nothing accepted behind our back
        await task.delete(timeout=1)

    run(main())


def test_cancelled_wait_and_follow_leave_the_job_alone(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(
            py("import time\nfor i in range(3): print(i, flush=True); time.sleep(0.3)"))
        waiter = asyncio.ensure_future(task.wait())
        await asyncio.sleep(0.1)
        waiter.cancel()
        got: list[bytes] = []

        async def follow() -> None:
            async for chunk in task.stream("stdout").follow():
                got.append(chunk)

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.2)
        follower.cancel()
        await asyncio.gather(waiter, follower, return_exceptions=True)
        assert await task.state() == "running"
        assert await task.wait(10) == 0
        assert b"".join(got) + await task.stream("stdout").read() == b"0\n1\n2\n"
        # The connections the cancellations left mid-call were closed, not kept.
        assert all(not c.closed for conns in task._conns._idle.values() for c in conns)
        await task.delete()

    run(main())


def test_supervisor_killed_mid_await(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(["sleep", "30"])
        child = (await task.info())["child_pid"]
        waiter = asyncio.ensure_future(task.wait())
        reader = asyncio.ensure_future(task.stream("stdout").read(timeout=None))
        await asyncio.sleep(0.2)
        os.kill(task.pid, signal.SIGKILL)
        for fut in (waiter, reader):
            with pytest.raises(bgtask.TaskNotFoundError):
                await asyncio.wait_for(fut, 5)
        with pytest.raises(bgtask.TaskNotFoundError):
            await task.info(fresh=True)  # sweeps the dead supervisor (stops its job)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    run(main())


def test_supervisor_stopped_mid_await(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(["sleep", "30"])
        await task.info()
        waiter = asyncio.ensure_future(task.wait())
        await asyncio.sleep(0.1)
        os.kill(task.pid, signal.SIGSTOP)
        try:
            with pytest.raises(bgtask.TaskUnresponsiveError):
                await asyncio.wait_for(waiter, 5)
            with pytest.raises(bgtask.TaskUnresponsiveError):
                await asyncio.wait_for(task.info(fresh=True), 5)
        finally:
            os.kill(task.pid, signal.SIGCONT)
        await task.delete(timeout=1)

    run(main())


def test_search_is_concurrent_in_the_loop(pool: bgtask.TaskPool) -> None:
    tasks = [pool.spawn(["sleep", "30"], meta={"i": i}) for i in range(20)]
    before = threading.active_count()

    async def main() -> list[int]:
        found = await bgtask.AsyncTaskPool(pool).search(meta={"i": 3})
        return [t.pid for t in found]

    assert run(main()) == [tasks[3].pid]
    assert threading.active_count() <= before + 1
    for t in tasks:
        t.delete(timeout=1)


def test_sync_twins(pool: bgtask.TaskPool) -> None:
    async def main() -> None:
        task = await bgtask.AsyncTaskPool(pool).spawn(["sleep", "30"])
        assert isinstance(task.sync, bgtask.Task) and task.sync.pid == task.pid
        assert isinstance(task.stream(1).sync, bgtask.Stream)
        assert isinstance(task.pool.sync, bgtask.TaskPool)
        assert bgtask.current_async() is None
        await task.delete(timeout=1)

    run(main())


def test_current_async_inside_a_job(pool: bgtask.TaskPool) -> None:
    code = ("import asyncio, bgtask\nasync def main():\n    me = bgtask.current_async()\n"
            "    await me.stream('data').write((await me.info())['pid'])\nasyncio.run(main())")
    task = pool.spawn(py(code))
    assert task.wait(10) == 0
    assert task.stream("data").read() == [task.pid]
    task.delete()


def test_clean_deletes_concurrently_and_bounded(pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch) -> None:
    from bgtask._client import aiopool

    monkeypatch.setattr(aiopool, "CLEAN_CONCURRENCY", 8)
    tasks = [pool.spawn(py("pass")) for _ in range(40)]
    for t in tasks:
        assert t.wait(10) == 0
    running = [0, 0]
    real = bgtask.AsyncTask.delete

    async def counted(self: bgtask.AsyncTask, timeout: float | None = None) -> None:
        running[0] += 1
        running[1] = max(running)
        try:
            await real(self, timeout)
        finally:
            running[0] -= 1

    monkeypatch.setattr(bgtask.AsyncTask, "delete", counted)
    cleaned = run(bgtask.AsyncTaskPool(pool).clean())
    assert sorted(cleaned) == sorted(t.pid for t in tasks)
    assert running[1] == 8  # concurrent, and never more than the bound
    assert pool.search() == []


def _sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass  # the listing's own fd
    return n


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connections_closed_at_once_not_by_the_gc(pool: bgtask.TaskPool, loop: str) -> None:
    # filterwarnings=error: a socket left to the garbage collector would fail this test.
    runner = pytest.importorskip("uvloop").run if loop == "uvloop" else run
    task = pool.spawn(py("import time; time.sleep(30)"))

    async def main() -> bgtask.AsyncTask:
        atask = bgtask.AsyncTask(task.pid, pool)
        base = _sockets()
        # A follow() cancelled mid-call: its connection is closed in the cancellation path.
        first = asyncio.ensure_future(atask.stream("stdout").follow().__anext__())
        await asyncio.sleep(0.3)
        assert _sockets() == base + 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert _sockets() == base
        # disconnect() closes the busy connections of this loop too, and the idle ones.
        waiting = asyncio.ensure_future(atask.wait(5))
        await asyncio.sleep(0.3)
        await atask.info(fresh=True)
        assert _sockets() == base + 2
        atask.disconnect()
        assert _sockets() == base
        with pytest.raises(ConnectionAbortedError):
            await waiting
        assert (await atask.info(fresh=True))["pid"] == task.pid  # usable after it
        return atask  # with one idle connection, out of its loop

    atask = runner(main())  # the loop is closed now
    before = _sockets()
    del atask  # dropped: its connection is closed quietly (a socket the gc closes warns)
    gc.collect()  # (the cancelled calls' tracebacks hold main's frame, and atask with it)
    assert _sockets() == before - 1
    task.delete()


def test_works_under_uvloop(pool: bgtask.TaskPool) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> bytes:
        task = await bgtask.AsyncTaskPool(pool).spawn(py("print('uv')"))
        out = b"".join([c async for c in task.stream(1).follow()])
        await task.delete()
        return out

    assert uvloop.run(main()) == b"uv\n"


def test_spawn_with_more_than_1023_fds_open(pool: bgtask.TaskPool) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the hard fd limit is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fds: list[int] = []
    try:
        while len(fds) < 1100:
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        assert max(fds) > 1023
        task = pool.spawn(py("print('ok')"))  # select() raised ValueError here
        assert task.wait(10) == 0
        atask = run(bgtask.AsyncTaskPool(pool).spawn(py("print('ok')")))
        assert atask.sync.wait(10) == 0
        task.delete()
        atask.sync.delete()
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
