"""Row 4: ``spawn()`` until it returns with the job running, and until a first answered
call; beside a bare interpreter start and a naive detached manager server.

Every round's task is deleted (and every naive server ended) outside the timed part.
"""

from __future__ import annotations

import os
import subprocess
import time
from multiprocessing.managers import BaseManager
from typing import Any

import pytest
from _common import HERE, PY, Peers
from _peers import AUTHKEY

import bgtask

pytestmark = pytest.mark.benchmark(group="spawn: until the job runs / first answer")

ROUNDS = int(os.environ.get("BGTASK_BENCH_SPAWN_ROUNDS", "30"))


def test_spawn_python_bare(benchmark) -> None:
    """Baseline: ``python -I -S -c pass``, start to exit."""
    argv = [PY, "-I", "-S", "-c", "pass"]
    benchmark.pedantic(subprocess.run, (argv,), kwargs={"check": True}, rounds=ROUNDS, warmup_rounds=2)


def test_spawn_naive_daemon_manager_first_answer(benchmark, peers: Peers, sock_dir: str) -> None:
    """Baseline: a fresh Python that imports managers, double-forks and serves a
    BaseManager on a Unix socket; timed until a proxy call is answered."""

    class Manager(BaseManager):
        pass

    Manager.register("Blobs")
    counter = iter(range(10**6))

    def setup() -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
        return ({"address": os.path.join(sock_dir, f"d{next(counter)}")},), {}

    def start_and_call(state: dict[str, Any]) -> None:
        out = subprocess.run([PY, os.path.join(HERE, "_peers.py"), "daemon-manager", state["address"]],
                             stdout=subprocess.PIPE, check=True).stdout
        state["pid"] = int(out)
        peers.pids.append(state["pid"])
        while True:
            m = Manager(address=state["address"], authkey=AUTHKEY)
            try:
                m.connect()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.0005)
        proxy = m.Blobs()  # type: ignore[attr-defined]
        assert proxy.ping() is None

    def teardown(state: dict[str, Any]) -> None:
        from _common import kill_and_wait

        kill_and_wait(state["pid"])

    benchmark.pedantic(start_and_call, setup=setup, teardown=teardown, rounds=ROUNDS // 2, warmup_rounds=1)


def _holder() -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
    return ({},), {}


def _delete(state: dict[str, Any]) -> None:
    task: bgtask.Task = state["task"]
    task.delete()


def test_spawn_bgtask(benchmark, pool: bgtask.TaskPool) -> None:
    """bgtask: ``spawn()`` until it returns (the job is running then)."""

    def spawn(state: dict[str, Any]) -> None:
        state["task"] = pool.spawn(["sleep", "60"])

    benchmark.pedantic(spawn, setup=_holder, teardown=_delete, rounds=ROUNDS, warmup_rounds=2)


def test_spawn_bgtask_first_answer(benchmark, pool: bgtask.TaskPool) -> None:
    """bgtask: ``spawn()`` and a first answered ``info()``."""

    def spawn_and_call(state: dict[str, Any]) -> None:
        task = state["task"] = pool.spawn(["sleep", "60"])
        info = task.info()
        assert info["pid"] == task.pid and info["status"]["running"] is True

    benchmark.pedantic(spawn_and_call, setup=_holder, teardown=_delete, rounds=ROUNDS, warmup_rounds=2)
