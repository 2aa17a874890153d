"""Where output is buffered: the offset arithmetic of every stream.

These are plain data structures without locks; the supervisor holds its one lock
(``lock.py``) around every call. Offsets are absolute (bytes for byte streams, messages for
message streams) and never go back, across restarts too. For each buffer::

    start <= cursor <= limit

* ``start``  -- the first offset still held (``read(start, end)`` below it is gone);
* ``cursor`` -- the consuming read position: everything before it has been read;
* ``limit``  -- the end: one past the last item ever appended.

The supervisor imports this module: standard library core only.
"""

from __future__ import annotations

from bisect import bisect_right

#: a small append is merged into a growing tail chunk up to this size, so that a job
#: printing one short line at a time does not cost a Python object per line.
_COALESCE = 64 * 1024


class Chunks(list["bytes | memoryview"]):
    """Bytes held as pieces (``bytes`` or ``memoryview`` of ``bytes``): a read's data on
    its way to the socket, which the supervisor writes out piece by piece (``writev``)
    instead of joining them. Anything else that pickles it gets plain ``bytes``.
    """

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (b"".join(self),)


class ByteBuffer:
    """The bytes of one output stream (stdout or stderr).

    :param retain: bytes kept readable with ``get`` after they have been consumed.
    :param max_unread: most unread bytes held. The supervisor stops reading the job's
        pipe when :meth:`room` is 0 (``on_full="block"``); with ``drop=True`` an append
        past it drops the oldest unread bytes instead and counts them in ``dropped``.
    """

    __slots__ = ("_chunks", "_head", "_starts", "cursor", "drop", "dropped", "inflight", "limit",
                 "max_unread", "retain", "start")

    def __init__(self, retain: int = 0, max_unread: int = 64 << 20, drop: bool = False) -> None:
        self.retain = retain
        self.max_unread = max_unread
        self.drop = drop
        self.start = 0
        self.cursor = 0
        self.limit = 0
        self.dropped = 0
        #: bytes consumed by a read whose reply is still being sent: the reply holds them,
        #: so they count against max_unread until it is out (see Outputs.reply_sent).
        self.inflight = 0
        # chunks[i] holds bytes [starts[i], starts[i] + len(chunks[i])); entries before
        # _head are freed (None) and compacted away from time to time.
        self._chunks: list[bytes | bytearray | None] = []
        self._starts: list[int] = []
        self._head = 0

    @property
    def unread(self) -> int:
        return self.limit - self.cursor

    @property
    def held(self) -> int:
        """Bytes held in memory (unread plus retained), a bound on the buffer's size."""
        return self.limit - self.start

    def room(self) -> int:
        """How many more bytes may be appended before the buffer is full (the bytes of
        replies still being sent count as held)."""
        return max(0, self.max_unread - self.unread - self.inflight)

    def append(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        tail = self._chunks[-1] if len(self._chunks) > self._head else None
        if n < 4096 and isinstance(tail, bytearray) and len(tail) + n <= _COALESCE:
            tail += data
        elif n < 4096:
            self._chunks.append(bytearray(data))
            self._starts.append(self.limit)
        else:
            self._chunks.append(data)
            self._starts.append(self.limit)
        self.limit += n
        if self.drop and self.unread > self.max_unread:
            lost = self.unread - self.max_unread
            self.cursor += lost
            self.dropped += lost
            # "start is the first byte not dropped": retained bytes before the hole go too.
            self.start = self.cursor
            self._free()

    def get(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)``; the caller checked ``start >= self.start``."""
        parts = self.parts(start, end)
        if not parts:
            return b""
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    def parts(self, start: int, end: int) -> Chunks:
        """The bytes ``[start, end)`` as the pieces they are held in, without copying.

        Immutable chunks are passed as themselves (or a ``memoryview`` slice of one); the
        growing tail (a ``bytearray`` that later small appends extend) is copied, since
        the pieces are used after the caller drops the lock. The caller checked
        ``start >= self.start``.
        """
        end = min(end, self.limit)
        out = Chunks()
        if start >= end:
            return out
        chunks, starts = self._chunks, self._starts
        i = bisect_right(starts, start, self._head) - 1
        pos = start
        while pos < end:
            chunk = chunks[i]
            assert chunk is not None
            first = starts[i]
            a, b = pos - first, min(len(chunk), end - first)
            if type(chunk) is not bytes:
                out.append(bytes(chunk[a:b]))
            elif a == 0 and b == len(chunk):
                out.append(chunk)  # the common case of large reads: no copy at all
            else:
                out.append(memoryview(chunk)[a:b])
            pos = first + b
            i += 1
        out.nbytes = end - start
        return out

    def consume(self, upto: int) -> None:
        """Mark everything before *upto* as read; keep the last ``retain`` bytes of it."""
        upto = min(upto, self.limit)
        if upto <= self.cursor:
            return
        self.cursor = upto
        self.start = max(self.start, self.cursor - self.retain)
        self._free()

    def unconsume(self, back_to: int, parts: Chunks | None = None, old_start: int | None = None) -> bool:
        """Undo a consuming read whose reply could not be delivered, if nothing else moved.

        The read may have freed what it read (``retain`` smaller than the read): those
        bytes are put back from the read's *parts* (its data, from *back_to* on). *old_start*
        is :attr:`start` before the read; retained bytes that the read freed are lost.
        """
        if back_to > self.cursor:
            return False
        if back_to < self.start:
            live = self._head < len(self._chunks)
            first = self._starts[self._head] if live else self.limit
            if back_to < first:
                if parts is None or parts.nbytes < first - back_to:
                    return False
                data = b"".join(parts)[:first - back_to]  # rare: a copy is fine
                self._chunks.insert(self._head, data)
                self._starts.insert(self._head, back_to)
                first = back_to
            self.start = max(first, back_to if old_start is None else min(old_start, back_to))
        self.cursor = back_to
        return True

    def _free(self) -> None:
        chunks, starts = self._chunks, self._starts
        head, n = self._head, len(chunks)
        while head < n:
            chunk = chunks[head]
            assert chunk is not None
            if starts[head] + len(chunk) > self.start:
                break
            chunks[head] = None
            head += 1
        if head > 64 and head * 2 > n:
            del chunks[:head], starts[:head]
            head = 0
        self._head = head

    def info(self) -> dict[str, int | bool]:
        return {
            "start": self.start,
            "cursor": self.cursor,
            "limit": self.limit,
            "unread": self.unread,
            "dropped": self.dropped,
            "retain_output": self.retain,
            "max_buffer": self.max_unread,
        }


class MessageBuffer:
    """The messages of one message stream (``data`` or ``control``), as opaque blobs.

    Unread messages are held until they are read; none are kept after, so
    ``start == cursor`` always.
    """

    __slots__ = ("_blobs", "_head", "limit", "nbytes", "start")

    def __init__(self) -> None:
        self._blobs: list[bytes | None] = []
        self._head = 0
        self.start = 0
        self.limit = 0
        self.nbytes = 0

    @property
    def cursor(self) -> int:
        return self.start

    @property
    def unread(self) -> int:
        return self.limit - self.start

    def append(self, blob: bytes) -> None:
        self._blobs.append(blob)
        self.limit += 1
        self.nbytes += len(blob)

    def get(self, start: int, end: int, max_bytes: int) -> list[bytes]:
        """Messages ``[start, end)``, stopping early after *max_bytes* (at least one)."""
        end = min(end, self.limit)
        out: list[bytes] = []
        size = 0
        i = self._head + (start - self.start)
        for _ in range(max(0, end - start)):
            blob = self._blobs[i]
            assert blob is not None
            if out and size + len(blob) > max_bytes:
                break
            out.append(blob)
            size += len(blob)
            i += 1
        return out

    def consume(self, upto: int) -> None:
        upto = min(upto, self.limit)
        blobs = self._blobs
        while self.start < upto:
            blob = blobs[self._head]
            assert blob is not None
            self.nbytes -= len(blob)
            blobs[self._head] = None
            self._head += 1
            self.start += 1
        if self._head > 64 and self._head * 2 > len(blobs):
            del blobs[: self._head]
            self._head = 0

    def unconsume(self, blobs: list[bytes], consumed_end: int) -> bool:
        """Put back messages whose reply could not be delivered, if nothing else moved."""
        if self.start != consumed_end or not blobs:
            return False
        self._blobs[self._head:self._head] = blobs
        self.start -= len(blobs)
        self.nbytes += sum(len(b) for b in blobs)
        return True

    def info(self) -> dict[str, int | bool]:
        return {"start": self.start, "cursor": self.start, "limit": self.limit,
                "unread": self.unread, "bytes": self.nbytes}


__all__ = ["ByteBuffer", "Chunks", "MessageBuffer"]
