"""The memory a busy pump reads into: :class:`Slabs`.

Used by one pump thread (``io.py``); the views it hands out go into the buffers
(``buffer.py``) and from there into replies. Standard library core only.
"""

from __future__ import annotations

from sys import getrefcount

from bgtask._supervisor.buffer import SLAB, SMALL

#: slabs looked at (oldest first) for a free one before a new one is made.
_PROBES = 8


class Slabs:
    """The memory a busy pump reads into: slabs of :data:`SLAB` bytes, reused.

    A pump that read each grown pipe into new ``bytes`` paid for them either with a
    fresh ``mmap`` per read, faulted in page by page while the kernel copied the pipe
    into it (1 MiB reads: 256 faults a MiB, twice the pump's CPU), or, in heap-sized
    pieces, with 8 reads a MiB and a heap that kept a burst resident until trimmed
    (``malloc_trim``, which needs ``ctypes``). The pump reads into slabs instead, with
    one ``readv`` for the rest of the current slab and the next ones, and the buffer holds
    read-only views of them (:meth:`fill`): no copy, no allocation, no page fault once
    a slab is in use.

    A slab is written again only when nothing refers to it any more: no view of it is
    left (each live ``memoryview`` of a ``bytearray`` holds a reference to it, so its
    reference count says so), whoever held the views (the buffer, a reply being
    sent, a claim). A slab nobody needs is let go at :meth:`release` (the pump calls it
    once its pipes are quiet, and the pump's end drops them all), and freed by the
    last view of it: at or above the mmap threshold, its memory goes back to the system
    then. One pump's, used by its thread only.
    """

    __slots__ = ("_cur", "_next", "_owned", "_pos")

    def __init__(self) -> None:
        #: slabs let go by the pump, oldest first: busy (views of them are held) or free
        self._owned: list[bytearray] = []
        self._cur: bytearray | None = None  # the slab being filled, from _pos on
        self._pos = 0
        self._next: list[bytearray] = []  # slabs handed out after _cur by room()

    def room(self, n: int) -> list[memoryview]:
        """Where to read up to *n* bytes: the rest of the current slab, and as many
        next slabs as it takes. :meth:`fill` must follow, once these views are dropped."""
        cur = self._cur
        if cur is None or SLAB - self._pos < SMALL:
            if cur is not None:
                self._owned.append(cur)
            cur = self._cur = self._free()
            self._pos = 0
        pos = self._pos
        segs = [memoryview(cur)[pos:pos + n]]
        n -= SLAB - pos
        while n > 0:
            slab = self._free()
            self._next.append(slab)
            segs.append(memoryview(slab)[:n])
            n -= SLAB
        return segs

    def fill(self, got: int) -> list[bytes | memoryview]:
        """*got* bytes were read into the last :meth:`room`: they, as pieces in order
        (read-only views; a short piece as ``bytes``, its place reused)."""
        cur, pos, nexts = self._cur, self._pos, self._next
        assert cur is not None
        self._next = []
        pieces: list[bytes | memoryview] = []
        first = min(got, SLAB - pos)
        if 0 < first < SMALL and got == first:
            pieces.append(bytes(memoryview(cur)[pos:pos + first]))
        elif first > 0:
            pieces.append(memoryview(cur)[pos:pos + first].toreadonly())
            self._pos = pos + first
        got -= first
        for i, slab in enumerate(nexts):
            if got <= 0:
                self._owned[:0] = nexts[i:]  # unused: free
                break
            more = min(got, SLAB)
            pieces.append(memoryview(slab)[:more].toreadonly())
            self._owned.append(self._cur)  # type: ignore[arg-type]
            self._cur, self._pos = slab, more
            got -= more
        return pieces

    def release(self) -> None:
        """Let go of every slab (each is freed once no view of it is left)."""
        self._owned.clear()
        self._cur = None
        self._next = []

    def __bool__(self) -> bool:
        return self._cur is not None or bool(self._owned)

    def _free(self) -> bytearray:
        """A slab nothing refers to: an old one, or a new one."""
        owned = self._owned
        for _ in range(min(len(owned), _PROBES)):
            slab = owned.pop(0)
            # Two references: ``slab`` and the argument. Every live view of a slab adds
            # one (its buffer's hold on the bytearray).
            if getrefcount(slab) == 2:
                return slab
            owned.append(slab)  # busy: to the back (slabs are mostly freed in order)
        return bytearray(SLAB)



__all__ = ["SLAB", "Slabs"]
