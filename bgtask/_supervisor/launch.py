"""Starting the job: ``posix_spawn`` into its own process group with pipes on 0/1/2, and
taking the per-user lock of ``spawn(lock=...)``. Used by the boot (first run) and by
restarts.

Light on purpose (os, errno, _signal): the boot imports it before it reports.
"""

from __future__ import annotations

import _signal  # not `signal`: it imports enum, and the spawner is waiting
import errno
import os

from bgtask import _paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

#: signals a job must not inherit as ignored (Python ignores SIGPIPE and SIGXFSZ; the
#: supervisor ignores SIGHUP; a caller that ignores SIGCHLD would make the job's own
#: children vanish from its wait()).
RESET_SIGNALS = tuple(
    s for s in (getattr(_signal, n, None) for n in ("SIGPIPE", "SIGXFSZ", "SIGHUP", "SIGINT", "SIGCHLD"))
    if s is not None
)


class StartError(Exception):
    """The job could not be started; ``args`` is the report sent to the spawner."""


# -- the job -----------------------------------------------------------------------------

def resolve_program(argv0: str, env: dict[str, str]) -> list[str]:
    """Candidate paths for *argv0*, searched in the job's ``PATH`` like ``execvpe``."""
    if "/" in argv0:
        return [argv0]
    path = env.get("PATH", os.defpath)
    return [os.path.join(d or ".", argv0) for d in path.split(os.pathsep)]


def launch(argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, int, int, int]:
    """Start the job; returns ``(pid, stdin_w, stdout_r, stderr_r)``.

    The job gets its own process group (so signals reach its children too), pipes on
    0/1/2 and nothing else: every other fd of the supervisor is close-on-exec.

    :raises StartError: with the real reason (bad cwd, no such program, not executable).
    """
    fds: list[int] = []
    try:
        r0, w0 = os.pipe()
        fds += (r0, w0)
        r1, w1 = os.pipe()
        fds += (r1, w1)
        r2, w2 = os.pipe()
        fds += (r2, w2)
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise StartError("cwd", exc.errno, exc.strerror, cwd) from None
        try:
            pid = _spawn_path(argv, env, r0, w1, w2)
        finally:
            os.chdir("/")  # do not keep the job's directory busy
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (r0, w1, w2):
        os.close(fd)
    return pid, w0, r1, r2


def _spawn_path(argv: list[str], env: dict[str, str], r0: int, w1: int, w2: int) -> int:
    actions = [
        (os.POSIX_SPAWN_DUP2, r0, 0),
        (os.POSIX_SPAWN_DUP2, w1, 1),
        (os.POSIX_SPAWN_DUP2, w2, 2),
    ]
    first_error: OSError | None = None
    for path in resolve_program(argv[0], env):
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0,
                                  setsigdef=RESET_SIGNALS, setsigmask=())
        except OSError as exc:
            # Like execvpe: keep looking after ENOENT/ENOTDIR/EACCES, report EACCES
            # (found but not executable) in preference to "not found".
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise StartError("exec", exc.errno, exc.strerror, argv[0]) from None
            if first_error is None or (exc.errno == errno.EACCES and first_error.errno != errno.EACCES):
                first_error = exc
    assert first_error is not None
    raise StartError("exec", first_error.errno, first_error.strerror, argv[0])


def take_lock(pool: str, name: str) -> int:
    """Take the per-user lock *name* without waiting; returns the fd that holds it."""
    import fcntl

    path = _paths.lock_path(pool, os.geteuid(), name)
    try:
        fd = _paths.open_private(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartError("lockfile", exc.errno, exc.strerror, path) from None
    try:
        st = os.fstat(fd)
        if not _paths.is_mine(st):
            raise StartError("lockfile", errno.EACCES, "lock file belongs to another user", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartError("locked", errno.EAGAIN, f"lock {name!r} is held", name) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["RESET_SIGNALS", "StartError", "launch", "resolve_program", "take_lock"]
