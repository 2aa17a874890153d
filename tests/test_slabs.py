"""The slabs a busy pump reads into (``slabs.Slabs``, ``io._read_slabs``): a slab is
written again only once no view of it is left, wherever the views are held (the buffer,
a peek's parts, a claim), and what is read comes out whole and in order.

A real pipe, a real ``ByteBuffer``, and a model of the stream (hypothesis): writes of
any size, consuming reads, peeks whose parts are kept for a while (a reply being sent)
and dropped later, retained bytes; every held byte and every kept part must still be
the model's.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bgtask._supervisor.buffer import SLAB, ByteBuffer, Chunks
from bgtask._supervisor.io import _read_slabs
from bgtask._supervisor.slabs import Slabs

pytestmark = pytest.mark.timeout(120)

_F_SETPIPE_SZ = 1031


_PATTERN = random.Random(5).randbytes(2 << 20)


def _data(n: int, seed: int) -> bytes:
    # Random bytes: a shifted or stale read cannot pass.
    return _PATTERN[seed:seed + n]


class SlabMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.r, self.w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(self.w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)  # a full pipe takes what fits
        self.slabs = Slabs()
        self.buf = ByteBuffer(retain=100_000, max_unread=1 << 30)
        self.model = bytearray()
        self.in_pipe = 0
        self.kept: list[tuple[int, Chunks]] = []  # parts of peeks not yet "sent"

    def teardown(self) -> None:
        os.close(self.r)
        os.close(self.w)

    @rule(n=st.one_of(st.integers(1, 100), st.integers(4000, 5000), st.integers(100_000, 400_000)),
          seed=st.integers(0, 255))
    def write(self, n: int, seed: int) -> None:
        try:
            n = os.write(self.w, _data(n, seed))
        except BlockingIOError:
            return
        self.model += _data(n, seed)
        self.in_pipe += n

    @rule(n=st.one_of(st.integers(1, 5000), st.integers(100_000, 1 << 20)))
    def pump(self, n: int) -> None:
        pieces = _read_slabs(self.r, n, self.slabs)
        if not self.in_pipe:
            assert pieces is None
            return
        assert pieces
        got = sum(map(len, pieces))
        assert 0 < got <= min(n, self.in_pipe)
        self.in_pipe -= got
        for p in pieces:
            assert isinstance(p, bytes) or p.readonly
            self.buf.append(p)

    @rule(n=st.integers(1, 600_000))
    def consume(self, n: int) -> None:
        buf = self.buf
        stop = min(buf.limit, buf.cursor + n)
        parts = buf.parts(buf.cursor, stop)
        assert b"".join(bytes(p) for p in parts) == bytes(self.model[buf.cursor:stop])
        buf.consume(stop)

    @rule(a=st.integers(0, 1 << 21), n=st.integers(1, 300_000))
    def peek_and_keep(self, a: int, n: int) -> None:
        buf = self.buf
        if buf.limit == buf.start:
            return
        start = buf.start + a % (buf.limit - buf.start)
        self.kept.append((start, buf.parts(start, start + n)))

    @rule()
    def send_kept(self) -> None:
        if self.kept:
            self.kept.pop(0)

    @rule()
    def release(self) -> None:
        self.slabs.release()

    @invariant()
    def bytes_intact(self) -> None:
        buf = self.buf
        assert buf.get(buf.start, buf.limit) == bytes(self.model[buf.start:buf.limit])
        for start, parts in self.kept:
            assert b"".join(bytes(p) for p in parts) == bytes(self.model[start:start + parts.nbytes])


TestSlabs = SlabMachine.TestCase
TestSlabs.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])


def test_a_free_slab_is_reused_and_a_viewed_one_is_not() -> None:
    slabs = Slabs()
    segs = slabs.room(3 * SLAB)
    assert [len(s) for s in segs] == [SLAB] * 3
    del segs
    pieces = slabs.fill(3 * SLAB)
    ids = {id(p.obj) for p in pieces if isinstance(p, memoryview)}
    assert len(ids) == 3
    # The first two are retired (held by the pieces); the third is current and full.
    segs = slabs.room(SLAB)
    assert not ({id(s.obj) for s in segs} & ids)  # all three still viewed
    del segs
    slabs.fill(0)
    first = pieces[0]
    assert isinstance(first, memoryview)
    old = id(first.obj)  # not a reference: one would keep it busy
    del pieces, first
    segs = slabs.room(2 * SLAB)
    assert old in {id(s.obj) for s in segs}  # free again: reused
    del segs
    slabs.fill(0)


def test_a_short_read_is_copied_and_its_place_reused() -> None:
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        slabs = Slabs()
        os.write(w, b"x" * 100)
        (piece,) = _read_slabs(r, 1 << 20, slabs) or []
        assert type(piece) is bytes and piece == b"x" * 100
        os.write(w, b"y" * 10_000)
        (piece,) = _read_slabs(r, 1 << 20, slabs) or []
        assert isinstance(piece, memoryview) and bytes(piece) == b"y" * 10_000
        assert piece.readonly
        assert _read_slabs(r, 1 << 20, slabs) is None  # empty
        os.close(w)
        w = -1
        assert _read_slabs(r, 1 << 20, slabs) == []  # EOF
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
