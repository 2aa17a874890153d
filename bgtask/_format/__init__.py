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
from typing import Any, Protocol

from bgtask._wire.names import MESSAGE_STREAMS, OUTPUT_STREAMS


# What the pretty printers need of a Task and a TaskPool, by shape: presentation sits
# below the client and never imports it.
class _TaskLike(Protocol):
    @property
    def pid(self) -> int: ...

    def info(self, fresh: bool = False) -> dict[str, Any]: ...


class _PoolLike(Protocol):
    def search(self) -> list[Any]: ...

#: the narrowest a NAME column is cut to on a narrow terminal.
MIN_NAME_WIDTH = 10
#: the narrowest a COMMAND column is cut to, however narrow the terminal.
MIN_COMMAND_WIDTH = 12

#: ANSI colours of the STATE column, by the state's first word (anything else: plain).
STATE_COLOURS = {
    "running": "32",  # green
    "queued": "33", "paused": "33", "stopping": "33", "backoff": "33",  # yellow: waiting
    "killed": "31", "failed": "31", "unresponsive": "31", "timed": "31", "died": "31",  # red
}
#: bidirectional-text controls: they reorder what a terminal shows after them
#: ("Trojan Source"), so they are shown escaped like control characters.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# -- terminal-safe text ----------------------------------------------------------------------


def _unsafe(ch: str) -> bool:
    o = ord(ch)
    # C0 controls, DEL, C1 controls (0x9b alone is a CSI on many terminals), the line
    # and paragraph separators, and the bidi controls.
    return o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029) or ch in _BIDI


def printable(text: str) -> str:
    """*text* with every control character escaped (``\\x1b``, ``\\n``, ``\\u202e``), so
    that a name, a command or a meta value can never drive the terminal it is shown on."""
    if not any(_unsafe(ch) for ch in text):
        return text
    out = []
    for ch in text:
        if not _unsafe(ch):
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def display_width(text: str) -> int:
    """Columns *text* takes on a terminal: 2 for wide (CJK, most emoji), 0 for combining
    marks. Control characters count 1 (the tables escape them before measuring)."""
    if text.isascii():
        return len(text)
    from wcwidth import wcswidth  # only tables with non-ASCII text need it

    width = wcswidth(text)
    return width if width >= 0 else len(text)


def _fit(text: str, width: int) -> str:
    """The longest prefix of *text* no wider than *width* columns."""
    if text.isascii():
        return text[:width]
    from wcwidth import wcwidth

    used = 0
    for i, ch in enumerate(text):
        w = max(wcwidth(ch), 0)
        if used + w > width:
            return text[:i]
        used += w
    return text


def pad(text: str, width: int, right: bool = False) -> str:
    """*text* padded with spaces to *width* columns (display width, not ``len``)."""
    gap = " " * max(width - display_width(text), 0)
    return gap + text if right else text + gap


def colour_state(text: str, cell: str | None = None) -> str:
    """*cell* (default: *text*) in the colour of state *text*: ``exited 0`` plain,
    another exit status red, running green, waiting states yellow."""
    cell = text if cell is None else cell
    word, _, rest = text.partition(" ")
    code = STATE_COLOURS.get(word)
    if word == "exited":
        code = None if rest.strip() in ("", "0") else "31"
    return f"\x1b[{code}m{cell}\x1b[0m" if code else cell


# -- single values ---------------------------------------------------------------------------


def signal_name(num: int) -> str:
    """9 -> ``SIGKILL``; an unknown number -> ``signal 99``."""
    try:
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
    return printable(shlex.join(str(a) for a in info.get("argv") or []))


def name_text(info: dict[str, Any]) -> str:
    """The task's name (meta ``name``), control characters escaped; ``""`` if none."""
    name = info.get("meta", {}).get("name")
    if name is None:
        return ""
    return printable(name if isinstance(name, str) else _safe_repr(name))


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


def value_text(value: Any, style: str = "json") -> str:
    """A meta value or message as one line: JSON where it is JSON (``style="json"``: the
    command line), else its repr (always with ``style="python"``: ipython's views, where
    ``None`` is ``None``, not ``null``). Control characters come out escaped."""
    if style == "python":
        return printable(_safe_repr(value))
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return printable(_safe_repr(value))
    except Exception:  # a user's class whose __iter__/__eq__ misbehaves
        return printable(_safe_repr(value))
    # JSON escapes C0 controls itself; the rest (DEL, C1, bidi) as JSON escapes too, so
    # the line stays valid JSON.
    return "".join(f"\\u{ord(ch):04x}" if _unsafe(ch) else ch for ch in text)


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


def _cut(text: str, width: int | None) -> str:
    """*text* on one line, cut to *width* columns with ``...`` (None: never cut)."""
    text = printable(text)
    if width is None or display_width(text) <= width:
        return text
    return _fit(text, width - 3) + "..." if width >= 3 else _fit(text, width)


def task_table(infos: Iterable[dict[str, Any]], width: int | None = 100, now: float | None = None,
               colour: bool = False) -> list[str]:
    """``ls``: one line per task, aligned by display width.

    With a *width* (a terminal's), no line is wider: the NAME and COMMAND columns share
    what the others leave and are cut with ``...``; ``width=None`` cuts nothing (a pipe,
    ``ls -w``). *colour* colours the STATE column (ANSI).
    """
    now = time.time() if now is None else now
    header = ("PID", "STATE", "STARTED", "RUNTIME", "UNREAD", "NAME", "COMMAND")
    rows = []
    for info in infos:
        rt = runtime(info, now)
        rows.append((
            str(info["pid"]),
            printable(status_text(info)),
            time_text(info.get("started_at"), now),
            "-" if rt is None else duration_text(rt),
            size_text(unread_bytes(info)),
            name_text(info),
            command_text(info),
        ))
    name, cmd = 5, 6
    widths = [max([display_width(header[i])] + [display_width(r[i]) for r in rows]) for i in range(cmd + 1)]
    right = {0, 3, 4}  # numbers line up on the right
    cols = [i for i in range(cmd) if i != name or any(r[name] for r in rows)]  # nobody named: no NAME
    if width is not None:
        fixed = sum(widths[i] + 2 for i in cols if i != name)
        room = width - fixed  # what NAME (and its gap) and COMMAND share
        if name in cols:
            room -= 2
            need_name, need_cmd = widths[name], widths[cmd]
            if need_name + need_cmd > room:
                # Fair shares: each gets half, and what one does not need goes to the other.
                half = room // 2
                if need_name <= half:
                    share = need_name
                elif need_cmd <= room - half:
                    share = room - need_cmd
                else:
                    share = half
                widths[name] = max(share, min(MIN_NAME_WIDTH, need_name))
            room -= widths[name]
        widths[cmd] = max(room, MIN_COMMAND_WIDTH)

    def line(cells: tuple[str, ...], is_header: bool = False) -> str:
        parts = []
        for i in cols:
            cell = pad(_cut(cells[i], widths[i]), widths[i], right=i in right)
            if i == 1 and colour and not is_header:
                cell = colour_state(cells[i], cell)
            parts.append(cell)
        parts.append(_cut(cells[cmd], widths[cmd] if width is not None else None))
        return "  ".join(parts).rstrip()

    return [line(header, True)] + [line(r) for r in rows]


def _stream_line(name: str, d: dict[str, Any]) -> str:
    unit = "message" if name in MESSAGE_STREAMS else "byte"
    unread = d.get("unread")
    parts = [f"start {d.get('start')}", f"limit {d.get('limit')}",
             f"unread {unread} {unit}{'' if unread == 1 else 's'}"]
    if d.get("dropped"):
        parts.append(f"dropped {d['dropped']}")
    if name == "stdin" and d.get("discarded"):
        parts.append(f"discarded {d['discarded']}")
    if d.get("eof"):
        parts.append("closed" if name == "stdin" else "eof")
    return ", ".join(parts)


def info_lines(info: dict[str, Any], now: float | None = None, style: str = "python") -> list[str]:
    """``info``: the facts of one task, one per line (``key  value``), control characters
    escaped. Meta values are shown as *style* says (see :func:`value_text`): Python
    reprs by default (ipython), JSON for the command line."""
    now = time.time() if now is None else now
    state = printable(status_text(info))
    if info.get("child_pid"):
        state += f" (job pid {info['child_pid']})"
    started = info.get("started_at")
    rt = runtime(info, now)
    rows: list[tuple[str, str]] = [
        ("task", str(info["pid"])),
        ("state", state),
        ("command", command_text(info)),
        ("cwd", printable(str(info.get("cwd")))),
        ("started", full_time_text(started) + ("" if started is None else
                                               f" ({duration_text(now - started)} ago)")),
        ("ended", full_time_text(info.get("ended_at"))),
        ("runtime", "-" if rt is None else duration_text(rt)),
        ("restarts", str(info.get("restarts", 0))),
    ]
    if info.get("lock"):
        rows.append(("lock", printable(str(info["lock"]))))
    rows.append(("owner", _user(info.get("owner"))))
    meta = info.get("meta") or {}
    if not meta:
        rows.append(("meta", "-"))
    for i, (k, v) in enumerate(sorted(meta.items(), key=lambda kv: str(kv[0]))):
        rows.append(("meta" if i == 0 else "", f"{printable(str(k))} = {_cut(value_text(v, style), 200)}"))
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


def pretty_task(task: _TaskLike, p: Any, cycle: bool) -> None:
    """``Task._repr_pretty_``: the repr, plus the ``info`` summary when shown alone."""
    if cycle or not _top_level(p):
        p.text(repr(task))
        return
    from bgtask._errors import BgTaskError

    try:
        info = task.info(fresh=True)
    except BgTaskError:
        p.text(repr(task))
        return
    p.text(task_title(task.pid, info))
    for line in info_lines(info)[1:]:
        p.break_()
        p.text("  " + line)


def pretty_pool(pool: _PoolLike, p: Any, cycle: bool) -> None:
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
    "colour_state",
    "command_text",
    "display_width",
    "duration_text",
    "info_lines",
    "jsonable",
    "jsonable_info",
    "pad",
    "pretty_pool",
    "pretty_task",
    "printable",
    "size_text",
    "status_text",
    "task_table",
    "task_title",
    "terminal_width",
    "time_text",
    "value_text",
]
