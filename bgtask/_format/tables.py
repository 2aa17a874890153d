"""Many-line views of info dicts: the ``ls`` table (aligned by display width, cut to a
terminal's width) and the ``info`` lines."""

from __future__ import annotations

import time

from bgtask._format.status import (
    colour_state,
    command_text,
    duration_text,
    full_time_text,
    name_text,
    runtime,
    size_text,
    status_text,
    time_text,
    unread_bytes,
)
from bgtask._format.text import cut, display_width, pad, printable, value_text
from bgtask._wire.names import MESSAGE_STREAMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

#: the narrowest a NAME column is cut to on a narrow terminal.
MIN_NAME_WIDTH = 10
#: the narrowest a COMMAND column is cut to, however narrow the terminal.
MIN_COMMAND_WIDTH = 12


def task_table(infos: Iterable[dict[str, Any]], width: int | None = 100, now: float | None = None,
               colour: bool = False, hosts: list[str] | None = None) -> list[str]:
    """``ls``: one line per task, aligned by display width.

    With a *width* (a terminal's), no line is wider: the NAME and COMMAND columns share
    what the others leave and are cut with ``...``; ``width=None`` cuts nothing (a pipe,
    ``ls -w``). *colour* colours the STATE column (ANSI). *hosts* (one per info; empty
    for a local pool) adds a HOST column in front: ``ls`` over several pools.
    """
    now = time.time() if now is None else now
    if hosts is not None:
        hosts = [printable(h) for h in hosts]
        host_width = max([display_width("HOST")] + [display_width(h) for h in hosts])
        lines = task_table(infos, None if width is None else width - host_width - 2, now, colour)
        return [(pad(h, host_width) + "  " + ln).rstrip() for h, ln in zip(["HOST", *hosts], lines, strict=True)]
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
    # Every cell is printable already; its width is measured once (a listing of 1000
    # tasks measured each cell three times: ~17,000 calls).
    measured = [[display_width(c) for c in r] for r in (header, *rows)]
    widths = [max(col) for col in zip(*measured, strict=True)]
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

    def line(cells: tuple[str, ...], cw: list[int], is_header: bool) -> str:
        parts = []
        for i in cols:
            cell, used = cells[i], cw[i]
            if used > widths[i]:
                cell = cut(cell, widths[i])
                used = display_width(cell)
            cell = pad(cell, widths[i], right=i in right, used=used)
            if i == 1 and colour and not is_header:
                cell = colour_state(cells[i], cell)
            parts.append(cell)
        command = cells[cmd]
        if width is not None and cw[cmd] > widths[cmd]:
            command = cut(command, widths[cmd])
        parts.append(command)
        return "  ".join(parts).rstrip()

    return [line(r, w, i == 0) for i, (r, w) in enumerate(zip((header, *rows), measured, strict=True))]


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


def _operations_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``info``'s lines for the operations options a task has (none for a plain task)."""
    rows = []
    if info.get("timeout") is not None:
        timed_out = (info.get("status") or {}).get("timed_out")
        rows.append(("timeout", f"{info['timeout']:g}s" + (" (timed out)" if timed_out else "")))
    if info.get("grace") is not None and info.get("grace") != 5.0:
        rows.append(("grace", f"{info['grace']:g}s"))
    if info.get("restart") not in (None, "never"):
        text = f"{info['restart']}, delay {info.get('restart_delay', 1.0):g}s"
        if info.get("max_restarts") is not None:
            text += f", at most {info['max_restarts']}"
        text += f"; {info.get('auto_restarts', 0)} so far"
        if info.get("next_restart_at"):
            text += f"; next at {full_time_text(info['next_restart_at'])}"
        rows.append(("restart", text))
    if info.get("slot"):
        rows.append(("slot", printable(f"{info['slot'][0]} (at most {info['slot'][1]})")))
    if info.get("limits"):
        rows.append(("limits", ", ".join(f"{k}={v}" for k, v in sorted(info["limits"].items()))))
    if info.get("on_exit"):
        rows.append(("on exit", printable(" ".join(info["on_exit"]))))
    if info.get("start_error"):
        rows.append(("error", printable(str(info["start_error"]))))
    return rows


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
    rows += _operations_rows(info)
    rows.append(("owner", _user(info.get("owner"))))
    meta = info.get("meta") or {}
    if not meta:
        rows.append(("meta", "-"))
    for i, (k, v) in enumerate(sorted(meta.items(), key=lambda kv: str(kv[0]))):
        rows.append(("meta" if i == 0 else "", f"{printable(str(k))} = {cut(value_text(v, style), 200)}"))
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


__all__ = ["MIN_COMMAND_WIDTH", "MIN_NAME_WIDTH", "info_lines", "task_table"]
