"""Output streams: offsets, consuming and non-consuming reads, waiting, following, retention."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from helpers import py, wait_for

import bgtask


def finished(pool: bgtask.TaskPool, code: str, **kw: object) -> bgtask.Task:
    """Spawn a Python job and wait until it has exited and its output is collected."""
    task = pool.spawn(py(code), **kw)  # type: ignore[arg-type]
    assert task.wait(timeout=10) is not None
    return task


# -- separate streams, offsets ------------------------------------------------------------------

def test_stdout_and_stderr_are_separate(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "import sys; print('to out'); print('to err', file=sys.stderr); print('more out')")
    try:
        assert task.stream("stdout").read() == b"to out\nmore out\n"
        assert task.stream(2).read() == b"to err\n"
        assert task.stream(1).read() == b""
    finally:
        task.delete()


def test_stream_names_and_numbers(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["true"])
    try:
        assert task.stream(0).name == "stdin"
        assert task.stream(1).name == "stdout"
        assert task.stream(2).name == "stderr"
        for bad in (3, -1, "stdout ", "STDOUT", "out"):
            with pytest.raises(ValueError):
                task.stream(bad)
        for bad in (None, 1.0, b"stdout"):
            with pytest.raises(TypeError):
                task.stream(bad)  # type: ignore[arg-type]
    finally:
        task.delete()


def test_offsets_are_absolute(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "import sys; sys.stdout.write('0123456789')", retain_output=0)
    try:
        out = task.stream("stdout")
        assert (out.start, out.limit) == (0, 10)
        assert out.read(3, 7) == b"3456"
        assert out.read() == b"0123456789"
        # Read (and retain_output=0): nothing is held, but the offsets stay where they are.
        assert (out.start, out.limit) == (10, 10)
        assert out.read(10) == b""
        info = task.info(fresh=True)["streams"]["stdout"]
        assert (info["start"], info["limit"]) == (10, 10)
    finally:
        task.delete()


def test_read_is_consuming_and_read_range_is_not(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "print('hello world')")
    try:
        out = task.stream("stdout")
        assert out.read(0) == b"hello world\n"
        assert out.read(6, 11) == b"world"
        assert out.read(0, 5) == b"hello"
        assert out.read(12) == b""
        assert out.read() == b"hello world\n"  # still unread: range reads did not consume
        assert out.read() == b""
        assert out.read(timeout=0) == b""
    finally:
        task.delete()


def test_end_past_limit_is_cut_at_limit(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "print('abc')")
    try:
        out = task.stream("stdout")
        assert out.read(1, 10**12) == b"bc\n"
        assert out.read(4, 10**12) == b""
        assert out.read(50) == b""  # past the limit: nothing yet
        assert out.read(2, 2) == b""
    finally:
        task.delete()


def test_output_gone_error_says_where_the_stream_begins(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "import sys; sys.stdout.write('x' * 100)", retain_output=0)
    try:
        out = task.stream("stdout")
        assert len(out.read()) == 100
        with pytest.raises(bgtask.OutputGoneError) as ei:
            out.read(0, 10)
        assert ei.value.start == 100
        assert isinstance(ei.value, LookupError)
        with pytest.raises(bgtask.OutputGoneError):
            out.read(99)
    finally:
        task.delete()


def test_bad_read_arguments_raise_in_the_caller(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "print('abc')")
    try:
        out = task.stream("stdout")
        with pytest.raises(ValueError):
            out.read(-1)
        with pytest.raises(ValueError):
            out.read(3, 1)
        with pytest.raises(ValueError):
            out.read(timeout=-1)
        with pytest.raises(TypeError):
            out.read("0")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            out.write(b"x")
        with pytest.raises(ValueError):
            task.stream("stderr").write(b"x")
        with pytest.raises(ValueError):
            task.stream("stdin").read()
        assert out.read() == b"abc\n", "a refused call consumed nothing"
    finally:
        task.delete()


# -- waiting for output ---------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_read_timeout_zero_returns_at_once(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "30"])
    try:
        out = task.stream("stdout")
        t0 = time.monotonic()
        assert out.read() == b""
        assert out.read(timeout=0) == b""
        assert out.read(0, timeout=0) == b""
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        assert out.read(timeout=0.3) == b""  # nothing came: empty after the timeout
        assert 0.25 <= time.monotonic() - t0 < 3.0
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_read_with_timeout_waits_for_new_output(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys, time; time.sleep(0.3); sys.stdout.write('late\\n'); sys.stdout.flush(); time.sleep(30)"))
    try:
        out = task.stream("stdout")
        t0 = time.monotonic()
        assert out.read(timeout=10) == b"late\n"
        elapsed = time.monotonic() - t0
        assert 0.1 < elapsed < 5, elapsed
        # A range read waits too, for output after its start.
        got: list[bytes] = []
        th = threading.Thread(target=lambda: got.append(out.read(5, timeout=10)))
        th.start()
        time.sleep(0.1)
        assert got == []
        task.kill()
        th.join(10)
        assert got == [b""], "the end of the stream ends the wait with nothing"
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_read_with_timeout_returns_at_end_of_stream(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import time; time.sleep(0.2)"))
    try:
        t0 = time.monotonic()
        assert task.stream("stdout").read(timeout=None) == b""
        assert time.monotonic() - t0 < 5, "read waited past the end of the stream"
        assert task.stream("stdout").eof
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_consuming_reads_from_two_clients_never_deliver_a_byte_twice(pool: bgtask.TaskPool) -> None:
    size = 4 << 20
    task = pool.spawn(py(f"import sys; sys.stdout.buffer.write(b'y' * {size})"), max_buffer=64 * 1024)
    counts = [0, 0]

    def reader(i: int) -> None:
        out = bgtask.Task(task.pid, pool).stream("stdout")
        while True:
            data = out.read(timeout=5)
            if not data and out.eof:
                return
            counts[i] += len(data)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(25)
        assert sum(counts) == size
        assert task.stream("stdout").read() == b""
    finally:
        task.delete()


# -- follow -----------------------------------------------------------------------------------------

TICKER = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)\n"


@pytest.mark.timeout(20)
def test_follow_yields_until_end_of_stream_and_consumes(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py(TICKER))
    try:
        out = task.stream("stdout")
        chunks = list(out.follow())
        assert all(isinstance(c, bytes) and c for c in chunks)
        assert b"".join(chunks) == b"0\n1\n2\n3\n4\n"
        assert out.read() == b"", "follow() consumes"
        assert out.eof
        assert list(out.follow()) == []  # at the end already
        assert b"".join(iter(task.stream("stderr"))) == b""
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_follow_from_start_does_not_consume(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py(TICKER), retain_output=0)
    try:
        out = task.stream("stdout")
        assert b"".join(out.follow(0)) == b"0\n1\n2\n3\n4\n"
        assert b"".join(out.follow(4)) == b"2\n3\n4\n"
        assert out.read() == b"0\n1\n2\n3\n4\n", "follow(start) did not consume"
        with pytest.raises(bgtask.OutputGoneError):
            list(out.follow(0))
    finally:
        task.delete()


# -- eof ------------------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_eof_while_running_after_exit_and_with_unread_output(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys; sys.stdout.write('x\\n'); sys.stdout.flush(); sys.stdin.read()"))
    try:
        out = task.stream("stdout")
        assert out.read(timeout=10) == b"x\n"
        assert out.eof is False
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 0
        assert out.eof is True
        assert task.stream("stderr").eof is True
    finally:
        task.delete()
    task = finished(pool, "print('unread')")
    try:
        assert task.stream("stdout").eof is True, "eof with unread output"
        assert task.stream("stdout").read() == b"unread\n"
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_grandchild_holding_the_pipe_keeps_eof_false(pool: bgtask.TaskPool) -> None:
    task = pool.spawn("sleep 30 & echo started", shell=True)
    try:
        assert task.wait(timeout=10) == 0  # waits ~1 s for the pipe, then gives up
        out = task.stream("stdout")
        assert out.read() == b"started\n"
        assert out.eof is False, "a grandchild still holds stdout open"
    finally:
        task.delete()  # ends the straggler too


# -- retention ----------------------------------------------------------------------------------------

def test_retain_output_keeps_the_last_bytes_read(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "import sys; sys.stdout.write('0123456789')", retain_output=4)
    try:
        out = task.stream("stdout")
        assert out.read(0, 3) == b"012"  # not consumed: still everything held
        assert out.read() == b"0123456789"
        assert (out.start, out.limit) == (6, 10)
        assert out.read(6) == b"6789"
        assert out.read(8, 9) == b"8"
        with pytest.raises(bgtask.OutputGoneError) as ei:
            out.read(5)
        assert ei.value.start == 6
        assert task.info(fresh=True)["streams"]["stdout"]["start"] == 6
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_retention_across_several_reads(pool: bgtask.TaskPool) -> None:
    # One write per line (PYTHONUNBUFFERED may be set: print() would write "aaa" and "\\n" apart).
    task = pool.spawn(py("import sys\nfor line in sys.stdin:\n    sys.stdout.write(line.strip() * 3 + '\\n')\n"
                         "    sys.stdout.flush()"),
                      retain_output=5)
    try:
        out = task.stream("stdout")
        task.stream("stdin").write("a\n")
        assert out.read(timeout=10) == b"aaa\n"
        task.stream("stdin").write("b\n")
        assert out.read(timeout=10) == b"bbb\n"
        # 8 bytes read: the last 5 of them stay readable, across the two reads
        assert out.start == 3
        assert out.read(3) == b"\nbbb\n"
        task.stream("stdin").close()
        assert task.wait(timeout=10) == 0
    finally:
        task.delete()


def test_unread_output_is_held_without_retention(pool: bgtask.TaskPool) -> None:
    task = finished(pool, "import sys; sys.stdout.write('z' * 1000)", retain_output=0)
    try:
        out = task.stream("stdout")
        assert out.start == 0 and out.limit == 1000
        assert out.read(0, 1000) == b"z" * 1000
        assert out.read(500) == b"z" * 500
        assert out.read() == b"z" * 1000
        assert out.start == 1000
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_drop_with_retention_start_is_the_first_byte_not_dropped(pool: bgtask.TaskPool) -> None:
    # a*10, then b*5, then c*20, each after a line on stdin
    code = ("import sys\n"
            "for part in (b'a' * 10, b'b' * 5, b'c' * 20):\n"
            "    sys.stdin.readline()\n"
            "    sys.stdout.buffer.write(part)\n"
            "    sys.stdout.flush()\n")
    task = pool.spawn(py(code), max_buffer=10, on_full="drop", retain_output=100)
    try:
        out, stdin = task.stream("stdout"), task.stream("stdin")
        stdin.write("\n")
        assert out.read(timeout=10) == b"a" * 10
        stdin.write("\n")
        wait_for(lambda: out.limit == 15)
        assert out.read(0) == b"a" * 10 + b"b" * 5, "read bytes are retained, unread ones held"
        stdin.write("\n")
        assert task.wait(timeout=10) == 0
        info = out.info()
        # 25 unread > max_buffer 10: the oldest 15 unread bytes (b*5, c*10) were dropped,
        # and the retained bytes before the hole went with them.
        assert info["dropped"] == 15
        assert (out.start, out.limit) == (25, 35)
        with pytest.raises(bgtask.OutputGoneError) as ei:
            out.read(0)
        assert ei.value.start == 25
        assert out.read() == b"c" * 10
        assert out.read(25) == b"c" * 10, "retained after reading"
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_one_read_returns_everything_unread_even_when_large(pool: bgtask.TaskPool) -> None:
    size = 40 << 20  # more than one reply of the supervisor carries
    task = pool.spawn(["head", "-c", str(size), "/dev/zero"])
    try:
        assert task.wait(timeout=20) == 0
        data = task.stream("stdout").read()
        assert len(data) == size and data.count(0) == size
        assert task.stream("stdout").read() == b""
        del data
    finally:
        task.delete()


# -- output outlives the job ------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_output_is_readable_after_the_job_is_killed(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(py("import sys, time; print('before', flush=True);"
                         "print('err', file=sys.stderr, flush=True); time.sleep(30)"))
    try:
        wait_for(lambda: task.stream("stderr").limit == 4)
        assert task.kill() is True
        assert task.wait(timeout=10) == -9
        assert task.stream("stdout").read() == b"before\n"
        assert task.stream("stderr").read() == b"err\n"
        # ... and from another handle, as long as the supervisor lives
        assert bgtask.Task(task.pid, pool).info(fresh=True)["status"]["signal"] == 9
    finally:
        task.delete()


@pytest.mark.timeout(20)
def test_output_written_just_before_exit_is_collected(pool: bgtask.TaskPool) -> None:
    code = "import os; os.write(1, b'a' * 300000); os.write(2, b'b' * 1000); os._exit(3)"
    task = pool.spawn(py(code))
    try:
        assert task.wait(timeout=10) == 3
        # wait() returned a code: stdout and stderr are complete, no polling needed
        assert task.stream("stdout").limit == 300000
        assert task.stream("stderr").read() == b"b" * 1000
    finally:
        task.delete()


@pytest.mark.timeout(45)
def test_large_output_read_while_produced_loses_nothing(pool: bgtask.TaskPool) -> None:
    size = 20 << 20
    code = ("import hashlib, os, sys\n"
            "h = hashlib.sha256()\n"
            f"for i in range({size // 65536}):\n"
            "    b = hashlib.sha256(str(i).encode()).digest() * 2048\n"  # 64 KiB, all different
            "    h.update(b)\n"
            "    sys.stdout.buffer.write(b)\n"
            "sys.stdout.flush()\n"
            "sys.stderr.write(h.hexdigest())\n")
    # A small max_buffer: the job must wait for us, so the output is read while produced.
    task = pool.spawn(py(code), max_buffer=1 << 20)
    try:
        h = hashlib.sha256()
        n = 0
        reads = 0
        for chunk in task.stream("stdout").follow():
            h.update(chunk)
            n += len(chunk)
            reads += 1
        assert n == size
        assert reads > 1, "the output was not read while it was produced"
        assert task.wait(timeout=10) == 0
        assert task.stream("stderr").read().decode() == h.hexdigest()
        info = task.info(fresh=True)["streams"]["stdout"]
        assert info["dropped"] == 0 and info["limit"] == size
    finally:
        task.delete()


@pytest.mark.timeout(30)
def test_large_output_read_with_plain_reads(pool: bgtask.TaskPool) -> None:
    size = 8 << 20
    code = f"import sys; sys.stdout.buffer.write(bytes(range(256)) * {size // 256})"
    task = pool.spawn(py(code), max_buffer=256 * 1024)
    try:
        out = task.stream("stdout")
        got = bytearray()
        while True:
            part = out.read(timeout=5)
            if not part and out.eof:
                break
            got += part
        assert len(got) == size
        assert got == bytes(range(256)) * (size // 256)
    finally:
        task.delete()


@pytest.mark.timeout(60)
def test_a_supervisor_gives_a_burst_back_once_it_was_read(pool: bgtask.TaskPool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Once readers consumed more than ``TRIM_AFTER_BYTES`` and paused, the supervisor
    calls ``malloc_trim`` (``main_loop.trim``): ``_ctypes`` is mapped then, not before.
    A supervisor started fresh, so that it is: one forked from the fork server has it
    from there (the spare's removal watch, ``_supervisor/libc.py``); the trim is the
    same code in both."""
    from bgtask._supervisor.main_loop import TRIM_AFTER_BYTES, TRIM_QUIET

    monkeypatch.setenv("BGTASK_TEMPLATE", "0")

    size = TRIM_AFTER_BYTES + (4 << 20)
    task = pool.spawn(["head", "-c", str(size), "/dev/zero"])

    def maps() -> str:
        with open(f"/proc/{task.pid}/maps") as f:
            return f.read()

    assert "_ctypes" not in maps()
    out, got = task.stream("stdout"), 0
    while got < size:
        got += len(out.read(timeout=5))
    wait_for(lambda: "_ctypes" in maps(), timeout=TRIM_QUIET + 10)
    assert task.info(fresh=True)["state"] == "exited"  # and it still answers
    task.delete()


def test_trim_does_not_import_the_ctypes_package() -> None:
    """The ``ctypes`` package's classes cost ~0.3 MB of heap and more of mapped files in
    every supervisor that trimmed once: ``_ctypes``' primitives do the call."""
    import subprocess
    import sys

    code = ("import sys; from bgtask._supervisor import libc, main_loop; main_loop.trim(); main_loop.trim(); "
            "print(libc.function('malloc_trim', 'L') is not None, 'ctypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["True", "False"]
