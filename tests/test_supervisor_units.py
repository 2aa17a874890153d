"""Unit tests of the supervisor's parts below the job: the stdin queue, the outputs and
the server's verdict on who caused an error. No process is started."""

from __future__ import annotations

import threading

import pytest

import bgtask
from bgtask._supervisor.errors import CALLER_CHECKS, InternalError, is_caller_error
from bgtask._supervisor.lock import StateLock
from bgtask._supervisor.outputs import Outputs
from bgtask._supervisor.server import TaskServer
from bgtask._supervisor.states import EXITED, RUNNING
from bgtask._supervisor.stdin import STDIN_BUFFER, StdinQueue
from bgtask._wire.names import EXPOSED, STATE_IDENT

SPEC = {"retain": 4, "max_buffer": 8, "drop": False}


def test_stdin_write_feed_discard() -> None:
    q = StdinQueue(StateLock(), 1)
    feeder = object()
    with q.lock:
        q.attach(feeder)
    assert q.write(b"abcdef", 0) == 6
    assert q.next_chunk(feeder) == (b"abcdef", 0)
    q.delivered_to(feeder, b"abcdef", 0, 2)
    assert (q.delivered, q.pending_bytes, q.head_off) == (2, 4, 2)
    with q.lock:
        q.phase_changed(EXITED)  # stdin ends with the job
    assert (q.discarded, q.pending_bytes, q.closed) == (4, 0, True)
    assert q.next_chunk(feeder) is None, "the feeder of an ended run stops"
    with pytest.raises(bgtask.StreamClosedError, match="the job has ended"):
        q.write(b"x", 0)


def test_stdin_full_is_the_callers_timeout() -> None:
    q = StdinQueue(StateLock(), 1)
    with q.lock:
        q.attach(object())
    q.write(b"x" * STDIN_BUFFER, 0)
    with pytest.raises(TimeoutError) as ei:
        q.write(b"y", 0.01)
    assert is_caller_error(ei.value)


def test_stdin_close_delivers_then_closes() -> None:
    q = StdinQueue(StateLock(), 1)
    feeder = object()
    with q.lock:
        q.attach(feeder)
    q.write(b"ab", 0)
    q.close()
    assert q.next_chunk(feeder) == (b"ab", 0)
    q.delivered_to(feeder, b"ab", 0, 2)
    assert q.next_chunk(feeder) is None and q.closed
    assert q.info()["eof"] is True


def test_outputs_read_consume_claim_rollback() -> None:
    out = Outputs(StateLock(), SPEC)  # type: ignore[arg-type]
    with out.lock:
        out.pipe_opened("stdout")
    out.deliver("stdout", b"0123456789")
    pos, nxt, data, limit, eof = out.read("stdout", None, None, True, 0, 100)
    assert (pos, nxt, b"".join(data), limit, eof) == (0, 10, b"0123456789", 10, False)  # type: ignore[arg-type]
    claim = out.take_claim()
    assert claim is not None and out.take_claim() is None
    out.rollback(claim)  # the reply never reached the client
    assert out.bytes["stdout"].cursor == 0 and out.bytes["stdout"].inflight == 0
    out.pipe_closed("stdout")
    assert out.read("stdout", 10, None, False, 0, 100)[4] is True, "eof once no writer is left"


def test_outputs_gone_and_messages_end_with_the_job() -> None:
    out = Outputs(StateLock(), SPEC)  # type: ignore[arg-type]
    out.deliver("stdout", b"0123456789")
    out.read("stdout", None, None, True, 0, 100)
    with pytest.raises(bgtask.OutputGoneError):
        out.read("stdout", 0, None, False, 0, 100)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(out.read("data", None, None, True, None, 100)))
    reader.start()
    with out.lock:
        out.phase_changed(RUNNING)
        out.phase_changed(EXITED)  # wakes the message reader: the stream has ended
    reader.join(5)
    assert got == [(0, 0, [], 0, True)]


def test_a_full_buffer_holds_its_pump_until_read() -> None:
    out = Outputs(StateLock(), SPEC)  # type: ignore[arg-type]
    out.deliver("stdout", b"x" * 8)
    held: set[str] = set()
    room: list[int] = []
    pump = threading.Thread(target=lambda: room.append(out.wait_room("stdout", held, 64)))
    pump.start()
    pump.join(0.1)
    assert pump.is_alive() and held == {"stdout"}
    out.read("stdout", None, None, True, 0, 3)
    claim = out.take_claim()
    assert claim is not None
    out.reply_sent(claim)
    pump.join(5)
    assert room == [3] and held == set()


class _Service:
    def info(self) -> dict[str, int]:
        return {}

    def kill(self, sig: int) -> bool:
        with CALLER_CHECKS:
            if sig < 0:
                raise ValueError("bad signal")
        bug: dict[str, bool] = {}
        return bug["missing"]

    def wait(self, timeout: float | None = None) -> int:
        raise InternalError("the job cannot go from 'exited' to 'paused'")

    def restart(self) -> bool:
        return bool(len(5))  # type: ignore[arg-type]  # a TypeError inside: our bug


def _server() -> TaskServer:
    server = TaskServer.__new__(TaskServer)
    server.exposed = frozenset(EXPOSED)
    server.service = _Service()  # type: ignore[assignment]
    return server


@pytest.mark.parametrize(("request_", "kind", "exc"), [
    ((STATE_IDENT, "kill", (-1,), {}), "#ERROR", ValueError),          # checked: the caller's
    ((STATE_IDENT, "kill", (1,), {}), "#TRACEBACK", None),             # KeyError inside: ours
    ((STATE_IDENT, "wait", (), {}), "#TRACEBACK", None),               # an impossible transition
    ((STATE_IDENT, "restart", (), {}), "#TRACEBACK", None),            # TypeError inside: ours
    ((STATE_IDENT, "restart", (1,), {}), "#ERROR", TypeError),         # wrong arguments: the caller's
    ((STATE_IDENT, "nope", (), {}), "#ERROR", AttributeError),
    (("other", "kill", (1,), {}), "#ERROR", LookupError),
    (5, "#ERROR", TypeError),
], ids=["checked", "bug", "internal", "typeerror-inside", "arity", "unknown-method", "ident", "malformed"])
def test_who_caused_it_decides_how_an_error_travels(request_: object, kind: str, exc: type | None) -> None:
    got_kind, result = _server().dispatch(request_)
    assert got_kind == kind, result
    if exc is not None:
        assert isinstance(result, exc)
        assert not hasattr(result, "_bgtask_by_caller"), "the mark is not sent"


