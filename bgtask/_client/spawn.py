"""Spawning: ``spawn()``'s options checked one by one into a :class:`JobSpec`, and the
start of a local supervisor.

Every option is checked in the caller, before anything starts: one validator per
option (:data:`_VALIDATORS`), each adding its part to the spec. What depends on where
the pool lives (the environment the job's is added to, the default working directory,
the pool directory the job is told about) comes from the pool's backend, so that a
remote backend builds the same spec.

A local supervisor is started as an isolated interpreter that reads the spec (marshal)
from its stdin and writes length-prefixed marshal reports to its stdout: ``("pid", n)``
as soon as it has forked, then ``("ok", pid)`` once the job was exec'd, or
``("error", kind, ...)``. Reading those reports and turning them into a pid or an
exception is ``reports.py``'s.
"""

from __future__ import annotations

import marshal
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bgtask._client import codec as _codec
from bgtask._client import template as _template
from bgtask._client.reports import collect, outcome, read_stderr, readable
from bgtask._client.reports import read_reports as read_reports  # template.py imports it from here
from bgtask._errors import SpawnError
from bgtask._wire.names import DEFAULT_MAX_BUFFER, DEFAULT_RETAIN_OUTPUT, SUPERVISOR_MARKER

if TYPE_CHECKING:
    from bgtask._client.backend import PoolBackend
    from bgtask._wire.schema import JobSpec

#: how long spawn() waits for a supervisor to report before giving up on it.
SPAWN_TIMEOUT = 30.0
#: how long the fork server may take to say which process took a request (``pid``).
TEMPLATE_FIRST_REPORT = 2.0
_LOCK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,99}\Z")
#: the bgtask package directory (the boot line makes it the path of a bare "bgtask" module).
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The supervisor's command line: an isolated interpreter (-I -S: no site, no user
# paths, no PYTHON* variables) that imports bgtask's supervisor modules without
# bgtask/__init__ (and so without dill and filelock). The module name doubles as the
# "is this a supervisor?" marker that sweeping looks for.
_BOOT = ("import sys;m=type(sys)('bgtask');m.__path__=[sys.argv[1]];sys.modules['bgtask']=m;"
         f"import {SUPERVISOR_MARKER.decode()}.boot as s;s.main(sys.argv[2])")
#: the fork server's command line (``_supervisor/template.py``), on the same principle.
_TEMPLATE_BOOT = _BOOT.replace(".boot as s;s.main(sys.argv[2])", ".template as s;s.main(sys.argv[2])")


# -- options -> JobSpec ----------------------------------------------------------------------


def _no_nul(what: str, value: str) -> None:
    # execve() and chdir() take C strings: a NUL would cut the value short silently in
    # the supervisor (or fail there, after the files were made).
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL characters")


def _check_argv(spec: JobSpec, argv: Any, shell: Any) -> None:
    if not isinstance(shell, bool):
        raise TypeError("shell must be a bool")
    spec["shell"] = shell
    if shell:
        if not isinstance(argv, str):
            raise TypeError("with shell=True, argv must be a str (a shell command line)")
        _no_nul("argv", argv)
        spec["command"] = argv
        spec["argv"] = ["/bin/sh", "-c", argv]
        return
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of str (exec form); pass shell=True to run a "
                        "command line through /bin/sh")
    if not isinstance(argv, Sequence):
        raise TypeError(f"argv must be a list of str, not {type(argv).__name__}")
    args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    if not args:
        raise ValueError("argv must not be empty")
    if args[0] == "":
        # posix_spawn refuses it in the supervisor, after the files were made.
        raise ValueError("argv[0] (the program) must not be an empty string")
    for a in args:
        if not isinstance(a, str):
            raise TypeError(f"argv must be a list of str, found {type(a).__name__} {a!r}")
        _no_nul("argv", a)
    spec["command"] = None
    spec["argv"] = args


def _check_env(env: Any) -> dict[str, str | None]:
    """The caller's changes to the environment (a value of None removes the variable)."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    updates: dict[str, str | None] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise ValueError(f"bad environment variable name {k!r}")
        if v is not None and (not isinstance(v, str) or "\0" in v):
            raise TypeError(f"env value of {k!r} must be a str or None, not {v!r}")
        updates[k] = v
    return updates


def _check_cwd(cwd: Any, default: Callable[[], str]) -> str:
    if cwd is None:
        return default()
    path = os.fspath(cwd)
    if not isinstance(path, str):
        raise TypeError(f"cwd must be a str or an os.PathLike of str, not {type(path).__name__}")
    _no_nul("cwd", path)
    return os.path.abspath(path)


def _check_size(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def _check_on_full(value: Any) -> bool:
    if value not in ("block", "drop"):
        raise ValueError(f"on_full must be 'block' or 'drop', not {value!r}")
    return bool(value == "drop")


def _check_lock(lock: Any) -> str | None:
    if lock is None:
        return None
    if not isinstance(lock, str):
        raise TypeError(f"lock must be a str, not {type(lock).__name__}")
    if not _LOCK_NAME.match(lock):
        raise ValueError(f"bad lock name {lock!r}: use letters, digits and _.@+- (at most 100)")
    return lock


def _check_meta(meta: Any) -> dict[str, bytes]:
    # encode_meta raises TypeError for a non-dict, a non-str key or a value dill refuses.
    return _codec.encode_meta({} if meta is None else dict(meta) if isinstance(meta, Mapping) else meta)


# -- the operations options (API.md, "Operations") ------------------------------------------

#: ``spawn(restart=)``'s policies.
RESTART_POLICIES = ("never", "on-failure", "always")
#: ``spawn(limits=)``'s names (``_supervisor.limits.LIMIT_NAMES`` maps them to RLIMIT_*).
LIMIT_NAMES = ("cpu", "memory", "nofile", "nproc", "fsize", "core")
#: the largest rlimit value (RLIM_INFINITY - 1 on Linux: an unsigned 64-bit number)
_MAX_LIMIT = (1 << 63) - 1


def _check_seconds(name: str, value: Any, *, none_ok: bool, positive: bool = False) -> float | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number of seconds, not {value}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value}")
    return value


def _check_on_exit(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError("on_exit must be a list of str (an argv), not "
                        f"{type(value).__name__}")
    hook = list(value)
    if not hook:
        raise ValueError("on_exit must not be empty")
    for a in hook:
        if not isinstance(a, str):
            raise TypeError(f"on_exit must be a list of str, found {type(a).__name__} {a!r}")
        _no_nul("on_exit", a)
    if hook[0] == "":
        raise ValueError("on_exit[0] (the program) must not be an empty string")
    return hook


def _check_slot(value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError("slot must be a (name, n) pair")
    name, n = value
    if not isinstance(name, str):
        raise TypeError(f"the slot's name must be a str, not {type(name).__name__}")
    if not _LOCK_NAME.match(name):
        raise ValueError(f"bad slot name {name!r}: use letters, digits and _.@+- (at most 100)")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"the slot's n must be an int, not {type(n).__name__}")
    if not 1 <= n <= 4096:
        raise ValueError(f"the slot's n must be between 1 and 4096, not {n}")
    return (name, n)


def _check_limits(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"limits must be a dict, not {type(value).__name__}")
    limits: dict[str, int] = {}
    for k, v in value.items():
        if k not in LIMIT_NAMES:
            raise ValueError(f"unknown limit {k!r}: expected one of {', '.join(LIMIT_NAMES)}")
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"limit {k!r} must be an int, not {type(v).__name__}")
        if not 0 <= v <= _MAX_LIMIT:
            raise ValueError(f"limit {k!r} must be between 0 and {_MAX_LIMIT}, not {v}")
        limits[k] = v
    return limits or None


def _check_operations(spec: JobSpec, timeout: Any, grace: Any, restart: Any, restart_delay: Any,
                      max_restarts: Any, on_exit: Any, slot: Any, limits: Any) -> None:
    """The operations options into *spec*; only those that differ from the default
    travel (a supervisor reads a missing one as its default)."""
    t = _check_seconds("timeout", timeout, none_ok=True, positive=True)
    g = _check_seconds("grace", grace, none_ok=False)
    if restart not in RESTART_POLICIES:
        raise ValueError(f"restart must be one of {', '.join(map(repr, RESTART_POLICIES))}, "
                         f"not {restart!r}")
    d = _check_seconds("restart_delay", restart_delay, none_ok=False)
    if max_restarts is not None:
        _check_size("max_restarts", max_restarts, 0)
    hook, sl, lim = _check_on_exit(on_exit), _check_slot(slot), _check_limits(limits)
    if t is not None:
        spec["timeout"] = t
    if g != 5.0:
        spec["grace"] = g  # type: ignore[typeddict-item]
    if restart != "never":
        spec["restart"] = restart
    if d != 1.0:
        spec["restart_delay"] = d  # type: ignore[typeddict-item]
    if max_restarts is not None:
        spec["max_restarts"] = max_restarts
    if hook is not None:
        spec["on_exit"] = hook
    if sl is not None:
        spec["slot"] = sl
    if lim is not None:
        spec["limits"] = lim


def build_spec(backend: PoolBackend, argv: Any, *, env: Any = None, cwd: Any = None, meta: Any = None,
               retain_output: Any = DEFAULT_RETAIN_OUTPUT, max_buffer: Any = DEFAULT_MAX_BUFFER,
               on_full: Any = "block", shell: Any = False, lock: Any = None, timeout: Any = None,
               grace: Any = 5.0, restart: Any = "never", restart_delay: Any = 1.0,
               max_restarts: Any = None, on_exit: Any = None, slot: Any = None,
               limits: Any = None) -> JobSpec:
    """Check ``spawn()``'s options and build the spec a supervisor of *backend* runs.

    :raises TypeError: an option of the wrong type, or a meta value dill cannot serialize.
    :raises ValueError: a bad value (empty argv, NUL characters, a negative size, ...).
    :raises SpawnError: ``cwd=None`` and the current directory was deleted.
    """
    spec: JobSpec = {}
    _check_argv(spec, argv, shell)
    updates = _check_env(env)
    spec["cwd"] = _check_cwd(cwd, backend.default_cwd)
    spec["retain"] = _check_size("retain_output", retain_output, 0)
    spec["max_buffer"] = _check_size("max_buffer", max_buffer, 1)
    spec["drop"] = _check_on_full(on_full)
    spec["lock"] = _check_lock(lock)
    _check_operations(spec, timeout, grace, restart, restart_delay, max_restarts, on_exit, slot, limits)
    spec["meta"] = _check_meta(meta)
    spec["env"] = backend.job_env(updates)
    return spec


# -- a local supervisor ----------------------------------------------------------------------


def start_supervisor(pool: str, spec: JobSpec) -> int | None:
    """Start one supervisor for *spec* in local pool directory *pool*.

    :returns: its pid once the job runs; None on a name collision (files of another
        user hold the name of the pid it got: the caller tries again).
    :raises SpawnError: the job could not be started (the supervisor's own reason).
    :raises TaskLockedError: its lock is held.
    """
    exe = sys.executable
    if not exe:
        raise SpawnError("cannot start a supervisor: sys.executable is unknown")
    data = marshal.dumps(dict(spec))  # a TypedDict is a plain dict: marshal-able
    if _template.enabled():
        # Forked from the pool's template: ~1 ms and shared pages, instead of an
        # interpreter's start and imports (~20 ms of CPU, 7 MB) per supervisor.
        conn = _template.request(pool, data, exe, _PKG_DIR, _TEMPLATE_BOOT)
        if conn is not None:
            with conn:
                # A spare reports its pid within a millisecond or so; silence means a
                # stopped (or hung) fork server: give up on it -- closing the connection
                # makes whatever reads the request later start nothing -- and start fresh.
                forked_pid, forked_final = collect(conn.fileno(), SPAWN_TIMEOUT, TEMPLATE_FIRST_REPORT)
                if forked_pid is None and forked_final is None and not readable(conn.fileno(), 0):
                    _template.shun(conn)  # silent, not gone: stopped or hung
            if forked_pid is not None or forked_final is not None:
                return outcome(pool, forked_pid, forked_final, b"")
            # Nothing reported: the template died before it took our request (killed
            # mid-spawn), or is silent. Nothing was started: a fresh interpreter may
            # start the job.
    # The supervisor's own environment (the job gets spec["env"] explicitly): glibc
    # gives the memory of a burst back (see _template.MALLOC_ENV).
    env = dict(spec["env"], **_template.MALLOC_ENV)
    try:
        proc = subprocess.Popen(
            [exe, "-I", "-S", "-c", _BOOT, _PKG_DIR, pool],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True, cwd="/", env=env,
        )
    except OSError as exc:
        raise SpawnError(f"cannot start a supervisor ({exe}): {exc.strerror}", exc.errno, exe) from None
    pid = None
    final: tuple[Any, ...] | None = None
    err = b""
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        pid, final = collect(proc.stdout.fileno(), SPAWN_TIMEOUT)
        if final is None:
            # Giving up: say so at once (the supervisor sees its report pipe closed and
            # starts nothing), before waiting for what it may have said on stderr.
            proc.stdout.close()
            err = read_stderr(proc.stderr.fileno())
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        proc.wait()  # the intermediate exits right after its fork
    return outcome(pool, pid, final, err)


__all__ = ["DEFAULT_MAX_BUFFER", "DEFAULT_RETAIN_OUTPUT", "LIMIT_NAMES", "RESTART_POLICIES",
           "SPAWN_TIMEOUT", "build_spec", "start_supervisor"]
