"""``BGTASK_KSM=1`` (``bgtask/_supervisor/warm.py``): idle supervisors with the kernel's
same-page merging running, beside as many without it, in the same run.

Root only, where ``/sys/kernel/mm/ksm`` exists: the benchmark turns ``ksmd`` on (and puts
its settings back as they were). ``BGTASK_BENCH_KSM_N`` tasks in each pool (default 100):
one pool spawned plainly, one with ``BGTASK_KSM=1``; each task answered one
``info(fresh=True)``. Then ``ksmd`` scans ``BGTASK_BENCH_KSM_PAGES`` pages a wake-up
(default 1000; the kernel's default is 100, every 20 ms) until three full scans are
done. Measured: PSS of both sets (median), how long the merging took and ``ksmd``'s CPU
meanwhile, then one ``info(fresh=True)`` on each task, interleaved (a merged page that is
written is copied again), the PSS after that call, and ``ksmd``'s CPU for 10 s at the
kernel's default rate. Results go to ``benchmarks/.ksm-<N>.json``; nothing is asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import psutil
import pytest
from _common import delete_all, save_results

import bgtask

KSM = "/sys/kernel/mm/ksm"
N = int(os.environ.get("BGTASK_BENCH_KSM_N", "100"))
PAGES = int(os.environ.get("BGTASK_BENCH_KSM_PAGES", "1000"))
#: give up waiting for the merge after this long (s).
MERGE_TIMEOUT = 600.0


def _get(name: str) -> int:
    with open(os.path.join(KSM, name)) as f:
        return int(f.read())


def _set(name: str, value: int) -> None:
    with open(os.path.join(KSM, name), "w") as f:
        f.write(str(value))


def _ksmd_cpu_s() -> float:
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "ksmd":
            t = p.cpu_times()
            return t.user + t.system
    return float("nan")


def _pss_median_mb(tasks: list[bgtask.Task]) -> float:
    return statistics.median(psutil.Process(t.pid).memory_full_info().pss / 1e6 for t in tasks)


def _spawn(pool: bgtask.TaskPool, ksm: bool, monkeypatch: pytest.MonkeyPatch) -> list[bgtask.Task]:
    if ksm:
        monkeypatch.setenv("BGTASK_KSM", "1")
    try:
        tasks = [pool.spawn(["sleep", "3600"]) for _ in range(N)]
    finally:
        monkeypatch.delenv("BGTASK_KSM", raising=False)
    for t in tasks:
        t.info(fresh=True)  # each answered one call...
        t.disconnect()      # ...and is idle again
    return tasks


@pytest.mark.benchmark(group="ksm")
def test_ksm(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 or not os.access(os.path.join(KSM, "run"), os.W_OK):
        pytest.skip("needs root and a kernel with KSM (/sys/kernel/mm/ksm)")
    saved = {k: _get(k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
    tmp = tempfile.mkdtemp(prefix="bgk", dir="/tmp")
    made: list[bgtask.Task] = []
    r: dict[str, Any] = {"n": N, "pages_to_scan": PAGES, "load_before": os.getloadavg()}
    monkeypatch.delenv("BGTASK_KSM", raising=False)
    try:
        _set("run", 0)
        plain = _spawn(bgtask.TaskPool(os.path.join(tmp, "plain")), False, monkeypatch)
        made += plain
        merged = _spawn(bgtask.TaskPool(os.path.join(tmp, "ksm")), True, monkeypatch)
        made += merged
        time.sleep(1.0)
        r["pss_plain_before_mb"] = _pss_median_mb(plain)
        r["pss_ksm_before_mb"] = _pss_median_mb(merged)
        _set("pages_to_scan", PAGES)
        _set("sleep_millisecs", 20)
        scans, cpu0, t0 = _get("full_scans"), _ksmd_cpu_s(), time.monotonic()
        _set("run", 1)
        while _get("full_scans") < scans + 3 and time.monotonic() - t0 < MERGE_TIMEOUT:
            time.sleep(0.5)
        r["merge_s"] = time.monotonic() - t0
        r["merge_ksmd_cpu_s"] = _ksmd_cpu_s() - cpu0
        r["pages_shared"], r["pages_sharing"] = _get("pages_shared"), _get("pages_sharing")
        r["pss_plain_mb"] = _pss_median_mb(plain)
        r["pss_ksm_mb"] = _pss_median_mb(merged)
        # One call on each, interleaved: the first after the merge copies what it writes.
        lat_plain, lat_ksm = [], []
        for a, b in zip(plain, merged, strict=True):
            for task, into in ((a, lat_plain), (b, lat_ksm)):
                t = time.perf_counter()
                task.info(fresh=True)
                into.append((time.perf_counter() - t) * 1e6)
                task.disconnect()
        r["info_plain_us"], r["info_ksm_us"] = statistics.median(lat_plain), statistics.median(lat_ksm)
        r["pss_ksm_after_call_mb"] = _pss_median_mb(merged)
        _set("pages_to_scan", 100)  # the kernel's default rate: what it costs to keep on
        cpu0, t0 = _ksmd_cpu_s(), time.monotonic()
        time.sleep(10.0)
        r["ksmd_cpu_pct_default_rate"] = (_ksmd_cpu_s() - cpu0) / (time.monotonic() - t0) * 100
        r["load_after"] = os.getloadavg()
    finally:
        delete_all(made)
        if saved["run"] == 0:
            _set("run", 2)  # unmerge what was merged meanwhile, then stop as it was
        for k in ("pages_to_scan", "sleep_millisecs", "run"):
            _set(k, saved[k])
        shutil.rmtree(tmp, ignore_errors=True)
    save_results(f"ksm-{N}", r)
