"""What the fork server (``template.py``) prepares before it forks supervisors.

Whatever is imported (or otherwise made) here is made once, in the template, and shared
by every supervisor forked from it: pages that a child never writes stay shared, so they
cost each supervisor almost nothing (PSS). Whatever a supervisor imports or builds only
after its fork is private to it -- and so is every shared page it *writes*, which on
CPython 3.11 includes any page holding an object whose reference count it changes, a
code object it runs for its first few times (the warm-up counter, then quickening), a
type whose version tag it assigns, and a half-used allocator pool it allocates from.

Measured (median PSS of 100 idle forked supervisors, each answered one ``info()``; same
run, one switch at a time): importing ``main_loop`` and all it imports here, 4.0 ->
3.3 MB (16 modules were imported after every fork); :func:`_pack`, -0.13 MB;
:func:`_exercise`, -0.1 MB; :func:`_tag_types`, -0.04 MB. What is left is mostly the
reference counts and first runs of the ~200 functions a supervisor runs once.
"""

from __future__ import annotations

import sys

#: what :func:`_pack` allocated: kept for the template's life, never touched again.
_kept: list[object] = []
#: rounds of :func:`_exercise`: enough for CPython 3.11 to quicken (8 calls) and then
#: specialise what it ran.
EXERCISE_ROUNDS = 12
#: :func:`_pack` allocates at most this many blocks of one size class.
PACK_MAX = 20000


def prepare() -> None:
    """Import what a supervisor imports, warm what it runs, then pack the allocator."""
    from bgtask._supervisor.boot import skip_unused_modules

    skip_unused_modules()
    import hmac  # noqa: F401  (the handshake, here and in the children)
    import resource  # noqa: F401  (os.wait4 imports it for the rusage of every job's end)
    import traceback  # noqa: F401  (boot's error path)

    # main_loop imports the service, job, io, outputs, stdin, policy, runner, clock...:
    # everything the boot imports once its spawner has its report.
    from bgtask._supervisor import boot, main_loop, server  # noqa: F401

    for _ in range(EXERCISE_ROUNDS):
        _exercise()
    _tag_types()
    _pack()


def _exercise() -> None:
    """Run, on throw-away objects, what every supervisor runs to answer a call: the
    handshake, a message each way on a socket pair, the lock and its conditions, the
    streams' info. Run here, it is quickened and specialised in shared pages; a
    supervisor then only reads them (and changes reference counts)."""
    import os
    import socket
    import threading

    from bgtask._supervisor.buffer import ByteBuffer, MessageBuffer
    from bgtask._supervisor.lock import StateLock
    from bgtask._wire.framing import Connection
    from bgtask._wire.handshake import ClientHandshake, ServerHandshake, hello_version

    key = bytes(32)
    server, client = ServerHandshake(key), ClientHandshake(key)
    try:
        for _ in range(6):
            out = server.data_to_send()
            if out:
                client.receive_data(out)
            out = client.data_to_send()
            if out:
                server.receive_data(out)
            if server.done:
                hello_version(server.request)
                break
    except Exception:  # noqa: BLE001 - only warming up: whatever failed is not run here
        pass
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ca, cb = Connection(a.detach()), Connection(b.detach())
    try:
        ca.socket()
        ca.send({"pid": 1, "argv": ["true"], "meta": {}, "status": {"running": True},
                 "streams": {"stdout": ByteBuffer().info(), "data": MessageBuffer().info()}})
        if cb.wait_readable(1.0):
            cb.recv()
        ca.write(b"x")
        os.read(cb.fileno(), 1)
    except OSError:
        pass
    finally:
        ca.close()
        cb.close()
    lock = StateLock()
    cond = lock.condition()
    with lock:
        cond.notify()
        cond.notify_all()
    event = threading.Event()
    event.is_set()
    event.set()


def _tag_types() -> None:
    """Give every class its type version tag (a failed attribute lookup through the
    method cache assigns it), so that no supervisor writes it into a shared type."""
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, type):
            getattr(obj, "_bgtask_no_such_attribute_", None)


def _pack() -> None:
    """Fill the free blocks of the small-object allocator's used pools.

    Each supervisor allocates objects; pymalloc serves them first from the free blocks
    of pools in use, scattered over the template's (shared) pages, each of which the
    allocation then copies. With those blocks taken here, a supervisor's objects go
    to fresh pools, dense in pages of its own. Costs the template (once, shared) the
    blocks it fills; does nothing where ``sys._debugmallocstats`` or ``memfd_create``
    is missing."""
    import gc

    gc.collect()  # the garbage a later collection would free: holes to fill now
    for _ in range(2):  # the second round fills what the first one's temporaries freed
        for size, avail in _free_blocks():
            n = min(avail, PACK_MAX)
            if size == 16:
                _kept.extend([object() for _ in range(n)])
            elif size == 32:
                _kept.extend([i + 0.5 for i in range(n)])  # a float: 24 bytes
            elif size > 33:
                _kept.extend([bytes(size - 33) for _ in range(n)])  # 33 + n bytes: this class


def _free_blocks() -> list[tuple[int, int]]:
    """(block size, free blocks in used pools) per size class, from CPython's
    ``sys._debugmallocstats()`` (which writes to the C stderr: fd 2, briefly redirected)."""
    import os

    stats = getattr(sys, "_debugmallocstats", None)
    memfd = getattr(os, "memfd_create", None)
    if stats is None or memfd is None:
        return []
    try:
        fd = memfd("bgtask-mallocstats")
    except OSError:
        return []
    try:
        saved = os.dup(2)
        try:
            os.dup2(fd, 2)
            stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        text = os.pread(fd, size, 0).decode("ascii", "replace")
    finally:
        os.close(fd)
    rows = []
    for line in text.splitlines():
        # class, size, num pools, blocks in use, avail blocks
        parts = line.split()
        if len(parts) == 5 and all(p.isdigit() for p in parts):
            rows.append((int(parts[1]), int(parts[4])))
    return rows


# -- the kernel's same-page merging (KSM), when asked for ------------------------------------

#: ``BGTASK_KSM=1`` in the spawner's environment: the template offers its memory to KSM.
KSM_ENV = "BGTASK_KSM"
#: ``madvise(2)``'s advice (Linux, all architectures).
MADV_MERGEABLE = 12


def ksm_wanted() -> bool:
    import os

    return os.environ.get(KSM_ENV, "").strip().lower() in ("1", "on", "yes", "true")


def mark_mergeable() -> None:
    """Mark the template's private writable mappings ``MADV_MERGEABLE``.

    What is left of an idle supervisor's ~3 MB (the module docstring) is pages copied
    from the template: most changed the same way in every supervisor (a reference
    count one up, a cache filled in), a quarter written and then restored. Where the
    kernel's same-page merging runs (``/sys/kernel/mm/ksm/run`` is 1: root's choice),
    ``ksmd`` folds such identical pages into one: measured, 100 idle supervisors went
    from 3.0 MB to 0.4 MB of PSS each once ``ksmd`` had scanned them (``BENCHMARKS.rst``). The
    flag belongs to the mapping, so every supervisor forked from here inherits it, and
    a job (exec'd: a new address space) never does. Off unless asked for: merging makes
    a write to a merged page slower, which another process offering the same content
    could time (the known KSM side channel; a supervisor's secrets are 32 random bytes,
    not guessable a page at a time), and ``ksmd`` spends CPU scanning. Does nothing
    where ``madvise`` refuses (a kernel without KSM)."""
    from bgtask._supervisor import libc

    madvise = libc.function("madvise", "PLi")
    if madvise is None:
        return
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        perms, name = fields[1], (fields[5] if len(fields) > 5 else "")
        if perms[1] != "w" or perms[3] != "p":
            continue  # read-only (shared by the page cache already) or shared memory
        if name.startswith("[") and name != "[heap]":
            continue  # the stack, vvar, vdso: the spare keeps writing its stack
        start, end = (int(x, 16) for x in fields[0].split("-"))
        madvise(start, end - start, MADV_MERGEABLE)  # refused (no KSM): nothing changes


__all__ = ["KSM_ENV", "ksm_wanted", "mark_mergeable", "prepare"]
