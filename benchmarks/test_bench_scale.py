"""Issue 12, "Thousands of tasks": every bar beside its baseline, in the same run.

``BGTASK_BENCH_SCALE_N`` live ``sleep`` tasks (default 200, so the whole benchmark run
stays a few minutes; 1000 and 4000 were run by hand for BENCHMARKS.rst). Measured:

* ``python -I -S -c pass`` (the baseline of the spawn and empty-``ls`` bars);
* ``spawn()`` median with a fresh interpreter (``BGTASK_TEMPLATE=0``), and with the fork
  server (the default);
* 100 spawns from one process, beside task-spooler enqueuing 100 jobs (if ``tsp`` is
  installed), in three interleaved rounds (medians; every round kept in the JSON);
* ``search()`` at 100 and at N live tasks; ``bgtask ls`` (whole process) at N and on
  an empty pool;
* idle supervisor PSS (each task answered one call first), threads per supervisor;
* RSS 5 s after 64 MiB of output was read.

Results go to ``benchmarks/.scale-<N>.json`` and the terminal; nothing is asserted
(timings are reported, not tested). Every task is deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from _common import PY, delete_all, save_results, tsp_100

import bgtask

N = int(os.environ.get("BGTASK_BENCH_SCALE_N", "200"))
#: rounds of "100 spawns" and of task-spooler's 100 enqueues, interleaved.
SPAWN_100_ROUNDS = 3
#: the console script beside this interpreter (as a user runs it), else ``python -m``.
_SCRIPT = os.path.join(os.path.dirname(PY), "bgtask")
BGTASK_CLI = [_SCRIPT] if os.path.exists(_SCRIPT) else [PY, "-m", "bgtask"]


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _bare() -> None:
    subprocess.run([PY, "-I", "-S", "-c", "pass"], check=True)


def _spawn_median(pool: bgtask.TaskPool, rounds: int, made: list[bgtask.Task]) -> float:
    def one() -> None:
        made.append(pool.spawn(["sleep", "3600"]))
    one()  # the first may start the fork server: not what the median is about
    return _median_ms(one, rounds)


def _memory(pids: list[int]) -> dict[str, float]:
    pss, threads = [], []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            pss.append(p.memory_full_info().pss / 1e6)
            threads.append(p.num_threads())
        except psutil.Error:
            continue
    return {"pss_median_mb": statistics.median(pss), "pss_max_mb": max(pss),
            "threads_median": statistics.median(threads), "threads_max": max(threads)}


def _burst_rss(pool: bgtask.TaskPool, n: int = 3) -> list[float]:
    """RSS (MB) of supervisors 5 s after each read the 64 MiB its job wrote."""
    tasks = [pool.spawn(["head", "-c", str(64 << 20), "/dev/zero"]) for _ in range(n)]
    try:
        for t in tasks:
            out = t.stream("stdout")
            got = 0
            while got < 64 << 20:
                got += len(out.read(timeout=5))
        time.sleep(5)
        return [psutil.Process(t.pid).memory_info().rss / 1e6 for t in tasks]
    finally:
        for t in tasks:
            t.delete()


@pytest.mark.benchmark(group="scale")
def test_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = tempfile.mkdtemp(prefix="bgs", dir="/tmp")
    pool = bgtask.TaskPool(os.path.join(tmp, "p"))
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    made: list[bgtask.Task] = []
    r: dict[str, Any] = {"n": N, "load_before": os.getloadavg()}
    monkeypatch.delenv("BGTASK_TEMPLATE", raising=False)
    try:
        r["bare_ms"] = _median_ms(_bare, 15)
        # The CLI with its bytecode written (a warm-up run), as an installed package has it.
        cli_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([*BGTASK_CLI, "--pool", empty, "ls"], check=True, capture_output=True, env=cli_env)
        r["ls_empty_ms"] = _median_ms(lambda: subprocess.run([*BGTASK_CLI, "--pool", empty, "ls"], check=True,
                                                             capture_output=True, env=cli_env), 15)
        monkeypatch.setenv("BGTASK_TEMPLATE", "0")  # a fresh interpreter per supervisor...
        r["spawn_fresh_median_ms"] = _spawn_median(pool, 10, made)
        fresh = len(made)
        monkeypatch.delenv("BGTASK_TEMPLATE")  # ...then the fork server (the default) from here on
        r["spawn_median_ms"] = _spawn_median(pool, 20, made)
        # Interleaved rounds (the load of a shared VM moves from second to second):
        # 100 spawns, then task-spooler's 100, SPAWN_100_ROUNDS times; medians. The first
        # round's tasks stay (they are part of the N); later rounds' are deleted after.
        spawn_100: list[float] = []
        tsp_rounds: list[float | None] = []
        for i in range(SPAWN_100_ROUNDS):
            batch: list[bgtask.Task] = []
            t0 = time.perf_counter()
            for _ in range(100):
                batch.append(pool.spawn(["sleep", "3600"]))
            spawn_100.append((time.perf_counter() - t0) * 1000)
            tsp_rounds.append(tsp_100(os.path.join(tmp, f"ts{i}")))
            if i == 0:
                made += batch
            else:
                for t in batch:
                    t.delete()
        r["spawn_100_rounds_ms"], r["tsp_100_rounds_ms"] = spawn_100, tsp_rounds
        r["spawn_100_ms"] = statistics.median(spawn_100)
        r["tsp_100_ms"] = None if None in tsp_rounds else statistics.median(tsp_rounds)  # type: ignore[type-var]
        while len(made) < 100:
            made.append(pool.spawn(["sleep", "3600"]))
        # search() over exactly 100 tasks: a pool of its own.
        sub = bgtask.TaskPool(os.path.join(tmp, "q"))
        sub_made = [sub.spawn(["sleep", "3600"]) for _ in range(100)]
        r["search_100_ms"] = _median_ms(sub.search, 5)
        for t in sub_made:
            t.delete()
        while len(made) < N:
            made.append(pool.spawn(["sleep", "3600"]))
        time.sleep(1.0)
        r["search_n_ms"] = _median_ms(pool.search, 5)
        r["ls_n_ms"] = _median_ms(lambda: subprocess.run([*BGTASK_CLI, "--pool", str(pool.path), "ls"],
                                                         check=True, capture_output=True, env=cli_env), 5)
        for t in made:
            t.info(fresh=True)  # each answered one call...
            t.disconnect()      # ...and is idle again (a held connection keeps a thread)
        time.sleep(1.0)
        r.update(_memory([t.pid for t in made[fresh:]]))  # forked from the template
        r.update({f"fresh_{k}": v for k, v in _memory([t.pid for t in made[:fresh]]).items()})
        r["burst_rss_mb"] = _burst_rss(pool)
        r["load_after"] = os.getloadavg()
    finally:
        delete_all(made)
        shutil.rmtree(tmp, ignore_errors=True)
    save_results(f"scale-{N}", r)
