"""Process facts and signals, for both sides (stdlib only, light enough for the
supervisor's fast path: ``os`` and ``time`` only).

* /proc readers: :func:`proc_stat`, :func:`proc_start_time`, :func:`proc_state`,
  :func:`proc_cmdline_has`, :func:`group_members`, :func:`processes_with_environ`;
* signals: :func:`killpg` (a group that is already gone is not an error) and
  :func:`escalate` / :func:`terminate_group`, the one TERM -> CONT -> wait -> KILL escalation that
  ``delete``, timeouts, restarts and the sweeping of orphans all use.

Whoever calls these owns the pid: a pid is only signalled while the caller can prove it
is still the process it means (its unreaped child, or a recorded start time).
"""

from __future__ import annotations

import errno
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: SIGTERM, SIGCONT, SIGKILL (numbers, so that this module does not import ``signal``,
#: which imports ``enum``: the supervisor's fast path is waiting).
SIGTERM, SIGCONT, SIGKILL = 15, 18, 9


def proc_stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after ``comm`` (state first), or [] if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return []
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """The start time of *pid* in clock ticks since boot (Linux), or None."""
    fields = proc_stat(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    """The one-letter state of *pid* from /proc (``Z`` for a zombie), or None if gone."""
    fields = proc_stat(pid)
    return fields[0].decode() if fields else None


def is_gone(pid: int) -> bool:
    """*pid* has exited (gone, or a zombie nobody reaped yet)."""
    return proc_state(pid) in (None, "Z")


def proc_cmdline_has(pid: int, marker: bytes) -> bool:
    """Does the command line of *pid* contain *marker*?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Does process group *pgid* exist (zombies included)?"""
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) members of process group *pgid*.

    Orphans' zombies wait for init, which may be slow to reap them: they must not count.
    """
    if not group_alive(pgid):
        return []
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            members.append(int(name))
    return members


def killpg(pgid: int, sig: int) -> bool:
    """Send *sig* to process group *pgid*; False if the group is gone.

    :raises ValueError: *sig* is not a valid signal number.
    """
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise ValueError(f"invalid signal number {sig}") from None
        raise
    return True


def processes_with_environ(needles: tuple[bytes, ...], uid: int) -> dict[int, int | None]:
    """Processes of *uid* (not this one) whose environment holds every entry of
    *needles* (``b"NAME=value"``, compared whole): ``{pid: start time}``.

    The start time lets a caller that signals them later prove each pid is still the
    process it found, not a reused pid.
    """
    me = os.getpid()
    found: dict[int, int | None] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if all(n in env for n in needles):
            found[int(name)] = proc_start_time(int(name))
    return found


def escalate(send: Callable[[int], None], timeout: float, alive: Callable[[], bool],
             kill_wait: float = 10.0) -> bool:
    """``send`` TERM and CONT, wait up to *timeout* s for ``alive()`` to turn false,
    then ``send`` KILL and wait up to *kill_wait* s more. Returns True if it had to KILL.

    The one escalation; :func:`terminate_group` aims it at a process group, a sweeper
    at the processes it found by their environment.
    """
    for sig in (SIGTERM, SIGCONT):
        send(sig)
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not alive():
        return False
    send(SIGKILL)
    deadline = time.monotonic() + kill_wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def terminate_group(pgid: int, timeout: float, alive: Callable[[], bool],
                    also: Callable[[int], None] | None = None, kill_wait: float = 10.0) -> bool:
    """TERM and CONT to group *pgid*, wait up to *timeout* s for ``alive()`` to turn
    false, then KILL and wait up to *kill_wait* s more. Returns True if it had to KILL.

    The one escalation of bgtask: ``delete``, run timeouts, a restart of a running job,
    the sweeping of an orphaned job. CONT after TERM because a stopped (paused) process
    does not act on TERM until it runs again. *also*, if given, is called with each
    signal sent (to signal processes outside the group, such as a job that moved to
    another group, which the caller has proven to be its own). *alive* is the caller's
    own test: for the supervisor "my child is not reaped yet, or its group has members",
    for a sweeper "the recorded start time still matches".
    """
    def send(sig: int) -> None:
        killpg(pgid, sig)
        if also is not None:
            also(sig)

    return escalate(send, timeout, alive, kill_wait)


__all__ = [
    "SIGCONT",
    "SIGKILL",
    "SIGTERM",
    "escalate",
    "group_alive",
    "group_members",
    "is_gone",
    "killpg",
    "proc_cmdline_has",
    "processes_with_environ",
    "proc_start_time",
    "proc_state",
    "proc_stat",
    "terminate_group",
]
