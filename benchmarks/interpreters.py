"""Issue 12's two tightest bars under other CPython versions, by hand (not a test).

An idle supervisor forked from the fork server keeps private exactly the pages it wrote
after the fork (``BENCHMARKS.rst``, "Where the pages go"): on CPython 3.11 most of them
are reference counts of shared objects -- code objects and functions (each call), names
(each generic attribute lookup), types, and the interpreter's static objects. CPython
3.12 made the static objects and interned strings immortal (PEP 683: no reference count
writes). This runs, for each interpreter given, in interleaved rounds: 100 spawns from
one process (all running, the fork server warm), task-spooler's 100 enqueues right after
(as ``test_bench_scale.py`` does), and the median PSS of those 100 idle supervisors, each
having answered one ``info(fresh=True)``::

    python benchmarks/interpreters.py /usr/bin/python3.11 ~/.pyenv/versions/3.12.1/bin/python

Each interpreter gets a venv of its own with the project and psutil installed (kept in
``$TMPDIR/bgtask-interp-<version>``; ``--fresh`` makes them again); the interpreter
running this script is measured too. Nothing is asserted: the table goes to stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROUNDS = 3
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: run by each interpreter measured (in its venv): prints one JSON line.
PROBE = r"""
import json, os, statistics, sys, tempfile, time, shutil
import psutil, bgtask
d = tempfile.mkdtemp(prefix="bgi", dir="/tmp")
pool = bgtask.TaskPool(os.path.join(d, "p"))
made = []
try:
    made += [pool.spawn(["sleep", "3600"]) for _ in range(5)]  # the fork server is warm
    time.sleep(0.3)
    t0 = time.perf_counter()
    for _ in range(100):
        made.append(pool.spawn(["sleep", "3600"]))
    ms = (time.perf_counter() - t0) * 1000
    for t in made:
        t.info(fresh=True)
        t.disconnect()
    time.sleep(1.0)
    pss = [psutil.Process(t.pid).memory_full_info().pss / 1e6 for t in made[5:]]
finally:
    for t in made:
        try:
            t.delete()
        except bgtask.BgTaskError:
            pass
    shutil.rmtree(d, ignore_errors=True)
print(json.dumps({"python": sys.version.split()[0], "spawn_100_ms": ms,
                  "pss_median_mb": statistics.median(pss)}))
"""


def venv_python(interpreter: str, fresh: bool) -> str:
    """A venv of *interpreter* with this project and psutil: its python."""
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        return sys.executable
    version = subprocess.run([interpreter, "-c", "import sys; print(sys.version.split()[0])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    where = os.path.join(tempfile.gettempdir(), f"bgtask-interp-{version}")
    python = os.path.join(where, "bin", "python")
    if fresh or not os.path.exists(python):
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run([interpreter, "-m", "venv", where], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", PROJECT, "psutil"], check=True)
    return python


def main(argv: list[str]) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import tsp_100

    fresh = "--fresh" in argv
    pythons = [venv_python(p, fresh) for p in [sys.executable, *(a for a in argv if a != "--fresh")]]
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bgtsp", dir="/tmp") as tmp:
        for r in range(ROUNDS):
            for i, python in enumerate(pythons):
                out = subprocess.run([python, "-I", "-c", PROBE], check=True, capture_output=True,
                                     text=True, cwd="/").stdout
                got = json.loads(out.strip().splitlines()[-1])
                got["tsp_100_ms"] = tsp_100(os.path.join(tmp, f"ts{r}-{i}")) or float("nan")
                rows.setdefault(got.pop("python"), []).append(got)
    print(f"{'python':>8} {'PSS MB':>7} {'100 spawns ms':>14} {'tsp ms':>7} {'ratio':>6}   (medians of {ROUNDS})")
    for version, runs in rows.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        ratios = statistics.median(run["spawn_100_ms"] / run["tsp_100_ms"] for run in runs)
        print(f"{version:>8} {med['pss_median_mb']:7.2f} {med['spawn_100_ms']:14.0f} "
              f"{med['tsp_100_ms']:7.0f} {ratios:6.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
