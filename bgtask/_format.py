"""Human-readable summaries of tasks: the command line's tables and the ipython pretty
printers (``_repr_pretty_``) of :class:`~bgtask.Task` and :class:`~bgtask.TaskPool`.

Everything here works on info dicts (``task.info()``), so the command line and the
pretty printers show the same facts the same way. Only the standard library is used:
``import bgtask`` must stay cheap.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bgtask._wire.names import MESSAGE_STREAMS, OUTPUT_STREAMS

if TYPE_CHECKING:
    from bgtask._client.pool import TaskPool
    from bgtask._client.task import Task

#: the widest a NAME column gets in a table; longer names are cut.
NAME_WIDTH = 24
#: the narrowest a COMMAND column gets, however narrow the terminal.
MIN_COMMAND_WIDTH = 12


# -- single values ---------------------------------------------------------------------------


def signal_name(num: int) -> str:
    """9 -> ``SIGKILL``; an unknown number -> ``signal 99``."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def status_text(info: dict[str, Any]) -> str:
    """The short state of a job: ``running``, ``paused``, ``exited 3``, ``killed SIGTERM``."""
    st = info["status"]
    if st.get("paused"):
        return "paused"
    if st.get("running"):
        return "running"
    if st.get("signal") is not None:
        return f"killed {signal_name(st['signal'])}"
    return f"exited {st.get('exit_code')}"


def command_text(info: dict[str, Any]) -> str:
    """The job's command as a user would type it (the string itself for ``shell=True``)."""
    if info.get("shell") and isinstance(info.get("command"), str):
        return str(info["command"])
    return shlex.join(str(a) for a in info.get("argv") or [])


def name_text(info: dict[str, Any]) -> str:
    name = info.get("meta", {}).get("name")
    if name is None:
        return ""
    return name if isinstance(name, str) else repr(name)


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


def value_text(value: Any) -> str:
    """A meta value or message as one line: JSON where it is JSON, else its repr."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    except Exception:  # a user's class whose __iter__/__eq__ misbehaves
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def jsonable(value: Any) -> Any:
    """*value* itself if JSON can carry it faithfully, else its repr (a str)."""
    try:
        json.dumps(value, allow_nan=False)
    except Exception:
        return _safe_repr(value)
    return value


def jsonable_info(info: dict[str, Any]) -> dict[str, Any]:
    """The info dict with every meta value made JSON-safe (others already are)."""
    meta = {str(k): jsonable(v) for k, v in info.get("meta", {}).items()}
    return {k: meta if k == "meta" else jsonable(v) for k, v in info.items()}


# -- tables and summaries --------------------------------------------------------------------


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ").replace("\t", " ")
    if len(text) <= width:
        return text
    return text[: max(width - 3, 0)] + "..." if width >= 3 else text[:width]


def task_table(infos: Iterable[dict[str, Any]], width: int = 100, now: float | None = None) -> list[str]:
    """``ls``: one line per task, aligned, no line wider than *width* (the command is cut)."""
    now = time.time() if now is None else now
    header = ("PID", "STATE", "STARTED", "RUNTIME", "UNREAD", "NAME", "COMMAND")
    rows = []
    for info in infos:
        rt = runtime(info, now)
        rows.append((
            str(info["pid"]),
            status_text(info),
            time_text(info.get("started_at"), now),
            "-" if rt is None else duration_text(rt),
            size_text(unread_bytes(info)),
            _cut(name_text(info), NAME_WIDTH),
            command_text(info),
        ))
    fixed = len(header) - 1
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(fixed)]
    right = {0, 3, 4}  # numbers line up on the right
    if not any(r[5] for r in rows):  # nobody has a name: spare the column
        drop = {5}
    else:
        drop = set()
    cols = [i for i in range(fixed) if i not in drop]
    used = sum(widths[i] + 2 for i in cols)
    if 5 not in drop and used + MIN_COMMAND_WIDTH > width:  # a narrow terminal: names give way
        narrower = min(widths[5], max(widths[5] - (used + MIN_COMMAND_WIDTH - width), 8))
        used -= widths[5] - narrower
        widths[5] = narrower
        rows = [r[:5] + (_cut(r[5], narrower),) + r[6:] for r in rows]
    cmd_width = max(width - used, MIN_COMMAND_WIDTH)

    def line(cells: tuple[str, ...]) -> str:
        parts = [cells[i].rjust(widths[i]) if i in right else cells[i].ljust(widths[i]) for i in cols]
        parts.append(_cut(cells[fixed], cmd_width))
        return "  ".join(parts).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _stream_line(name: str, d: dict[str, Any]) -> str:
    unit = "messages" if name in MESSAGE_STREAMS else "bytes"
    parts = [f"start {d.get('start')}", f"limit {d.get('limit')}", f"unread {d.get('unread')} {unit}"]
    if d.get("dropped"):
        parts.append(f"dropped {d['dropped']}")
    if name == "stdin" and d.get("discarded"):
        parts.append(f"discarded {d['discarded']}")
    if d.get("eof"):
        parts.append("closed" if name == "stdin" else "eof")
    return ", ".join(parts)


def info_lines(info: dict[str, Any], now: float | None = None) -> list[str]:
    """``info``: the facts of one task, one per line (``key  value``)."""
    now = time.time() if now is None else now
    state = status_text(info)
    if info.get("child_pid"):
        state += f" (job pid {info['child_pid']})"
    started = info.get("started_at")
    rt = runtime(info, now)
    rows: list[tuple[str, str]] = [
        ("task", str(info["pid"])),
        ("state", state),
        ("command", command_text(info)),
        ("cwd", str(info.get("cwd"))),
        ("started", full_time_text(started) + ("" if started is None else
                                               f" ({duration_text(now - started)} ago)")),
        ("ended", full_time_text(info.get("ended_at"))),
        ("runtime", "-" if rt is None else duration_text(rt)),
        ("restarts", str(info.get("restarts", 0))),
    ]
    if info.get("lock"):
        rows.append(("lock", str(info["lock"])))
    rows.append(("owner", _user(info.get("owner"))))
    meta = info.get("meta") or {}
    if not meta:
        rows.append(("meta", "-"))
    for i, (k, v) in enumerate(sorted(meta.items(), key=lambda kv: str(kv[0]))):
        rows.append(("meta" if i == 0 else "", f"{k} = {_cut(value_text(v), 200)}"))
    streams = info.get("streams", {})
    for name in ("stdout", "stderr", "stdin", "data", "control"):
        if name in streams:
            rows.append((name, _stream_line(name, streams[name])))
    key_width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(key_width)}  {v}" for k, v in rows]


def _user(uid: Any) -> str:
    if not isinstance(uid, int):
        return str(uid)
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} ({uid})"
    except (ImportError, KeyError):
        return str(uid)


def terminal_width(default: int = 100) -> int:
    """The terminal's width (``$COLUMNS`` first), *default* when there is none."""
    try:
        cols = int(os.environ.get("COLUMNS", ""))
        if cols > 0:
            return cols
    except ValueError:
        pass
    import shutil

    return shutil.get_terminal_size((default, 24)).columns


# -- ipython ---------------------------------------------------------------------------------


def _top_level(p: Any) -> bool:
    # IPython's RepresentationPrinter pushes every object it descends into on .stack:
    # only an object shown on its own (not inside a list of search results) gets the
    # many-line summary.
    stack = getattr(p, "stack", None)
    return stack is not None and len(stack) <= 1


def pretty_task(task: Task, p: Any, cycle: bool) -> None:
    """``Task._repr_pretty_``: the repr, plus the ``info`` summary when shown alone."""
    if cycle or not _top_level(p):
        p.text(repr(task))
        return
    from bgtask._client.task import describe_status
    from bgtask._errors import BgTaskError

    try:
        info = task.info(fresh=True)
    except BgTaskError:
        p.text(repr(task))
        return
    name = info["meta"].get("name")
    tail = f" {name!r}" if isinstance(name, str) else ""
    p.text(f"<bgtask.Task {task.pid} {describe_status(info)}{tail}>")
    for line in info_lines(info)[1:]:
        p.break_()
        p.text("  " + line)


def pretty_pool(pool: TaskPool, p: Any, cycle: bool) -> None:
    """``TaskPool._repr_pretty_``: the repr, plus the ``bgtask ls`` table when shown alone."""
    p.text(repr(pool))
    if cycle or not _top_level(p):
        return
    from bgtask._errors import BgTaskError

    try:
        infos = [t.info() for t in pool.search()]
    except (BgTaskError, OSError):
        return
    if infos:
        for line in task_table(infos, terminal_width() - 2):
            p.break_()
            p.text("  " + line)


__all__ = [
    "command_text",
    "duration_text",
    "info_lines",
    "jsonable",
    "jsonable_info",
    "pretty_pool",
    "pretty_task",
    "size_text",
    "status_text",
    "task_table",
    "terminal_width",
    "time_text",
    "value_text",
]
