"""Single values of an info dict in words: the state (one wording for reprs, ``ls``,
``info`` and the web view), its colour, the command, the name, sizes, durations and times.
"""

from __future__ import annotations

import math
import time

from bgtask._format.text import printable, safe_repr
from bgtask._wire.names import OUTPUT_STREAMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ANSI colours of the STATE column, by the state's first word (anything else: plain).
STATE_COLOURS = {
    "running": "32",  # green
    "queued": "33", "paused": "33", "stopping": "33", "backoff": "33",  # yellow: waiting
    "killed": "31", "failed": "31", "unresponsive": "31", "timed": "31", "died": "31",  # red
}


def colour_state(text: str, cell: str | None = None) -> str:
    """*cell* (default: *text*) in the colour of state *text*: ``exited 0`` plain,
    another exit status red, running green, waiting states yellow."""
    cell = text if cell is None else cell
    word, _, rest = text.partition(" ")
    code = STATE_COLOURS.get(word)
    if word == "exited":
        code = None if rest.strip() in ("", "0") else "31"
    return f"\x1b[{code}m{cell}\x1b[0m" if code else cell


def signal_name(num: int) -> str:
    """9 -> ``SIGKILL``; an unknown number -> ``signal 99``."""
    try:
        import signal

        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def status_text(info: dict[str, Any]) -> str:
    """Where a job stands, in the one wording of reprs, ``ls`` and ``info``: ``running``,
    ``paused``, ``queued``, ``stopping``, ``backoff``, ``unresponsive``, ``exited 3``,
    ``killed SIGTERM``, ``timed out SIGTERM``.

    A supervisor that reports a ``state`` is believed for the states the ``status``
    flags cannot tell; an older one (no ``state``) is read from ``status`` alone.
    """
    state = info.get("state")
    at = info.get("next_restart_at")
    if state == "backoff" and isinstance(at, (int, float)):
        # when the automatic restart is due: "backoff 2.5s"
        return f"backoff {max(0.0, at - time.time()):.1f}s"
    if state in ("queued", "stopping", "backoff", "unresponsive"):
        return str(state)
    st = info.get("status") or {}
    if st.get("paused"):
        return "paused"
    if st.get("running"):
        return "running"
    if st.get("signal") is not None:
        how = "timed out" if st.get("timed_out") else "killed"
        return f"{how} {signal_name(st['signal'])}"
    return f"exited {st.get('exit_code')}"


def task_title(task_pid: int, info: dict[str, Any]) -> str:
    """``<bgtask.Task 42 running 'name'>``: ``Task.__repr__`` and the pretty printer."""
    name = (info.get("meta") or {}).get("name")
    tail = f" {name!r}" if isinstance(name, str) else ""
    return f"<bgtask.Task {task_pid} {status_text(info)}{tail}>"


def command_text(info: dict[str, Any]) -> str:
    """The job's command as a user would type it (the string itself for ``shell=True``)."""
    if info.get("shell") and isinstance(info.get("command"), str):
        return printable(str(info["command"]))
    import shlex

    return printable(shlex.join(str(a) for a in info.get("argv") or []))


def name_text(info: dict[str, Any]) -> str:
    """The task's name (meta ``name``), control characters escaped; ``""`` if none."""
    name = info.get("meta", {}).get("name")
    if name is None:
        return ""
    return printable(name if isinstance(name, str) else safe_repr(name))


def size_text(n: int) -> str:
    """Bytes for a table cell: ``0``, ``512``, ``1.5K``, ``12M``, ``3.0G``."""
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in "KMGTP":
        value /= 1024
        if value < 1024 or unit == "P":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h03m``, ``4d01h``."""
    if seconds < 0 or math.isnan(seconds):
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def time_text(ts: float | None, now: float | None = None) -> str:
    """A start time for a table cell, like ``ps``: the time today, else the date."""
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    t, today = time.localtime(ts), time.localtime(now)
    if t[:3] == today[:3]:
        return time.strftime("%H:%M:%S", t)
    if t[0] == today[0]:
        return time.strftime("%b %d %H:%M", t)
    return time.strftime("%Y-%m-%d", t)


def full_time_text(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def runtime(info: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds the current (or last) run of the job has lasted."""
    started = info.get("started_at")
    if started is None:
        return None
    ended = info.get("ended_at")
    end = ended if ended is not None else (time.time() if now is None else now)
    return float(end - started)


def unread_bytes(info: dict[str, Any]) -> int:
    streams = info.get("streams", {})
    return sum(int(streams.get(n, {}).get("unread", 0)) for n in OUTPUT_STREAMS)




__all__ = ["STATE_COLOURS", "colour_state", "command_text", "duration_text", "full_time_text", "name_text", "runtime", "signal_name", "size_text", "status_text", "task_title", "time_text", "unread_bytes"]
