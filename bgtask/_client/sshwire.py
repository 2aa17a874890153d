"""What the client and the far-side bridge (:mod:`bgtask._bridge`) say to each other over
the stdio of one ssh session: length-prefixed ``marshal`` frames.

Why marshal: the values are plain (str, bytes, int, float, None, lists, tuples, dicts:
a job spec, pids, a token) and the supervisor already reads its spec that way; marshal
cannot run code when loading, unlike pickle. Frames are 4-byte big-endian lengths.

Requests are ``(op, args)``; replies ``("ok", value)`` or ``("err", class name, args,
attrs)``, rebuilt on the client from a fixed list of exception classes (an unknown one
becomes a :class:`~bgtask.RemoteError`).
"""

from __future__ import annotations

import marshal
import os
import struct
from typing import Any

from bgtask import _errors

#: the bridge protocol's version: client and bridge must agree (hello checks it).
BRIDGE_VERSION = 1
#: the largest frame either side accepts (a spec with a large meta; a pid list).
MAX_FRAME = 256 << 20

_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls for cls in (
        _errors.TaskNotFoundError, _errors.AccessDeniedError, _errors.SpawnError,
        _errors.TaskLockedError, _errors.TaskUnresponsiveError, _errors.RemoteError,
        _errors.HostUnreachableError, NotADirectoryError, ValueError, TypeError,
        PermissionError, FileNotFoundError)
}


def send(fd: int, obj: Any) -> None:
    data = marshal.dumps(obj)
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class Reader:
    """Frames from *fd*, one at a time (blocking)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def recv(self) -> Any:
        """The next value.

        :raises EOFError: the peer hung up.
        """
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if n > MAX_FRAME:
                    raise EOFError(f"a bridge frame of {n} bytes: the stream is out of step")
                if len(self._buf) >= 4 + n:
                    data = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    return marshal.loads(data)
            part = os.read(self._fd, 1 << 20)
            if not part:
                raise EOFError("the bridge hung up")
            self._buf += part


def encode_error(exc: BaseException) -> tuple[Any, ...]:
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, type(None)))}
    args = tuple(a if isinstance(a, (str, int, float, type(None))) else str(a) for a in exc.args)
    return ("err", type(exc).__name__, args, attrs)


def decode_error(name: str, args: tuple[Any, ...], attrs: dict[str, Any], where: str) -> BaseException:
    """The exception the bridge raised, as the same class here if it is a known one."""
    cls = _ERRORS.get(name)
    if cls is None:
        text = str(args[0]) if args else name
        return _errors.RemoteError(f"{where}: {name}: {text}", text)
    if issubclass(cls, _errors.BgTaskError):
        return _errors._rebuild(cls, tuple(args), dict(attrs))
    return cls(*args)


__all__ = ["BRIDGE_VERSION", "Reader", "decode_error", "encode_error", "send"]
