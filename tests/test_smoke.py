from __future__ import annotations

import subprocess
import sys

from helpers import py

import bgtask


def test_spawn_and_read_back_from_another_process(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("print('hello'); import sys; print('oops', file=sys.stderr)"),
                      meta={"name": "smoke"})
    code = f"""
import bgtask
t = bgtask.Task({task.pid}, bgtask.TaskPool({str(pool.path)!r}))
assert t.wait(timeout=10) == 0
assert t.info(fresh=True)['meta']['name'] == 'smoke'
print(t.stream('stdout').read().decode(), end='')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n"
    assert task.stream("stderr").read() == b"oops\n"
    task.delete()
    assert pool.search() == []


def test_the_session_backstop_finds_a_supervisor_of_any_pool(pool: bgtask.TaskPool) -> None:
    """conftest's session-wide leak check sees a live supervisor with its pool."""
    import time

    from helpers import supervisor_pools

    since = time.time() - 1
    task = pool.spawn(["sleep", "30"])
    try:
        assert supervisor_pools(since).get(task.pid) == str(pool.path)
    finally:
        task.delete()
    assert task.pid not in supervisor_pools(since)
