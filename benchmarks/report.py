"""Run the benchmarks and print the table of issue 5: bgtask beside its baselines.

    python benchmarks/report.py                 # runs pytest-benchmark, prints the table
    python benchmarks/report.py --rst           # the same table as reStructuredText
    python benchmarks/report.py --json FILE     # the table of an earlier run's JSON
    python benchmarks/report.py -- -k read      # extra pytest arguments after "--"

Every ratio compares numbers of the same run. Where a row has an ``interleaved``
benchmark (baseline and bgtask taking turns), its ratio is the verdict: on a shared
machine the load changes between two benchmarks run one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20


def run_benchmarks(json_path: str, extra: list[str]) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    before = os.getloadavg()
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE), "--benchmark-only", "-q",
           "-p", "no:cacheprovider", f"--benchmark-json={json_path}", *extra]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, stdout=sys.stderr)
    return before, os.getloadavg(), rc


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.by_name = {b["name"]: b for b in data["benchmarks"]}
        self.machine = data.get("machine_info", {})
        self.when = data.get("datetime", "")

    def get(self, name: str) -> dict[str, Any] | None:
        return self.by_name.get(name)

    def median(self, name: str) -> float | None:
        b = self.get(name)
        return None if b is None else float(b["stats"]["median"])

    def extra(self, name: str, key: str) -> Any:
        b = self.get(name)
        return None if b is None else b["extra_info"].get(key)

    def gbps(self, name: str) -> float | None:
        b = self.get(name)
        if b is None:
            return None
        return b["extra_info"]["bytes_per_round"] / b["stats"]["median"] / 1e9


def _f(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def rows(r: Results) -> list[list[str]]:
    out = []

    # 1. read
    raw = r.gbps("test_read_raw_connection[raw-conn]")
    raw4 = r.gbps("test_read_raw_connection[raw-conn-4m]")
    naive = r.gbps("test_read_naive_manager")
    stock = r.gbps("test_read_stock_proxy_on_supervisor")
    ours = r.gbps("test_read_bgtask")
    ir = r.extra("test_read_interleaved", "raw_connection_median_s")
    io = r.extra("test_read_interleaved", "bgtask_median_s")
    ratio = _ratio(ir, io) if ir and io else _ratio(ours, raw)
    out.append([
        "reading a job's output, 1 MiB reads",
        f"raw mp.connection {_f(raw, '.2f', ' GB/s')} (4 MiB SO_SNDBUF: {_f(raw4, '.2f', ' GB/s')}); "
        f"naive BaseManager proxy {_f(naive, '.2f', ' GB/s')}; stock proxy on a supervisor "
        f"{_f(stock, '.2f', ' GB/s')}",
        f"{_f(ours, '.2f', ' GB/s')}",
        f"{_f(ratio, '.0%')} of raw" + (f" (interleaved: raw {MiB / ir / 1e9:.2f}, bgtask "
                                         f"{MiB / io / 1e9:.2f} GB/s)" if ir and io else ""),
        ">= 50% of raw", _verdict(None if ratio is None else ratio >= 0.5),
    ])

    # 2. end to end
    pipe = r.gbps("test_e2e_raw_pipe[1MiB-pipe]")
    pipe64 = r.gbps("test_e2e_raw_pipe[default-pipe]")
    ours = r.gbps("test_e2e_bgtask[max_buffer=64MiB]")
    ours4 = r.gbps("test_e2e_bgtask[max_buffer=4MiB]")
    size = r.extra("test_e2e_interleaved", "bytes_per_round")
    ip = r.extra("test_e2e_interleaved", "raw_pipe_1MiB_median_s")
    io = r.extra("test_e2e_interleaved", "bgtask_median_s")
    ratio = _ratio(ip, io) if ip and io else _ratio(ours, pipe)
    peak = r.extra("test_e2e_bgtask[max_buffer=64MiB]", "supervisor_peak_growth_kib")
    peak4 = r.extra("test_e2e_bgtask[max_buffer=4MiB]", "supervisor_peak_growth_kib")
    nbytes = r.extra("test_e2e_bgtask[max_buffer=64MiB]", "bytes_per_round")
    out.append([
        f"job -> supervisor -> reader, end to end, {_f(nbytes and nbytes / MiB, '.0f', ' MiB')}",
        f"raw pipe, 1 MiB buffer {_f(pipe, '.2f', ' GB/s')}; 64 KiB default {_f(pipe64, '.2f', ' GB/s')}",
        f"{_f(ours, '.2f', ' GB/s')} (max_buffer 4 MiB: {_f(ours4, '.2f', ' GB/s')}); supervisor "
        f"peak growth {_f(peak and peak / 1024, '.0f', ' MiB')} with max_buffer 64 MiB, "
        f"{_f(peak4 and peak4 / 1024, '.0f', ' MiB')} with 4 MiB",
        f"{_f(ratio, '.0%')} of the 1 MiB pipe" + (
            f" (interleaved: pipe {size / ip / 1e9:.2f}, bgtask {size / io / 1e9:.2f} GB/s)"
            if ip and io and size else ""),
        ">= 40% of the 1 MiB pipe; memory bounded by max_buffer",
        _verdict(None if ratio is None or peak is None else ratio >= 0.4 and peak <= 64 * 1024 + 8 * 1024),
    ])

    # 3. calls
    bare = r.median("test_call_bare_proxy")
    ours = r.median("test_call_bgtask_info")
    stock = r.median("test_call_stock_proxy_info_on_supervisor")
    regimes = {}
    for placement in ("two-cpus", "same-cpu"):
        name = f"test_call_interleaved[{placement}]"
        ib = r.extra(name, "bare_proxy_median_s")
        idict = r.extra(name, "bare_proxy_info_dict_median_s")
        io = r.extra(name, "bgtask_info_median_s")
        if ib and io:
            regimes[placement] = (ib, idict, io)
    parts = []
    for placement, (ib, idict, io) in regimes.items():
        parts.append(f"{placement}: bare {ib * 1e6:.0f} us, bare returning an info-sized dict "
                     f"{_f(idict and idict * 1e6, '.0f', ' us')}, info() {io * 1e6:.0f} us = "
                     f"{io / ib:.2f}x the bare call, {_f(_ratio(io, idict), '.2f')}x the dict call")
    verdicts = {p: v[2] / v[0] <= 1.5 for p, v in regimes.items()}
    if verdicts and len(set(verdicts.values())) == 1:
        verdict = _verdict(next(iter(verdicts.values())))
    elif verdicts:
        verdict = "; ".join(f"{_verdict(ok)} ({p})" for p, ok in verdicts.items())
    else:
        verdict = _verdict(None if ours is None or bare is None else ours / bare <= 1.5)
    out.append([
        "one info() call on a connected task",
        f"bare BaseManager proxy call {_f(bare and bare * 1e6, '.0f', ' us')}; stock proxy info() on a "
        f"supervisor {_f(stock and stock * 1e6, '.0f', ' us')} (unpinned, one after the other)",
        f"{_f(ours and ours * 1e6, '.0f', ' us')} (unpinned)",
        "interleaved, pinned -- " + ("; ".join(parts) if parts else "n/a"),
        "<= 1.5x the bare proxy call", verdict,
    ])

    # 4. spawn
    bare = r.median("test_spawn_python_bare")
    naive = r.median("test_spawn_naive_daemon_manager_first_answer")
    ours = r.median("test_spawn_bgtask")
    first = r.median("test_spawn_bgtask_first_answer")
    out.append([
        "spawn() until it returns with the job running",
        f"python -I -S -c pass {_f(bare and bare * 1e3, '.1f', ' ms')}; naive double-fork + fresh "
        f"Python + managers, to a first answer {_f(naive and naive * 1e3, '.1f', ' ms')}",
        f"spawn() {_f(ours and ours * 1e3, '.1f', ' ms')} median; first answered call "
        f"{_f(first and first * 1e3, '.1f', ' ms')} median",
        f"{_f(_ratio(ours, bare), '.1f')}x a bare interpreter start",
        "spawn() <= 35 ms median; first answer <= 90 ms",
        _verdict(None if ours is None or first is None else ours <= 0.035 and first <= 0.090),
    ])

    # 5. memory
    naive = r.extra("test_memory_idle_naive_managers", "pss_kib_median")
    ours = r.extra("test_memory_idle_supervisors", "pss_kib_median")
    count = r.extra("test_memory_idle_supervisors", "count")
    at100 = r.extra("test_search_bgtask", "pss_kib_median")
    n100 = r.extra("test_search_bgtask", "supervisors")
    unneeded = r.extra("test_supervisor_imports_nothing_it_does_not_need", "supervisor_modules_not_needed")
    mb = 1024 / 1e6
    out.append([
        f"idle supervisor memory (PSS, {count or '?'} running)",
        f"fresh python + managers {_f(naive and naive * mb, '.1f', ' MB')} each",
        f"{_f(ours and ours * mb, '.1f', ' MB')} each ({_f(at100 and at100 * mb, '.1f', ' MB')} with "
        f"{n100 or '?'} running); modules it does not need: {unneeded if unneeded is not None else 'n/a'}",
        f"{_f(_ratio(ours, naive), '.0%')} of a naive server",
        "<= 10 MB each with >= 15 running; no dill etc.",
        _verdict(None if ours is None or count is None
                 else ours * mb <= 10 and count >= 15 and unneeded == []),
    ])

    # 6. search
    serial = r.median("test_search_naive_serial_stock_proxies")
    four = r.median("test_search_one_connection_4_threads")
    ours = r.median("test_search_bgtask")
    out.append([
        "search(status=...) over 100 live tasks",
        f"naive serial connect + proxy + info {_f(serial and serial * 1e3, '.0f', ' ms')}; one connection "
        f"per supervisor, 4 threads {_f(four and four * 1e3, '.0f', ' ms')}",
        f"{_f(ours and ours * 1e3, '.0f', ' ms')}",
        f"{_f(_ratio(ours, serial), '.0%')} of naive serial",
        "<= 100 ms", _verdict(None if ours is None else ours <= 0.100),
    ])
    return out


def web_rows(r: Results) -> list[list[str]]:
    """The web view in headless chromium (benchmarks/test_bench_web.py, issue 15)."""
    out = []
    lat = "test_web_line_latency"

    def ms(name: str, key: str) -> str:
        return _f(r.extra(name, key), ".1f", " ms")

    p95 = r.extra(lat, "browser_p95_ms")
    follow95, sse95 = r.extra(lat, "follow_p95_ms"), r.extra(lat, "sse_p95_ms")
    res = "test_web_resume_after_drop"
    lost, repeated = r.extra(res, "bytes_lost"), r.extra(res, "bytes_repeated")
    resumed = None if lost is None or repeated is None else lost == 0 and repeated == 0
    caught = r.extra(res, "caught_up_s")

    def over(base: float | None) -> float | None:
        return None if p95 is None or base is None else p95 - base

    out.append([
        f"web view: line latency (a line every {_f(r.extra(lat, 'period_ms'), '.0f', ' ms')}, "
        f"{r.extra(lat, 'lines') or '?'} lines)",
        f"bgtask follow() in another process p50 {ms(lat, 'follow_p50_ms')}, p95 {ms(lat, 'follow_p95_ms')}; "
        f"SSE client without a browser (httpx) p50 {ms(lat, 'sse_p50_ms')}, p95 {ms(lat, 'sse_p95_ms')}",
        f"in chromium's DOM p50 {ms(lat, 'browser_p50_ms')}, p95 {ms(lat, 'browser_p95_ms')}, "
        f"max {ms(lat, 'browser_max_ms')}; after a dropped connection: {_f(lost, 'd')} bytes lost, "
        f"{_f(repeated, 'd')} repeated, caught up {_f(caught and caught * 1e3, '.0f', ' ms')} after the "
        "server was back",
        f"p95 {_f(over(follow95), '+.1f', ' ms')} over follow()'s, {_f(over(sse95), '+.1f', ' ms')} over "
        "the SSE client's",
        "p95 <= 250 ms; nothing lost or repeated on resume",
        _verdict(None if p95 is None or resumed is None else p95 <= 250 and resumed),
    ])

    big = "test_web_100mb_log"
    opened, worst = r.extra(big, "log_100mb_median_s"), r.extra(big, "log_100mb_max_s")
    sent, size = r.extra(big, "log_100mb_sent_max"), r.extra(big, "log_bytes")
    small, static = r.extra(big, "log_1kb_median_s"), r.extra(big, "static_1mb_median_s")
    tail = r.extra(big, "tail_get_median_s")
    out.append([
        f"web view: {_f(size and size / 1e6, '.0f', ' MB')} log opened in the browser "
        f"(median of {r.extra(big, 'rounds') or '?'} rounds, taking turns)",
        f"the task page of a 1 kB log {_f(small and small * 1e3, '.0f', ' ms')}; a static 1 MB text page "
        f"{_f(static and static * 1e3, '.0f', ' ms')}; httpx GET of the 64 KiB tail window "
        f"{_f(tail and tail * 1e3, '.1f', ' ms')}",
        f"last line shown {_f(opened and opened * 1e3, '.0f', ' ms')} (worst {_f(worst and worst * 1e3, '.0f', ' ms')}), "
        f"{_f(sent, ',d')} bytes sent",
        f"{_f(_ratio(opened, small), '.2f')}x the 1 kB log's page, {_f(_ratio(opened, static), '.2f')}x the "
        f"static 1 MB page; {_f(_ratio(sent, size), '.3%')} of the log sent",
        "<= 1 s; <= 1 MB sent",
        _verdict(None if opened is None or sent is None else opened <= 1.0 and sent <= 1_000_000),
    ])
    return out


def async_rows(r: Results) -> list[list[str]]:
    """The asyncio API beside the blocking one (benchmarks/test_bench_async.py, issue 16)."""
    out = []

    def us(value: Any) -> str:
        return _f(value and value * 1e6, ".1f", " us")

    for placement, where in (("same-cpu", "one CPU (client and supervisor pinned to it)"),
                             ("two-cpus", "two CPUs (one each)")):
        name = f"test_async_info_interleaved[{placement}]"
        blocking, aio = r.extra(name, "blocking_median_s"), r.extra(name, "async_median_s")
        thread = r.extra(name, "to_thread_median_s")
        ratio = _ratio(aio, blocking)
        out.append([
            f"asyncio: await info(fresh=True), connected, {where}",
            f"blocking info(fresh=True) {us(blocking)}; await asyncio.to_thread(task.info, fresh=True) "
            f"{us(thread)} = {_f(_ratio(thread, blocking), '.2f')}x",
            f"await AsyncTask.info(fresh=True) {us(aio)}",
            f"{_f(ratio, '.2f')}x the blocking call; {_f(_ratio(aio, thread), '.0%')} of to_thread's",
            "<= 2x the blocking call (to_thread: <= 4x)",
            _verdict(None if ratio is None else ratio <= 2.0),
        ])
    name = "test_async_search_100"
    blocking, aio = r.extra(name, "blocking_median_s"), r.extra(name, "async_median_s")
    ratio = _ratio(aio, blocking)
    out.append([
        "asyncio: search() over 100 live tasks, every one asked (records unused)",
        f"blocking search() (8 threads) {_f(blocking and blocking * 1e3, '.1f', ' ms')}",
        f"await AsyncTaskPool.search(), one loop, no thread {_f(aio and aio * 1e3, '.1f', ' ms')}",
        f"{_f(ratio, '.2f')}x the blocking search()",
        "<= the blocking search()",
        _verdict(None if ratio is None else ratio <= 1.0),
    ])
    return out


HEADER = ["what", "baselines (same run)", "bgtask", "ratio", "must reach", "reached"]


def machine_lines(r: Results, load: tuple[Any, Any] | None) -> list[str]:
    m = r.machine
    cpu = m.get("cpu", {}) if isinstance(m.get("cpu"), dict) else {}
    lines = [
        f"when: {r.when}",
        f"machine: {cpu.get('brand_raw') or platform.processor() or 'unknown CPU'}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {m.get('python_version', platform.python_version())}",
    ]
    if load is not None:
        lines.append(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load[0])}; "
                     f"after: {', '.join(f'{x:.2f}' for x in load[1])}")
    return lines


def print_text(table: list[list[str]]) -> None:
    for row in table:
        print(f"* {row[0]}")
        for head, cell in zip(HEADER[1:], row[1:], strict=True):
            print(f"    {head + ':':22} {cell}")


def print_rst(table: list[list[str]]) -> None:
    print(".. list-table::")
    print("   :header-rows: 1")
    print("   :widths: 14 26 24 18 12 6")
    print()
    for row in [HEADER, *table]:
        for i, cell in enumerate(row):
            print(f"   {'* -' if i == 0 else '  -'} {cell}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="read this pytest-benchmark JSON instead of running")
    parser.add_argument("--save", help="keep the JSON of this run here")
    parser.add_argument("--rst", action="store_true", help="print reStructuredText")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    load = None
    rc = 0
    if args.json:
        path = args.json
    else:
        path = args.save or os.path.join(tempfile.mkdtemp(prefix="bgbench"), "benchmarks.json")
        before, after, rc = run_benchmarks(path, args.pytest_args)
        load = (before, after)
    with open(path) as f:
        results = Results(json.load(f))
    for line in machine_lines(results, load):
        print(line)
    print()
    table = rows(results) + web_rows(results) + async_rows(results)
    if args.rst:
        print_rst(table)
    else:
        print_text(table)
    if rc:
        print(f"\npytest exited with {rc}: some benchmarks failed (see above)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
