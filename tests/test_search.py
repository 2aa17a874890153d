"""search(): subset patterns, where=, ordering, finished tasks, undecodable meta; clean()."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import pid_alive, py, stopped

import bgtask


@pytest.fixture
def three(pool: bgtask.TaskPool) -> Iterator[tuple[bgtask.Task, bgtask.Task, bgtask.Task]]:
    """alpha and beta run; gamma has exited 0."""
    alpha = pool.spawn(["sleep", "30"], meta={"name": "alpha", "n": 1, "cfg": {"x": 1, "y": [1, 2]}})
    beta = pool.spawn(["sleep", "30"], meta={"name": "beta", "n": 2, "cfg": {"x": 2}})
    gamma = pool.spawn(["true"], meta={"name": "gamma"})
    assert gamma.wait(timeout=10) == 0
    try:
        yield alpha, beta, gamma
    finally:
        for t in (alpha, beta, gamma):
            try:
                t.delete()
            except bgtask.TaskNotFoundError:
                pass


def pids(tasks: list[bgtask.Task]) -> list[int]:
    return [t.pid for t in tasks]


def test_search_returns_every_live_task_sorted_by_pid(pool: bgtask.TaskPool, three) -> None:
    found = pool.search()
    assert pids(found) == sorted(t.pid for t in three), "finished tasks are included, sorted by pid"
    assert all(isinstance(t, bgtask.Task) and t.pool == pool for t in found)
    assert pids(bgtask.search()) == pids(found)  # the default pool is ours (BGTASK_POOL)


def test_search_results_carry_their_info(pool: bgtask.TaskPool, three) -> None:
    by_name = {t.info()["meta"]["name"]: t for t in pool.search()}
    assert set(by_name) == {"alpha", "beta", "gamma"}
    assert by_name["gamma"].info()["status"]["returncode"] == 0


def test_search_by_status(pool: bgtask.TaskPool, three) -> None:
    alpha, beta, gamma = three
    assert pids(pool.search(status={"running": True})) == sorted([alpha.pid, beta.pid])
    assert pids(pool.search(status={"running": False})) == [gamma.pid]
    assert pids(pool.search(status={"running": False, "exit_code": 0})) == [gamma.pid]
    assert pool.search(status={"running": False, "exit_code": 1}) == []


def test_search_by_meta_is_a_recursive_subset_match(pool: bgtask.TaskPool, three) -> None:
    alpha, beta, gamma = three
    assert pids(pool.search(meta={"name": "alpha"})) == [alpha.pid]
    assert pids(bgtask.search(meta={"name": "beta"})) == [beta.pid]
    assert pids(pool.search(meta={"cfg": {"x": 1}})) == [alpha.pid]  # subset of the nested dict
    assert pids(pool.search(meta={"cfg": {}})) == sorted([alpha.pid, beta.pid])
    assert pids(pool.search(meta={"cfg": {"y": [1, 2]}})) == [alpha.pid]  # lists compare with ==
    assert pool.search(meta={"cfg": {"y": [1]}}) == []
    assert pool.search(meta={"name": "alpha"}, status={"running": False}) == []
    assert pids(pool.search(meta={"name": "gamma"}, status={"running": False})) == [gamma.pid]
    assert pool.search(meta={"name": "nobody"}) == []
    assert pool.search(meta={"no-such-key": None}) == []  # a missing key does not match None
    assert pool.search(no_such_info_key=1) == []
    assert pool.search(meta={"name": {"x": 1}}) == [], "a dict pattern against a str: no match, no error"
    assert pool.search(meta="alpha") == []
    assert pids(pool.search(pid=beta.pid)) == [beta.pid]
    assert pids(pool.search(argv=["true"])) == [gamma.pid]


def test_search_with_where(pool: bgtask.TaskPool, three) -> None:
    alpha, beta, gamma = three
    assert pids(pool.search(lambda i: i["meta"]["name"].startswith("b"))) == [beta.pid]
    assert pids(pool.search(where=lambda i: i["meta"].get("n", 0) >= 1)) == sorted([alpha.pid, beta.pid])
    # An exception in where= counts as no match (gamma has no "n"), never as an error.
    assert pids(pool.search(where=lambda i: i["meta"]["n"] == 1)) == [alpha.pid]
    assert pool.search(where=lambda i: 1 / 0) == []
    # where and a pattern together
    assert pids(pool.search(lambda i: True, status={"running": True})) == sorted([alpha.pid, beta.pid])
    assert pids(bgtask.search(where=lambda i: i["pid"] == gamma.pid)) == [gamma.pid]
    with pytest.raises(TypeError):
        pool.search(where="not callable")  # type: ignore[arg-type]


def test_search_of_an_empty_pool(pool: bgtask.TaskPool) -> None:
    assert pool.search() == []
    assert pool.search(status={"running": True}) == []
    assert pool.clean() == []


def test_deleted_tasks_are_not_found(pool: bgtask.TaskPool, three) -> None:
    alpha, beta, gamma = three
    beta.delete()
    assert pids(pool.search()) == sorted([alpha.pid, gamma.pid])


# A class importable only where its module is: here, only in the spawning subprocess.
FOREIGN_MODULE = """
class Secret:
    def __init__(self, value):
        self.value = value
"""


@pytest.mark.timeout(30)
def test_undecodable_meta_becomes_a_placeholder(pool: bgtask.TaskPool, tmp_path: Path) -> None:
    (tmp_path / "bgt_foreign_mod.py").write_text(FOREIGN_MODULE)
    code = ("import bgtask, bgt_foreign_mod;"
            "t = bgtask.spawn(['sleep', '30'], meta={'name': 'foreign', 'obj': bgt_foreign_mod.Secret(42)});"
            "print(t.pid)")
    src = os.path.dirname(os.path.dirname(os.path.abspath(bgtask.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), src, os.environ.get("PYTHONPATH", "")]),
               BGTASK_POOL=str(pool.path))
    out = subprocess.run(py(code), capture_output=True, text=True, timeout=20, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    task = bgtask.Task(pid, pool)
    try:
        with pytest.raises(ImportError):
            __import__("bgt_foreign_mod")
        found = pool.search(meta={"name": "foreign"})
        assert pids(found) == [pid]
        meta = found[0].info()["meta"]
        assert meta["name"] == "foreign"
        assert isinstance(meta["obj"], bgtask.UndecodableValue)
        assert isinstance(meta["obj"].blob, bytes) and meta["obj"].error
        assert "UndecodableValue" in repr(meta["obj"])
        # the placeholder never breaks searching, matching or info()
        assert pids(pool.search(where=lambda i: i["meta"]["obj"] is not None)) == [pid]
        assert pool.search(meta={"obj": 42}) == []
        assert isinstance(task.info(fresh=True)["meta"]["obj"], bgtask.UndecodableValue)
        # ... and a process that can import the class still reads the real value.
        reader = f"import bgtask; print(bgtask.Task({pid}).info()['meta']['obj'].value)"
        out = subprocess.run(py(reader), capture_output=True, text=True, timeout=20, env=env, cwd="/")
        assert out.stdout.strip() == "42", out.stderr
        # Updating other keys keeps the undecodable blob intact for those who can read it.
        task.apply_meta(extra=1)
        out = subprocess.run(py(reader), capture_output=True, text=True, timeout=20, env=env, cwd="/")
        assert out.stdout.strip() == "42", out.stderr
    finally:
        task.delete()


def test_clean_deletes_finished_tasks_and_returns_their_pids(pool: bgtask.TaskPool) -> None:
    running = pool.spawn(["sleep", "30"])
    done = [pool.spawn(["true"]), pool.spawn(["false"]), pool.spawn(["sleep", "30"])]
    try:
        assert done[2].kill() is True
        for t in done:
            assert t.wait(timeout=10) is not None
        cleaned = pool.clean()
        assert sorted(cleaned) == sorted(t.pid for t in done)
        for t in done:
            assert not pid_alive(t.pid)
        assert pids(pool.search()) == [running.pid]
        assert pool.clean() == []
        assert running.info(fresh=True)["status"]["running"] is True
    finally:
        running.delete()


def test_a_stopped_supervisor_is_listed_as_unresponsive(pool: bgtask.TaskPool, spawn) -> None:
    """kill -STOP on a supervisor: search lists it (state "unresponsive", since when, its
    live job) within about a second instead of dropping it, and pattern/where see that."""
    frozen = spawn(["sleep", "60"], meta={"name": "frozen"})
    other = spawn(["sleep", "60"], meta={"name": "other"})
    job = frozen.info()["child_pid"]
    with stopped(frozen.pid):
        t0 = time.monotonic()
        found = pool.search()
        took = time.monotonic() - t0
        assert pids(found) == sorted([frozen.pid, other.pid])
        assert took < 4.0, f"search took {took:.1f} s"
        info = next(t for t in found if t.pid == frozen.pid).info()  # the placeholder, cached
        assert info["state"] == "unresponsive" and info["pid"] == frozen.pid
        assert info["owner"] == os.geteuid() and info["child_pid"] == job
        assert isinstance(info["since"], float) and abs(info["since"] - time.time()) < 30
        assert info["meta"] == {} and info["status"]["running"] is True
        assert pids(pool.search(state="unresponsive")) == [frozen.pid]
        assert pids(pool.search(lambda i: i["state"] != "unresponsive")) == [other.pid]
        assert pids(pool.search(meta={"name": "other"})) == [other.pid]
        assert frozen.pid not in pool.clean()  # not known to be finished: left alone
        with pytest.raises(bgtask.TaskUnresponsiveError) as exc:
            bgtask.Task(frozen.pid, pool).info()
        assert "stopped" in str(exc.value) and f"kill -CONT {frozen.pid}" in str(exc.value)
    assert frozen.info(fresh=True)["state"] == "running"  # answers again once continued
