"""The far side of a remote pool: pool-level operations, run by the remote user over the
stdio of one ssh session (``python3 -c <boot> <pool>``; see :mod:`bgtask._client.ssh`).

It is a local pool client on its host: it finds, spawns and sweeps with the same code a
local caller uses (:class:`~bgtask._client.local.LocalBackend`), so sweeping and orphan
handling happen where the processes are. It never relays a task's traffic: the client
reaches each supervisor's socket through an ssh forward and authenticates end to end
with the token this bridge read for it (sent only inside the ssh channel, kept only in
the client's memory).

Started without ``bgtask/__init__`` (the boot line registers a bare package), so only
the modules an operation needs are imported: a cold start pays for the interpreter and
little else.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bgtask import _paths
from bgtask._client import sshwire
from bgtask._errors import TaskNotFoundError


class Bridge:
    def __init__(self, path: str) -> None:
        from bgtask._client.pool import _local_backend

        # The remote user's own default pool when the URL names no directory.
        self.backend = _local_backend(path or None)
        self.backend.check()
        self.dir = str(self.backend)

    def hello(self) -> dict[str, Any]:
        return {"version": sshwire.BRIDGE_VERSION, "pool": self.dir, "env": dict(os.environ),
                "home": os.path.expanduser("~"), "python": sys.executable}

    def op_pids(self, sweep: bool) -> tuple[list[int], dict[int, tuple[bytes, str]]]:
        """The pids, and the tokens of the ones that have one (a search connects to each
        next: this saves a round trip per task)."""
        pids = self.backend.pids(sweep)
        tokens = {}
        for pid in pids:
            found = self._token(pid)
            if found is not None:
                tokens[pid] = found
        return pids, tokens

    def _token(self, pid: int) -> tuple[bytes, str] | None:
        for d in self.backend._search_dirs():
            try:
                token = _paths.read_token_file(d, pid)[0]
            except (OSError, ValueError):
                continue
            return token, _paths.sock_path(d, pid)
        return None

    def op_token(self, pid: int) -> tuple[bytes, str]:
        """Task *pid*'s token and socket path, after the checks a local connect makes
        (its socket is ours; a dead supervisor is swept and reported gone)."""
        from bgtask._client import connection as _protocol
        from bgtask._wire.faults import SupervisorDeadError

        where = self.backend._dir_of(pid)
        if where is None:
            raise TaskNotFoundError(f"no task {pid} in pool {self.dir}", pid)
        path = _protocol._check_socket(where, pid)
        try:
            return _protocol._read_token(where, pid, path), path
        except SupervisorDeadError:
            pass
        # The same wording as a local connect to a dead supervisor.
        try:
            self.backend.connect(pid)
        except TaskNotFoundError:
            raise
        raise TaskNotFoundError(f"task {pid} is gone", pid)

    def op_records(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        return self.backend.records(pids)

    def op_unresponsive_info(self, pid: int, since: float | None) -> dict[str, Any]:
        return self.backend.unresponsive_info(pid, since)

    def op_sweep(self, pid: int) -> tuple[Any, ...] | None:
        report = self.backend.sweep(pid)
        return None if report is None else tuple(report)

    def op_spawn(self, spec: dict[str, Any]) -> int:
        return self.backend.spawn(spec)  # type: ignore[arg-type]

    def op_start_time(self, pid: int) -> int | None:
        return self.backend.start_time(pid)

    def op_wait_gone(self, pid: int, start: int | None, timeout: float) -> bool:
        return self.backend.wait_gone(pid, start, min(float(timeout), 30.0))

    def op_ping(self) -> float:
        return time.time()


def main(argv: list[str]) -> None:
    # Our protocol owns the session's stdin and stdout: keep private copies and put
    # /dev/null in their place, so that nothing else (a stray print, an inherited fd of
    # a process we start) can write into the stream or hold the session open.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    try:
        bridge = Bridge(argv[0] if argv else "")
    except Exception as exc:
        sshwire.send(wfd, sshwire.encode_error(exc))
        return
    sshwire.send(wfd, ("hello", bridge.hello()))
    reader = sshwire.Reader(rfd)
    while True:
        try:
            op, args = reader.recv()
        except EOFError:
            return  # the client is gone (or closed the session): so are we
        method = getattr(bridge, f"op_{op}", None) if isinstance(op, str) else None
        try:
            if method is None:
                raise ValueError(f"unknown bridge operation {op!r}")
            reply: tuple[Any, ...] = ("ok", method(*args))
        except Exception as exc:
            reply = sshwire.encode_error(exc)
        sshwire.send(wfd, reply)


__all__ = ["Bridge", "main"]

if __name__ == "__main__":
    main(sys.argv[1:])
