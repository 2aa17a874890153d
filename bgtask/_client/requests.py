"""What the blocking and the asyncio clients share: argument checking, request building
and reply decoding, without any I/O.

``Task``/``Stream``/``TaskPool`` and ``AsyncTask``/``AsyncStream``/``AsyncTaskPool``
both call these, so that a check or an encoding is written once and the two APIs cannot
drift apart (httpx's ``Client`` and ``AsyncClient`` did: encode/httpx#3042). Only the
I/O -- the calls themselves -- is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bgtask._client import codec as _codec
from bgtask._wire.checks import check_timeout
from bgtask._wire.names import EXPOSED, MESSAGE_STREAMS, OUTPUT_STREAMS

#: seconds from TERM to KILL when a task does not say (the contract's ``grace`` default).
DEFAULT_GRACE = 5.0
#: the remote methods that may block in the supervisor (their answer is awaited longer).
BLOCKING_METHODS = ("wait", "stream_read", "stream_write", "delete")
#: slack for ``wait()``'s answer: the output collected after the exit (COLLECT_GRACE).
WAIT_SLACK = 1.5


def check_offset(name: str, value: object) -> None:
    """An offset is None or an int >= 0.

    :raises TypeError: not an int.
    :raises ValueError: negative.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int offset, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")


def check_read(name: str, start: int | None, end: int | None, timeout: float | None) -> bool:
    """Check ``read()``'s arguments; whether the read consumes.

    :raises ValueError: reading stdin, ``end`` without ``start``, ``end < start``.
    """
    if name == "stdin":
        raise ValueError("stdin cannot be read: it is written by clients and read by the job")
    check_offset("start", start)
    check_offset("end", end)
    check_timeout(timeout)
    if start is None and end is not None:
        raise ValueError("read(end=...) needs a start: read(start, end)")
    if start is not None and end is not None and end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    return start is None


def check_follow(name: str, start: int | None) -> None:
    """:raises ValueError: following stdin."""
    if name == "stdin":
        raise ValueError("stdin cannot be followed: it is written by clients")
    check_offset("start", start)


def read_args(name: str, start: int | None, end: int | None, consume: bool, timeout: float | None,
              max_bytes: int | None = None) -> tuple[Any, ...]:
    """The arguments of one ``stream_read`` call."""
    args: tuple[Any, ...] = (name, start, end, consume, timeout)
    return args if max_bytes is None else args + (max_bytes,)


def read_goal(limit: int, end: int | None) -> int:
    """Where a read of ``[.., end)`` stops, given the stream's *limit* in a reply."""
    return limit if end is None else min(end, limit)


def decode_read(is_messages: bool, parts: list[Any]) -> Any:
    """The value ``read()`` returns for the data of its replies."""
    if is_messages:
        return [_codec.decode(blob) for part in parts for blob in part]
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


def empty_read(is_messages: bool) -> Any:
    return [] if is_messages else b""


def check_write(name: str, data: Any, timeout: float | None) -> Any:
    """Check a ``write()`` and encode what it sends: a message blob, or stdin's bytes.

    :raises ValueError: writing stdout/stderr.
    :raises TypeError: stdin data that is not bytes or str; a message dill refuses.
    """
    check_timeout(timeout)
    if name in OUTPUT_STREAMS:
        raise ValueError(f"{name} cannot be written: it is the job's output")
    if name in MESSAGE_STREAMS:
        return _codec.encode(data, "message")
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"stdin takes bytes or str, not {type(data).__name__}")


def encode_many(name: str, objects: Iterable[Any]) -> list[bytes]:
    """Check a ``write_many()`` and encode all its messages (before anything is sent).

    :raises ValueError: a byte stream.
    :raises TypeError: not an iterable, or a message dill refuses (its index named).
    """
    if name not in MESSAGE_STREAMS:
        raise ValueError(f"write_many() sends messages (data, control), not to {name}")
    if isinstance(objects, (str, bytes, bytearray, memoryview, dict)):
        raise TypeError(f"write_many() takes an iterable of messages, not {type(objects).__name__}")
    try:
        items = list(objects)
    except TypeError:
        raise TypeError(f"write_many() takes an iterable of messages, not "
                        f"{type(objects).__name__}") from None
    return [_codec.encode(obj, f"message {i}") for i, obj in enumerate(items)]


def check_close(name: str) -> None:
    """:raises ValueError: closing anything but stdin."""
    if name != "stdin":
        raise ValueError(f"only stdin can be closed, not {name}")


def meta_update(mapping: Any, kw: Mapping[str, Any]) -> dict[str, bytes]:
    """``apply_meta``'s arguments, merged and encoded (nothing is sent if this raises).

    :raises TypeError: not a mapping, a non-str key, a value dill refuses.
    """
    update: dict[str, Any] = {}
    if mapping is not None:
        if not hasattr(mapping, "keys"):
            raise TypeError(f"apply_meta takes a mapping, not {type(mapping).__name__}")
        update.update(mapping)
    update.update(kw)
    return _codec.encode_meta(update)


def remote_blocks(name: str) -> float | None:
    """``call_remote_method``: how long *name* may block (None: without limit).

    :raises ValueError: *name* is not an exposed method.
    """
    if name not in EXPOSED:
        raise ValueError(f"unknown remote method {name!r}: one of {', '.join(EXPOSED)}")
    return None if name in BLOCKING_METHODS else 0.0


def wait_blocks(timeout: float | None) -> float | None:
    """Check ``wait()``'s *timeout*; how long its call may block."""
    check_timeout(timeout)
    return None if timeout is None else timeout + WAIT_SLACK


def grace_of(info: Mapping[str, Any]) -> float:
    """The task's ``grace`` from its info: 5.0 from a supervisor that reports none."""
    grace = info.get("grace")
    if isinstance(grace, (int, float)) and not isinstance(grace, bool):
        return float(grace)
    return DEFAULT_GRACE


def matches(value: Any, pattern: Any) -> bool:
    """``search()``'s recursive subset match (dicts as subsets, other values ``==``)."""
    if isinstance(pattern, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(k in value and matches(value[k], p) for k, p in pattern.items())
    try:
        return bool(value == pattern)
    except Exception:
        return False


def check_where(where: Any) -> None:
    """:raises TypeError: *where* is not callable."""
    if where is not None and not callable(where):
        raise TypeError("where must be a callable taking the info dict")


def selected(info: dict[str, Any], where: Callable[[dict[str, Any]], Any] | None,
             pattern: Mapping[str, Any]) -> bool:
    """Does *info* match *pattern* and *where* (an exception in *where*: no match)?"""
    if pattern and not matches(info, pattern):
        return False
    if where is not None:
        try:
            return bool(where(info))
        except Exception:
            return False
    return True


def cleanable(info: dict[str, Any]) -> bool:
    """``clean()``: finished, and known to be (an unresponsive task cannot say)."""
    return info.get("state") != "unresponsive" and not info.get("status", {}).get("running")


__all__ = ["BLOCKING_METHODS", "DEFAULT_GRACE", "WAIT_SLACK", "check_close", "check_follow", "check_offset",
           "check_read", "check_where", "check_write", "cleanable", "decode_read", "empty_read",
           "encode_many", "grace_of", "matches", "meta_update", "read_args", "read_goal",
           "remote_blocks", "selected", "wait_blocks"]
