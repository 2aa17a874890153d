"""The remote pool backend: ``TaskPool("ssh://[user@]host[:port][/path][?python=PATH]")``.

Two kinds of traffic, each on the channel that suits it (see the measurements in
BENCHMARKS.rst, "Remote pools"):

* pool-level operations (find, spawn, sweep, wait for a supervisor to exit, read a
  token) go to a bridge (:mod:`bgtask._bridge`) on the far side, one ssh *session* per
  client process and host, started on first need and kept: each operation is then one
  round trip over a live channel, not a new remote interpreter (~30 ms);
* a task's own traffic goes straight to its supervisor's Unix socket through an ssh
  *forward* of the shared master: bgtask's wire protocol runs unchanged and end to end
  (the client authenticates with the token as it does locally), nothing relays it in
  Python, and forwards do not count against the server's ``MaxSessions``.

The token travels inside ssh only (bridge -> client) and stays in memory; the supervisor's
socket stays 0600 on its host; the local end of a forward is 0600 in an owner-only
directory (:mod:`bgtask._client.sshmux`).
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bgtask import _paths
from bgtask._client import sshmux, sshwire
from bgtask._client.connection import authenticate
from bgtask._errors import HostUnreachableError, TaskNotFoundError
from bgtask._wire.framing import Connection, set_timeouts
from bgtask._wire.names import CONNECT_TIMEOUT

if TYPE_CHECKING:
    from bgtask._client.sweep import SweepReport
    from bgtask._wire.schema import JobSpec

DEFAULT_PYTHON = "python3"
# Registers a bare ``bgtask`` package (no __init__: no dill, no filelock) and runs the
# bridge; a missing bgtask says so on stderr with a marker the client recognizes.
_BOOT = ("import sys,importlib.util as u\n"
         "if sys.path and sys.path[0]=='':del sys.path[0]\n"
         "s=u.find_spec('bgtask')\n"
         "if s is None:sys.stderr.write('bgtask-not-installed\\n');sys.exit(3)\n"
         "m=type(sys)('bgtask');m.__path__=list(s.submodule_search_locations);sys.modules['bgtask']=m\n"
         "import bgtask._bridge as b;b.main(sys.argv[1:])")
_URL = re.compile(r"ssh://(?:(?P<user>[^@/?#]+)@)?(?P<host>\[[^\]]+\]|[^:/?#\[\]]+)"
                  r"(?::(?P<port>\d*))?(?P<path>/[^?#]*)?(?:\?(?P<query>[^#]*))?\Z")


def is_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith("ssh://")


def parse_url(url: str, remote_python: str | None = None) -> SshBackend:
    """:raises ValueError: not a valid ``ssh://`` pool URL."""
    m = _URL.match(url)
    if not m:
        raise ValueError(f"bad pool URL {url!r}: use ssh://[user@]host[:port][/path][?python=PATH]")
    user = urllib.parse.unquote(m["user"]) if m["user"] else None
    host = m["host"].strip("[]")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in pool URL {url!r}")
    path = urllib.parse.unquote(m["path"]) if m["path"] and m["path"] != "/" else None
    query = urllib.parse.parse_qs(m["query"] or "", keep_blank_values=True)
    unknown = set(query) - {"python"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} in pool URL {url!r} (only python=)")
    if "python" in query:
        if remote_python is not None and remote_python != query["python"][-1]:
            raise ValueError("the pool URL's ?python= and remote_python= disagree")
        remote_python = query["python"][-1]
    if remote_python is not None and (not isinstance(remote_python, str) or not remote_python.strip()):
        raise ValueError("remote_python must name an interpreter (a path or a command)")
    if path is not None:
        path = posixpath.normpath(path)
        _paths.check_pool_path(path)
    return SshBackend(sshmux.Target(user, host, port), path, remote_python or DEFAULT_PYTHON,
                      m["host"])


class _BridgeClient:
    """One bridge session: requests one at a time (a lock), each one round trip."""

    def __init__(self, target: sshmux.Target, command: str) -> None:
        self.session = sshmux.Session(target, command)
        self.reader = sshwire.Reader(self.session.stdout)
        self.lock = threading.Lock()
        self.owner = os.getpid()

    def call(self, op: str, *args: Any) -> Any:
        with self.lock:
            sshwire.send(self.session.stdin, (op, args))
            return self.reader.recv()

    def stderr_text(self) -> str:
        import select

        if select.select([self.session.stderr], [], [], 1.0)[0]:
            return os.read(self.session.stderr, 65536).decode(errors="replace")
        return ""


class SshBackend:
    """A pool on another host, reached with the system ssh (see the module docstring)."""

    def __init__(self, target: sshmux.Target, path: str | None, python: str, host_text: str) -> None:
        self.target = target
        self.remote_path = path
        self.python = python
        #: the host as written in the URL (the CLI's HOST column).
        self.host = host_text
        self._bridge: _BridgeClient | None = None
        self._hello: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._tokens: dict[int, tuple[bytes, str]] = {}

    def __str__(self) -> str:
        who = f"{urllib.parse.quote(self.target.user, safe='')}@" if self.target.user else ""
        port = f":{self.target.port}" if self.target.port else ""
        query = "" if self.python == DEFAULT_PYTHON else "?python=" + urllib.parse.quote(self.python, safe="/")
        return f"ssh://{who}{self.host}{port}{self.remote_path or ''}{query}"

    def __repr__(self) -> str:
        return f"SshBackend({str(self)!r})"

    @property
    def directory(self) -> str:
        """The pool directory on the far side (asks the host if the URL named none)."""
        return self.remote_path or str(self._hello_info()["pool"])

    # -- the bridge --------------------------------------------------------------------------

    def _start_bridge(self) -> _BridgeClient:
        sshmux.ensure_master(self.target)
        cmd = (f"exec {shlex.quote(self.python)} -c {shlex.quote(_BOOT)} "
               f"{shlex.quote(self.remote_path or '')}")
        try:
            bridge = _BridgeClient(self.target, cmd)
        except sshmux.MuxError as exc:
            raise HostUnreachableError(f"cannot run the bgtask bridge on {self.target}: the ssh "
                                       f"master refused a session ({exc}); raise the server's "
                                       "MaxSessions or close other sessions", self.target.host) from None
        try:
            first = bridge.reader.recv()
        except EOFError:
            text = bridge.stderr_text()
            bridge.session.close()
            if "bgtask-not-installed" in text or "not found" in text or "No such file" in text:
                raise HostUnreachableError(
                    f"bgtask is not installed for {self.python} on {self.target.host} "
                    f"({sshmux.ssh_reason(text)}): install it there (pip install bgtask), or name "
                    "an interpreter that has it: TaskPool(url, remote_python=PATH) or "
                    "ssh://...?python=PATH", self.target.host) from None
            raise HostUnreachableError(f"the bgtask bridge on {self.target} failed: "
                                       f"{sshmux.ssh_reason(text)}", self.target.host) from None
        if first[0] == "err":
            bridge.session.close()
            raise sshwire.decode_error(first[1], first[2], first[3], str(self.target.host))
        hello = first[1]
        if hello.get("version") != sshwire.BRIDGE_VERSION:
            bridge.session.close()
            raise HostUnreachableError(f"the bgtask on {self.target.host} speaks bridge version "
                                       f"{hello.get('version')}, this one {sshwire.BRIDGE_VERSION}: "
                                       "install the same bgtask version on both hosts", self.target.host)
        self._hello = hello
        return bridge

    def _hello_info(self) -> dict[str, Any]:
        if not self._hello:
            self._call("ping")
        return self._hello

    def _call(self, op: str, *args: Any, retry: bool = True) -> Any:
        """One bridge operation; a bridge that died (the master was killed, the network
        dropped) is started again once for an operation that is safe to repeat."""
        for attempt in (0, 1):
            with self._lock:
                bridge = self._bridge
                if bridge is None or bridge.owner != os.getpid():
                    # After fork: the parent's session is not ours to interleave on.
                    bridge = self._bridge = self._start_bridge()
            try:
                reply = bridge.call(op, *args)
            except (EOFError, OSError) as exc:
                with self._lock:
                    if self._bridge is bridge:
                        self._bridge = None
                if bridge.owner == os.getpid():
                    bridge.session.close()
                if attempt or not retry:
                    raise HostUnreachableError(f"lost the connection to {self.target.host} "
                                               f"during {op} ({exc})", self.target.host) from None
                continue
            if reply[0] == "ok":
                return reply[1]
            raise sshwire.decode_error(reply[1], reply[2], reply[3], str(self.target.host))
        raise AssertionError("unreachable")

    # -- PoolBackend -------------------------------------------------------------------------

    def check(self) -> None:
        pass  # TaskPool(url) does not connect: the first call that needs the host does

    def pids(self, sweep: bool = True) -> list[int]:
        pids, tokens = self._call("pids", sweep)
        self._tokens.update(tokens)
        return list(pids)

    def connect(self, pid: int) -> Connection:
        found = self._tokens.pop(pid, None)
        if found is None:
            found = self._call("token", pid)
        token, remote_sock = found
        try:
            return self._open(pid, token, remote_sock)
        except TaskNotFoundError:
            report = self.sweep(pid)
            if report is None:
                raise
        raise TaskNotFoundError(f"task {pid} is gone: its supervisor died (killed?)", pid)

    def _open(self, pid: int, token: bytes, remote_sock: str) -> Connection:
        import _socket

        local = sshmux.forward_path(self.target, remote_sock)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        since = time.time()
        for attempt in range(3):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                set_timeouts(sock, CONNECT_TIMEOUT)
                sock.connect(local)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if attempt == 2:
                    raise HostUnreachableError(f"cannot forward task {pid}'s socket from "
                                               f"{self.target.host}", self.target.host) from None
                # No forward yet, or its master is gone (the stale socket refuses).
                sshmux.ensure_master(self.target)
                try:
                    sshmux.open_forward(self.target, local, remote_sock)
                except (sshmux.MuxError, EOFError) as exc:
                    raise HostUnreachableError(f"{self.target.host} refused to forward task {pid}'s "
                                               f"socket: {exc}", self.target.host) from None
            except BaseException:
                sock.close()
                raise
        conn = _Forwarded(sock.detach())
        conn.target = self.target
        # No /proc probe: the supervisor's pid is not a process of this host.
        authenticate(conn, token, pid, deadline, since, probe=False)
        return conn

    def records(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        return dict(self._call("records", list(pids)))

    def unresponsive_info(self, pid: int, since: float | None) -> dict[str, Any]:
        return dict(self._call("unresponsive_info", pid, since))

    def sweep(self, pid: int) -> SweepReport | None:
        from bgtask._client.sweep import SweepReport

        report = self._call("sweep", pid)
        return None if report is None else SweepReport(*report)

    def job_env(self, updates: Mapping[str, str | None]) -> dict[str, str]:
        # The remote login's environment, not the caller's: PATH, HOME and the rest are
        # the far side's. Only the updates travel.
        env = dict(self._hello_info()["env"])
        for k, v in updates.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env["BGTASK_POOL"] = self.directory
        env.pop("BGTASK_PID", None)
        return env

    def default_cwd(self) -> str:
        return str(self._hello_info()["home"])

    def spawn(self, spec: JobSpec) -> int:
        # Not repeated if the connection drops mid-way: the job may have started.
        return int(self._call("spawn", dict(spec), retry=False))

    def start_time(self, pid: int) -> int | None:
        start = self._call("start_time", pid)
        return None if start is None else int(start)

    def wait_gone(self, pid: int, start: int | None, timeout: float) -> bool:
        gone = bool(self._call("wait_gone", pid, start, timeout))
        if gone:  # its forward leads nowhere now: free the master's listener
            sock = _paths.sock_path(self.directory, pid)
            sshmux.close_forward(self.target, sshmux.forward_path(self.target, sock), sock)
        return gone

    def close(self) -> None:
        """End this process's bridge session (the master stays, for other processes)."""
        with self._lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None and bridge.owner == os.getpid():
            bridge.session.close()


class _Forwarded(Connection):
    """A connection through an ssh forward: a transport that drops because the ssh
    connection did (the master is gone) raises :class:`HostUnreachableError`, not the
    "supervisor vanished" a local EOF means, so that ``follow()`` reconnects and reads
    on from its offset instead of reporting the task gone."""

    target: sshmux.Target

    def recv(self) -> Any:
        try:
            return super().recv()
        except (EOFError, ConnectionError) as exc:
            raise self._why(exc) from None

    def send_parts(self, parts: list[Any]) -> None:
        try:
            super().send_parts(parts)
        except ConnectionError as exc:
            raise self._why(exc) from None

    def _why(self, exc: BaseException) -> BaseException:
        if sshmux.master_alive(self.target):
            return exc  # ssh is fine: the supervisor itself hung up
        return HostUnreachableError(f"lost the ssh connection to {self.target.host} ({exc!r})",
                                    self.target.host)


__all__ = ["DEFAULT_PYTHON", "SshBackend", "is_url", "parse_url"]
