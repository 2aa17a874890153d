"""The ssh transport of remote pools: the system ``ssh`` client, one multiplexed master
per (user, host, port), and OpenSSH's mux protocol spoken directly to that master.

Why the system ``ssh``: the user's config, keys, agent, ProxyJump and known_hosts apply
as they do for every other tool (the libraries that re-implement SSH are where podman's
and paramiko's users' bugs come from). Why one master: a full login costs ~260 ms on
loopback and seconds over a WAN; a channel over a live master costs ~0.3 ms.

Why the mux protocol (``PROTOCOL.mux`` in OpenSSH) instead of ``ssh -S path host cmd``
and ``ssh -O forward``: starting a local ``ssh`` per operation costs ~3-5 ms, and a mux
client whose session is refused (``MaxSessions``) prints "disabling multiplexing" and
*silently* logs in afresh. Spoken from here, a refused session is a clear error, and a
forward or a session costs one local round trip to the master.

Files: everything lives in one owner-only (0700) runtime directory, ``$BGTASK_SSH_DIR``
or ``$XDG_RUNTIME_DIR/bgtask-ssh`` or ``<tmp>/bgtask-ssh-<uid>``: the masters' control
sockets (short hashed names: long host names must not overflow ``sun_path``, the
Ansible bug) and the local ends of forwards (0600, ssh's ``StreamLocalBindMask``).

Settings: ``$BGTASK_SSH`` is the ssh command (default ``ssh``; split like a shell
would), ``$BGTASK_SSH_CONFIG`` a config file passed as ``-F``.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import hashlib
import os
import shlex
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple

from bgtask._errors import AccessDeniedError, HostUnreachableError

#: ssh's ConnectTimeout: an unreachable host is reported within about this long.
CONNECT_TIMEOUT = 8
#: how long an idle master stays up after its last use (ssh's ControlPersist).
PERSIST = 300

_HELLO = 0x00000001
_NEW_SESSION = 0x10000002
_ALIVE_CHECK = 0x10000004
_TERMINATE = 0x10000005
_OPEN_FWD = 0x10000006
_CLOSE_FWD = 0x10000007
_S_OK = 0x80000001
_S_DENIED = 0x80000002
_S_FAILURE = 0x80000003
_S_EXIT = 0x80000004
_S_ALIVE = 0x80000005
_S_SESSION_OPENED = 0x80000006
_FWD_LOCAL = 1
_PORT_STREAMLOCAL = 0xFFFFFFFE  # -2 as uint32: "the address is a Unix socket path"
_NO_ESCAPE = 0xFFFFFFFF


class Target(NamedTuple):
    """Where to log in: ssh's ``[user@]host`` and port (None: the config's)."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        who = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{who}{host}" + (f":{self.port}" if self.port else "")


class MuxError(OSError):
    """The master refused a request (the message is its own)."""


def runtime_dir() -> str:
    """The owner-only directory for control sockets and forwards, created if missing.

    :raises AccessDeniedError: it exists but is not ours, or is open to others.
    """
    path = os.environ.get("BGTASK_SSH_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
            path = os.path.join(xdg, "bgtask-ssh")
        else:
            path = os.path.join(tempfile.gettempdir(), f"bgtask-ssh-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    # In /tmp the directory could have been planted: the sockets in it carry our logins.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise AccessDeniedError(f"ssh runtime directory {path} must be a directory of yours "
                                "with mode 0700")
    return path


def ssh_command() -> list[str]:
    """The ssh client and the options every use shares (config file, no prompts)."""
    argv = shlex.split(os.environ.get("BGTASK_SSH") or "ssh")
    config = os.environ.get("BGTASK_SSH_CONFIG")
    if config:
        argv += ["-F", config]
    # BatchMode: a password, passphrase or unknown host key fails instead of prompting
    # (a prompt would hang a web worker or a cron job forever).
    return argv + ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]


def _key(target: Target) -> str:
    # ssh's %C hashes (local host, host, port, user); ours adds the config, which can
    # change what "host" means. 16 hex digits: short enough for any sun_path.
    raw = "\0".join([str(target), os.environ.get("BGTASK_SSH_CONFIG", ""),
                     os.environ.get("BGTASK_SSH", "")])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def control_path(target: Target) -> str:
    return os.path.join(runtime_dir(), f"{_key(target)}.ctl")


def forward_path(target: Target, remote_path: str) -> str:
    """The local end of the forward of *remote_path* over *target*'s master (shared by
    all of the caller's processes)."""
    h = hashlib.sha256(remote_path.encode()).hexdigest()[:12]
    return os.path.join(runtime_dir(), f"{_key(target)}-{h}.sock")


def _target_args(target: Target) -> list[str]:
    args = []
    if target.user:
        args += ["-l", target.user]
    if target.port:
        args += ["-p", str(target.port)]
    return args + ["--", target.host]


# -- the master ------------------------------------------------------------------------------


def master_alive(target: Target) -> bool:
    """Does a master answer on *target*'s control socket?"""
    try:
        with _MuxSocket(control_path(target)) as mux:
            mux.request(_ALIVE_CHECK, b"", expect=_S_ALIVE)
        return True
    except (OSError, EOFError):
        return False


@contextlib.contextmanager
def _lock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_master(target: Target) -> str:
    """Start *target*'s master unless one runs; return its control socket path.

    One master per target for all of the caller's processes: a lock file serializes
    the start, so two processes never both log in (the loser's master would fail to
    bind the control socket and linger as a plain, unshared connection).

    :raises HostUnreachableError: ssh could not connect or log in (its own reason).
    """
    ctl = control_path(target)
    if master_alive(target):
        return ctl
    with _lock(ctl[: -len(".ctl")] + ".lock"):
        if master_alive(target):
            return ctl
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ctl)  # a dead master's socket: ssh would refuse to bind over it
        argv = [*ssh_command(), "-o", "ControlMaster=yes", "-o", f"ControlPath={ctl}",
                "-o", f"ControlPersist={PERSIST}", "-o", "StreamLocalBindUnlink=yes",
                "-o", "ServerAliveInterval=15", "-o", "ExitOnForwardFailure=no",
                "-f", "-N", "-T", *_target_args(target)]
        # The master's stdio is /dev/null and a file, never our pipes: a ControlPersist
        # master keeps what it inherited open for its whole life, and a reader waiting
        # for EOF on such a pipe would wait minutes (OpenSSH bug 1988).
        with tempfile.TemporaryFile(dir=runtime_dir()) as err:
            try:
                # Without BGTASK_PID/POOL: a master started from inside a job must not
                # pass for one of the job's processes (a sweep stops those by environment).
                env = {k: v for k, v in os.environ.items() if k not in ("BGTASK_PID", "BGTASK_POOL")}
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=err, close_fds=True, start_new_session=True, env=env,
                                      timeout=CONNECT_TIMEOUT * 3 + 10)
            except FileNotFoundError:
                raise HostUnreachableError(f"cannot reach {target.host}: no ssh client "
                                           f"({argv[0]}) is installed", target.host) from None
            except subprocess.TimeoutExpired:
                raise HostUnreachableError(f"cannot reach {target.host}: ssh did not log in "
                                           "in time", target.host) from None
            err.seek(0)
            text = err.read().decode(errors="replace")
        if proc.returncode != 0:
            raise HostUnreachableError(f"cannot reach {target}: {ssh_reason(text)}", target.host)
        deadline = time.monotonic() + 5.0
        while not master_alive(target):  # -f returns once logged in; the socket follows
            if time.monotonic() > deadline:
                raise HostUnreachableError(f"cannot reach {target}: the ssh master did not "
                                           f"start ({ssh_reason(text)})", target.host)
            time.sleep(0.005)
    return ctl


def ssh_reason(text: str) -> str:
    """ssh's own reason from its stderr: the last meaningful line."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith(("Warning: Permanently added", "debug"))]
    if not lines:
        return "ssh failed without saying why"
    reason = lines[-1]
    if any("Host key verification failed" in ln for ln in lines):
        reason = ("Host key verification failed (the host is not in known_hosts, or its key "
                  "changed; add it with ssh-keyscan or one interactive ssh)")
    return reason


def stop_master(target: Target) -> None:
    """Ask *target*'s master (if any) to exit."""
    with contextlib.suppress(OSError, EOFError), _MuxSocket(control_path(target)) as mux:
        mux.request(_TERMINATE, b"", expect=_S_OK)


# -- the mux protocol ------------------------------------------------------------------------


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


class _MuxSocket:
    """One connection to a master's control socket (``PROTOCOL.mux``, version 4)."""

    def __init__(self, path: str) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(10.0)
            self.sock.connect(path)
            self._send(struct.pack(">II", _HELLO, 4))
            kind, _ = self._recv()
            if kind != _HELLO:
                raise MuxError("the ssh master did not say hello")
        except BaseException:
            self.sock.close()
            raise
        self._rid = 0

    def __enter__(self) -> _MuxSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _send(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise EOFError("the ssh master closed the control connection")
            buf += part
        return buf

    def _recv(self) -> tuple[int, bytes]:
        (n,) = struct.unpack(">I", self._recv_exact(4))
        body = self._recv_exact(n)
        return struct.unpack(">I", body[:4])[0], body[4:]

    def request(self, kind: int, payload: bytes, expect: int) -> bytes:
        """Send one request; return the reply's payload after its request id."""
        self._rid += 1
        self._send(struct.pack(">II", kind, self._rid) + payload)
        return self._reply(expect)

    def _reply(self, expect: int) -> bytes:
        kind, body = self._recv()
        if kind in (_S_FAILURE, _S_DENIED):
            (n,) = struct.unpack(">I", body[4:8])
            raise MuxError(body[8 : 8 + n].decode(errors="replace"))
        if kind != expect:
            raise MuxError(f"unexpected answer {kind:#x} from the ssh master")
        return body[4:]


def open_forward(target: Target, local: str, remote: str) -> None:
    """Forward local Unix socket *local* to *remote* on the far side, through the master
    (``ssh -O forward -L local:remote``; a forward that exists is accepted as is).

    :raises MuxError: the master refused.
    """
    fwd = (struct.pack(">I", _FWD_LOCAL) + _string(local) + struct.pack(">I", _PORT_STREAMLOCAL)
           + _string(remote) + struct.pack(">I", _PORT_STREAMLOCAL))
    with _MuxSocket(control_path(target)) as mux:
        mux.request(_OPEN_FWD, fwd, expect=_S_OK)


def close_forward(target: Target, local: str, remote: str) -> None:
    """Cancel a forward made by :func:`open_forward` (errors ignored: best effort)."""
    fwd = (struct.pack(">I", _FWD_LOCAL) + _string(local) + struct.pack(">I", _PORT_STREAMLOCAL)
           + _string(remote) + struct.pack(">I", _PORT_STREAMLOCAL))
    with contextlib.suppress(OSError, EOFError), _MuxSocket(control_path(target)) as mux:
        mux.request(_CLOSE_FWD, fwd, expect=_S_OK)
    with contextlib.suppress(OSError):
        os.unlink(local)


class Session:
    """A remote command run on a new session channel of the master, its stdin and
    stdout as pipes of ours (``ssh -S ctl host command``, without the local ssh).

    :raises MuxError: the master refused the session (e.g. ``MaxSessions`` reached):
        never a silent fresh login.
    """

    def __init__(self, target: Target, command: str) -> None:
        self._mux = _MuxSocket(control_path(target))
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            body = (_string("") + struct.pack(">IIIII", 0, 0, 0, 0, _NO_ESCAPE)
                    + _string(os.environ.get("TERM", "dumb")) + _string(command))
            self._mux._rid += 1
            self._mux._send(struct.pack(">II", _NEW_SESSION, self._mux._rid) + body)
            for fd in (in_r, out_w, err_w):  # the session's stdin, stdout, stderr
                self._mux.sock.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                                    struct.pack("i", fd))])
            self._mux._reply(_S_SESSION_OPENED)
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            self._mux.sock.close()
            raise
        finally:
            for fd in (in_r, out_w, err_w):  # the master has its own copies now
                os.close(fd)
        self.stdin, self.stdout, self.stderr = in_w, out_r, err_r

    def close(self) -> None:
        """Close our ends (the remote command sees EOF on its stdin and exits)."""
        for fd in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stdin = self.stdout = self.stderr = -1
        self._mux.sock.close()

    def exit_status(self, timeout: float) -> int | None:
        """The command's exit status, once the master reports it (None: not yet)."""
        self._mux.sock.settimeout(timeout)
        try:
            kind, body = self._mux._recv()
        except (OSError, EOFError):
            return None
        if kind == _S_EXIT:
            return int(struct.unpack(">I", body[4:8])[0])
        return None


__all__ = ["CONNECT_TIMEOUT", "MuxError", "Session", "Target", "close_forward", "control_path",
           "ensure_master", "forward_path", "master_alive", "open_forward", "runtime_dir",
           "ssh_command", "ssh_reason", "stop_master"]
