"""Resource limits of ``spawn(limits=...)``: set in the job, never in the supervisor.

``posix_spawn`` has no rlimit attribute, and a limit cannot be set on ourselves around it
(the supervisor is multi-threaded, and a lowered hard limit can never be raised again).
Setting them with ``prlimit(pid)`` right after ``posix_spawn`` leaves the new program
running unlimited for a moment; ``exec``'ing through a wrapper (``prlimit(1)``, or a
``python -c``) costs one more ``exec`` and hides the job's own "no such program" error.
So a run *with limits* is started by ``fork`` + ``setrlimit`` + ``execve``, the way
``subprocess`` does it in C: the child only calls a handful of system calls before the
exec, and an ``exec`` failure travels back through a close-on-exec pipe. Runs without
limits keep ``posix_spawn`` (faster: ``vfork`` semantics).
"""

from __future__ import annotations

import _signal
import errno
import os

from bgtask._supervisor.launch import RESET_SIGNALS, StartError, resolve_program

#: the names of ``spawn(limits=)`` (``_client.spawn`` checks the same list) -> RLIMIT_*
LIMIT_NAMES = {"cpu": "RLIMIT_CPU", "memory": "RLIMIT_AS", "nofile": "RLIMIT_NOFILE",
               "nproc": "RLIMIT_NPROC", "fsize": "RLIMIT_FSIZE", "core": "RLIMIT_CORE"}


def fork_exec(argv: list[str], env: dict[str, str], r0: int, w1: int, w2: int,
              keep: tuple[int, ...], limits: dict[str, int]) -> int:
    """Start *argv* like ``launch._spawn_path`` does (own process group, pipes on 0/1/2,
    the fds in *keep* inherited), with *limits* as soft and hard limits.

    :raises StartError: ``"exec"`` (no such program...) or ``"limits"`` (a limit the
        kernel refused, e.g. above the supervisor's hard limit).
    """
    import resource

    rlimits = [(getattr(resource, LIMIT_NAMES[k]), v) for k, v in limits.items()]
    paths = resolve_program(argv[0], env)
    err_r, err_w = os.pipe()  # close-on-exec: EOF on success
    try:
        pid = os.fork()
    except BaseException:
        os.close(err_r)
        os.close(err_w)
        raise
    if pid == 0:  # pragma: no cover - the child, until exec
        _child(argv, env, paths, r0, w1, w2, keep, rlimits, err_w)
    os.close(err_w)
    try:
        data = b""
        while True:
            part = os.read(err_r, 64)
            if not part:
                break
            data += part
    finally:
        os.close(err_r)
    if data:
        os.waitpid(pid, 0)
        what, _, num = data.decode().partition(":")
        code = int(num or 0)
        if what == "limits":
            raise StartError("limits", code, f"cannot set the limits: {os.strerror(code)}", None)
        raise StartError("exec", code, os.strerror(code), argv[0])
    return pid


def _child(argv: list[str], env: dict[str, str], paths: list[str], r0: int, w1: int, w2: int,
           keep: tuple[int, ...], rlimits: list[tuple[int, int]], err_w: int) -> None:
    import resource

    where = "exec"
    try:
        os.setpgid(0, 0)
        for sig in RESET_SIGNALS:
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        for fd, target in ((r0, 0), (w1, 1), (w2, 2)):
            os.dup2(fd, target)
        for fd in keep:
            if fd > 2:
                os.set_inheritable(fd, True)
        where = "limits"
        for res, value in rlimits:
            resource.setrlimit(res, (value, value))
        where = "exec"
        error = errno.ENOENT
        for path in paths:
            try:
                os.execve(path, argv, env)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                    error = exc.errno or errno.EIO
                    break
                if error != errno.EACCES:
                    error = exc.errno or errno.EIO
        os.write(err_w, f"{where}:{error}".encode())
    except OSError as exc:
        os.write(err_w, f"{where}:{exc.errno or errno.EIO}".encode())
    except BaseException:
        os.write(err_w, f"{where}:{errno.EINVAL}".encode())
    finally:
        os._exit(127)


__all__ = ["LIMIT_NAMES", "fork_exec"]
