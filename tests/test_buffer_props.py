"""Property-based tests of the offset arithmetic in ``bgtask._buffer`` (hypothesis).

A model keeps every byte (or message) ever appended; any sequence of appends, consuming
reads, peeks, rollbacks of undelivered reads, and drops must keep
``start <= cursor <= limit``, hold no more than promised, and return exactly the model's
bytes at the offsets asked for.

These run against the buffers directly, as the supervisor drives them (its lock held
around every call): a consuming read is ``parts(cursor, stop)`` + ``consume(stop)``, its
rollback ``unconsume(...)`` when the reply could not be delivered, and under
``on_full="block"`` the pump appends at most :meth:`~bgtask._buffer.ByteBuffer.room`
bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bgtask._supervisor.buffer import ByteBuffer, Chunks, MessageBuffer

pytestmark = pytest.mark.timeout(120)

# Sizes straddle the buffer's internal thresholds: appends under 4 KiB are coalesced
# into a growing tail bytearray of at most 64 KiB; larger ones are kept as they are.
_sizes = st.one_of(st.integers(0, 40), st.integers(4000, 4200), st.integers(60_000, 70_000))


def _data(n: int, seed: int) -> bytes:
    # Every offset's byte is different from its neighbours': a shifted read cannot pass.
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def _joined(parts: Chunks) -> bytes:
    return b"".join(bytes(p) for p in parts)


class ByteBufferMachine(RuleBasedStateMachine):
    """A ByteBuffer against a model: the whole stream as one ``bytearray``."""

    @initialize(retain=st.sampled_from([0, 1, 100, 5000, 100_000]),
                max_unread=st.sampled_from([1, 50, 4096, 70_000, 1 << 20]),
                drop=st.booleans())
    def setup(self, retain: int, max_unread: int, drop: bool) -> None:
        self.buf = ByteBuffer(retain, max_unread, drop)
        self.model = bytearray()
        self.dropped = 0
        self.consumed = 0  # bytes handed to readers whose reply was delivered
        self.seed = 0
        self.pending: list[tuple[int, int, int, Chunks, int]] = []  # undelivered reads
        self.given_back = 0  # bytes rolled back since the last append (drop mode)

    # -- what the pumps do ------------------------------------------------------------------

    @rule(n=_sizes)
    def append(self, n: int) -> None:
        buf = self.buf
        if not buf.drop:
            n = min(n, buf.room())  # the pump reads at most room() bytes
        data = _data(n, self.seed)
        self.seed += 1
        before_cursor = buf.cursor
        buf.append(data)
        self.model += data
        if buf.drop:
            self.dropped += buf.cursor - before_cursor
            if n:
                self.given_back = 0
                assert buf.unread <= buf.max_unread
        assert buf.dropped == self.dropped

    # -- what readers do -------------------------------------------------------------------

    @rule(max_bytes=st.integers(1, 200_000), deliver=st.booleans())
    def consuming_read(self, max_bytes: int, deliver: bool) -> None:
        buf = self.buf
        pos = buf.cursor
        stop = min(buf.limit, pos + max_bytes)
        parts = buf.parts(pos, stop)
        assert parts.nbytes == (stop - pos if pos < stop else parts.nbytes)
        old_start, old_cursor = buf.start, buf.cursor
        if pos < stop:
            buf.consume(stop)
        assert _joined(parts) == bytes(self.model[pos:stop])
        if deliver or pos >= stop:
            self.consumed += stop - pos
        else:
            # The reply is on its way (``TaskState.stream_read``): its bytes count as held.
            buf.inflight += stop - pos
            self.pending.append((old_start, old_cursor, stop, parts, self.seed))

    @precondition(lambda self: self.pending)
    @rule(which=st.integers(0, 5))
    def rollback_undelivered(self, which: int) -> None:
        """The server's rollback of an undelivered read (each reader's thread does its
        own, in any order): done only when nothing else moved the cursor since
        (``TaskState.rollback``)."""
        old_start, old_cursor, nxt, parts, _seed = self.pending.pop(which % len(self.pending))
        buf = self.buf
        buf.inflight -= nxt - old_cursor
        if buf.cursor == nxt:
            assert buf.unconsume(old_cursor, parts, old_start)
            assert buf.cursor == old_cursor
            # A rollback gives the bytes back: nothing is lost that was unread before.
            assert buf.start <= old_cursor
            if buf.drop:  # the next append drops down to max_buffer again
                self.given_back += nxt - old_cursor
        else:
            self.consumed += nxt - old_cursor  # counted as read (another reader moved on)

    @rule(a=st.integers(0, 400_000), length=st.integers(0, 200_000))
    def peek(self, a: int, length: int) -> None:
        buf = self.buf
        start = buf.start + a % (buf.limit - buf.start + 1)
        end = start + length
        got = buf.get(start, end)
        assert got == bytes(self.model[start:min(end, buf.limit)])

    @rule(n=st.integers(1, 5000))
    def peek_then_append(self, n: int) -> None:
        """A read's pieces are sent after the lock is dropped: later appends (which grow
        the tail bytearray in place) must not change them."""
        buf = self.buf
        start = max(buf.start, buf.limit - 3000)
        parts = buf.parts(start, buf.limit)
        expected = bytes(self.model[start:buf.limit])
        self.append(n)
        assert _joined(parts) == expected

    # -- what must always hold -------------------------------------------------------------

    @invariant()
    def offsets_are_ordered(self) -> None:
        buf = self.buf
        assert 0 <= buf.start <= buf.cursor <= buf.limit == len(self.model)
        assert buf.unread == buf.limit - buf.cursor
        assert buf.held == buf.limit - buf.start

    @invariant()
    def memory_is_bounded(self) -> None:
        buf = self.buf
        # unread bytes (and those of replies in flight) within max_buffer -- under "drop"
        # the next append drops what a rollback gave back beyond it -- and retained bytes
        # within retain_output
        if buf.drop:
            assert buf.unread <= buf.max_unread + self.given_back
        else:
            assert buf.unread + buf.inflight <= buf.max_unread
        assert buf.inflight == sum(p[2] - p[1] for p in self.pending)
        assert buf.held <= buf.unread + buf.retain
        # nothing before start is held, except the part of the one chunk that straddles it
        live = [(s, c) for s, c in zip(buf._starts[buf._head:], buf._chunks[buf._head:], strict=True)]
        assert all(c is not None for _, c in live)
        assert all(c is None for c in buf._chunks[:buf._head])
        if live:
            first_start, first = live[0]
            assert first_start <= buf.start < first_start + len(first)
            assert sum(len(c) for _, c in live) == buf.limit - first_start
        else:
            assert buf.start == buf.limit

    @invariant()
    def held_bytes_are_the_streams_bytes(self) -> None:
        buf = self.buf
        assert buf.get(buf.start, buf.limit) == bytes(self.model[buf.start:])

    @invariant()
    def every_byte_is_read_dropped_or_unread(self) -> None:
        buf = self.buf
        undelivered = sum(p[2] - p[1] for p in self.pending)
        assert self.consumed + undelivered + self.dropped + buf.unread == buf.limit


class MessageBufferMachine(RuleBasedStateMachine):
    """A MessageBuffer against a model: the list of every message ever appended."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = MessageBuffer()
        self.model: list[bytes] = []
        self.pending: tuple[list[bytes], int] | None = None

    @rule(size=st.integers(0, 3000))
    def append(self, size: int) -> None:
        blob = _data(size, len(self.model)) + len(self.model).to_bytes(4, "big")
        self.buf.append(blob)
        self.model.append(blob)

    @rule(n=st.integers(0, 10), max_bytes=st.integers(1, 10_000), deliver=st.booleans())
    def consuming_read(self, n: int, max_bytes: int, deliver: bool) -> None:
        buf = self.buf
        pos = buf.cursor
        got = buf.get(pos, pos + n, max_bytes)
        assert got == self.model[pos:pos + len(got)]
        if n and buf.limit > pos:
            assert got, "at least one message is returned, however large"
        if len(got) > 1:
            assert sum(map(len, got)) <= max_bytes
        buf.consume(pos + len(got))
        self.pending = None if deliver or not got else (got, pos + len(got))

    @precondition(lambda self: self.pending is not None)
    @rule()
    def rollback_undelivered(self) -> None:
        assert self.pending is not None
        blobs, nxt = self.pending
        self.pending = None
        start = self.buf.start
        assert self.buf.unconsume(blobs, nxt) == (start == nxt)
        if start == nxt:
            assert self.buf.start == nxt - len(blobs)

    @rule(a=st.integers(0, 100), n=st.integers(0, 20))
    def peek(self, a: int, n: int) -> None:
        buf = self.buf
        start = buf.start + a % (buf.limit - buf.start + 1)
        got = buf.get(start, start + n, 1 << 30)
        assert got == self.model[start:min(start + n, buf.limit)]

    @invariant()
    def offsets_are_ordered(self) -> None:
        buf = self.buf
        assert 0 <= buf.start == buf.cursor <= buf.limit == len(self.model)
        assert buf.unread == buf.limit - buf.start
        assert buf.nbytes == sum(len(b) for b in self.model[buf.start:])
        assert len(buf._blobs) - buf._head == buf.unread


_machine_settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
TestByteBuffer = ByteBufferMachine.TestCase
TestByteBuffer.settings = _machine_settings
TestMessageBuffer = MessageBufferMachine.TestCase
TestMessageBuffer.settings = _machine_settings


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 9000), max_size=30), retain=st.integers(0, 20_000),
       reads=st.lists(st.integers(1, 30_000), max_size=30))
def test_retained_bytes_are_exactly_the_last_ones_read(sizes: list[int], retain: int,
                                                       reads: list[int]) -> None:
    """Without drops: after any reads, ``start`` is ``max(0, cursor - retain_output)``,
    and everything from there is readable."""
    buf = ByteBuffer(retain, 1 << 30, False)
    model = bytearray()
    for i, n in enumerate(sizes):
        data = _data(n, i)
        buf.append(data)
        model += data
        if reads:
            step = reads.pop()
            stop = min(buf.limit, buf.cursor + step)
            assert buf.get(buf.cursor, stop) == bytes(model[buf.cursor:stop])
            buf.consume(stop)
        assert buf.start == max(0, buf.cursor - retain)
        assert buf.get(buf.start, buf.limit) == bytes(model[buf.start:])


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=30),
       max_unread=st.integers(1, 30_000), retain=st.integers(0, 10_000))
def test_drop_keeps_the_newest_bytes_and_counts_the_rest(sizes: list[int], max_unread: int,
                                                         retain: int) -> None:
    """``on_full="drop"`` without a reader: the newest ``max_buffer`` bytes are held,
    ``start`` is the first byte not dropped, and ``dropped`` counts the others."""
    buf = ByteBuffer(retain, max_unread, True)
    model = bytearray()
    for i, n in enumerate(sizes):
        data = _data(n, i)
        buf.append(data)
        model += data
        assert buf.unread == min(len(model), max_unread)
        assert buf.dropped == len(model) - buf.unread
        assert buf.start == buf.cursor == buf.dropped
        assert buf.get(buf.start, buf.limit) == bytes(model[-buf.unread:])


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=10), cut=st.integers(0, 10**6))
def test_an_undelivered_read_is_given_back_whole(sizes: list[int], cut: int) -> None:
    """A consuming read whose reply never reached its client (it died) is undone, even
    when consuming it freed the bytes (no retention): the next read gets them."""
    buf = ByteBuffer(0, 1 << 30, False)
    model = bytearray()
    for i, n in enumerate(sizes):
        data = _data(n, i)
        buf.append(data)
        model += data
    assume(buf.limit > 0)
    stop = 1 + cut % buf.limit
    parts = buf.parts(0, stop)
    buf.consume(stop)
    assert buf.start == stop  # freed
    assert buf.unconsume(0, parts, 0)
    assert (buf.start, buf.cursor) == (0, 0)
    assert buf.get(0, buf.limit) == bytes(model)
