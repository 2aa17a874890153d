"""What the web view shows of tasks, built on the asyncio API (``bgtask.AsyncTaskPool``):
rows of the task list, a task's summary, windows of output cut at character
boundaries, and the filters of the list page.

Every value that came from a job or a client (meta, argv, output, messages) leaves here
as plain text or JSON data; the templates escape it and the page's script only ever sets
``textContent``. Nothing here builds HTML.
"""

from __future__ import annotations

import json
import time
from typing import Any

import bgtask
from bgtask import _format

#: the most bytes one range read returns: a 100 MB log is fetched in windows, never
#: whole (Jenkins' progressive log exhausts its heap on multi-GB logs).
MAX_WINDOW = 1 << 20
#: what a task page opens with: the end of each output stream.
TAIL_WINDOW = 64 * 1024
#: the most data messages a page shows at once.
MAX_MESSAGES = 200
#: the states the list can be filtered by ("running" covers paused, as ``ls --running``).
STATE_FILTERS = ("all", "running", "finished", "queued", "paused", "backoff", "failed")


def async_pool(pool: Any) -> bgtask.AsyncTaskPool:
    """An ``AsyncTaskPool`` for *pool*: an ``AsyncTaskPool`` itself, a ``TaskPool``, a
    path or URL, or None (the default pool)."""
    if isinstance(pool, bgtask.AsyncTaskPool):
        return pool
    return bgtask.AsyncTaskPool(pool)


def pool_label(given: Any, pool: Any) -> str:
    """Where the view looks, for its header: the pool's URL or directory."""
    sync = getattr(pool, "sync", None)
    for p in (given, sync, pool):
        if isinstance(p, bgtask.TaskPool):
            return _format.printable(str(p) if str(p).startswith("ssh://") else str(p.path))
    if given is not None:
        return _format.printable(str(given))
    return _format.printable(str(bgtask.default_pool().path))


def async_task(pool: bgtask.AsyncTaskPool, pid: int) -> bgtask.AsyncTask:
    return bgtask.AsyncTask(pid, pool)


def disconnect(task: Any) -> None:
    """Close *task*'s connections to its supervisor: each request makes its own handle,
    and a handle left open would hold a socket until the garbage collector finds it."""
    close = getattr(task, "disconnect", None)
    if close is not None:
        close()


# -- what a person reads ---------------------------------------------------------------------


def state_class(info: dict[str, Any]) -> str:
    """The CSS class of a task's state: its first word, ``ok``/``failed`` for an exit."""
    text = _format.status_text(info)
    word, _, rest = text.partition(" ")
    if word == "exited":
        return "ok" if rest.strip() == "0" else "failed"
    return word if word.isalpha() else "unknown"


def row(info: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """One line of the task list: the columns of ``bgtask ls``."""
    now = time.time() if now is None else now
    rt = _format.runtime(info, now)
    return {
        "pid": int(info["pid"]),
        "state": _format.printable(_format.status_text(info)),
        "cls": state_class(info),
        "started": _format.time_text(info.get("started_at"), now),
        "runtime": "-" if rt is None else _format.duration_text(rt),
        "unread": _format.size_text(_format.unread_bytes(info)),
        "name": _format.name_text(info),
        "command": _format.command_text(info),
    }


def summary(info: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the task page shows besides output, as text and JSON values."""
    st = info.get("status") or {}
    streams = info.get("streams") or {}
    out = row(info)
    out.update({
        "cwd": _format.printable(str(info.get("cwd", ""))),
        "started_full": _format.full_time_text(info.get("started_at")),
        "ended_full": _format.full_time_text(info.get("ended_at")),
        "restarts": info.get("restarts", 0),
        "child_pid": info.get("child_pid"),
        "returncode": st.get("returncode"),
        "running": bool(st.get("running")),
        "paused": bool(st.get("paused")),
        "meta": [[_format.printable(str(k)), _format.value_text(v)]
                 for k, v in sorted((info.get("meta") or {}).items(), key=lambda kv: str(kv[0]))],
        "streams": {name: {k: _format.jsonable(v) for k, v in (d or {}).items()}
                    for name, d in streams.items()},
        "usage": usage_rows(usage),
    })
    return out


def usage_rows(usage: dict[str, Any] | None) -> list[list[str]]:
    if not usage:
        return []
    rows = []
    for key, label in (("cpu_user", "cpu user"), ("cpu_system", "cpu system")):
        if isinstance(usage.get(key), (int, float)):
            rows.append([label, _format.duration_text(float(usage[key]))])
    for key, label in (("rss", "memory"), ("max_rss", "peak memory")):
        if isinstance(usage.get(key), int):
            rows.append([label, _format.size_text(usage[key])])
    if isinstance(usage.get("processes"), int):
        rows.append(["processes", str(usage["processes"])])
    return rows


async def usage_of(task: Any) -> dict[str, Any] | None:
    """``task.usage()`` where this bgtask has it (and the job can be measured)."""
    if not hasattr(task, "usage"):
        return None
    try:
        got = await task.usage()
    except (bgtask.BgTaskError, OSError, ValueError, AttributeError, NotImplementedError):
        return None
    return got if isinstance(got, dict) else None


# -- filters -----------------------------------------------------------------------------------


def parse_meta_filter(text: str) -> list[tuple[str, Any, str]]:
    """``name=build n=3`` -> [(key, parsed, raw)]: as ``ls --meta``, a value matches as
    JSON or as the string typed."""
    wanted = []
    for word in text.split():
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise ValueError(f"a meta filter is KEY=VALUE, not {word!r}")
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        wanted.append((key, parsed, raw))
    return wanted


def matches(info: dict[str, Any], state: str, wanted: list[tuple[str, Any, str]]) -> bool:
    st = info.get("status") or {}
    if state == "running" and not st.get("running"):
        return False
    if state == "finished" and (st.get("running") or info.get("state") in ("queued", "backoff")):
        return False
    if state in ("queued", "paused", "backoff") and not _format.status_text(info).startswith(state):
        return False
    if state == "failed" and state_class(info) not in ("failed", "killed", "timed"):
        return False
    meta = info.get("meta") or {}
    try:
        return all(k in meta and (meta[k] == parsed or meta[k] == raw) for k, parsed, raw in wanted)
    except Exception:  # a user's class whose __eq__ raises: no match, as search(where=...)
        return False


# -- output windows ------------------------------------------------------------------------------


def _continuations(data: bytes, limit: int = 3) -> int:
    """Leading UTF-8 continuation bytes (a window that starts inside a character)."""
    n = 0
    while n < min(limit, len(data)) and 0x80 <= data[n] < 0xC0:
        n += 1
    return n


def complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of *data* that does not end inside a UTF-8
    character: the rest waits for the bytes that complete it."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return len(data)
        if b >= 0xC0:  # a lead byte: how long is its character?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def cut_window(data: bytes, start: int, *, head: bool, line: bool, tail: bool) -> tuple[int, int, str]:
    """(start, end, text) of the bytes *data* read at offset *start*: *head* skips a
    partial character at the front, *line* a partial first line, *tail* keeps a
    character cut at the end for the next read. Offsets stay exact, so the next window
    starts where this one ends and nothing is shown twice or lost."""
    a = _continuations(data) if head else 0
    if line:
        nl = data.find(b"\n", a)
        if 0 <= nl < len(data) - 1:
            a = nl + 1
    b = complete_utf8(data) if tail else len(data)
    b = max(a, b)
    return start + a, start + b, data[a:b].decode("utf-8", "replace")


async def read_window(stream: Any, start: int | None, end: int | None, tail: int | None,
                      line: bool = False) -> dict[str, Any]:
    """A window of a byte stream as text: [start, end), or the last *tail* bytes,
    at most :data:`MAX_WINDOW`, clamped to what the supervisor still holds. *line*
    (always for a tail) starts it at a line's start unless that is the stream's start."""
    first, limit = await stream.bounds()
    if tail is not None:
        end = limit if end is None else min(end, limit)
        start = max(end - min(tail, MAX_WINDOW), first)
    else:
        start = first if start is None else max(start, first)
        end = limit if end is None else min(end, limit)
        end = min(end, start + MAX_WINDOW)
    if end <= start:
        return {"start": start, "end": start, "text": "", "first": first, "limit": limit}
    try:
        data = await stream.read(start, end)
    except bgtask.OutputGoneError as exc:  # freed between bounds() and read()
        start = max(int(exc.start or 0), start)
        data = await stream.read(start, end) if start < end else b""
    # Cut a character only where the window was chosen for the reader; a requested
    # start is the end of an earlier window, already on a boundary.
    a, b, text = cut_window(data, start, head=start > first, line=(line or tail is not None) and start > first,
                            tail=end < limit)
    return {"start": a, "end": b, "text": text, "first": first, "limit": limit}


def message_items(items: list[Any], start: int) -> list[dict[str, Any]]:
    """Data messages as numbered one-line texts (JSON where they are JSON)."""
    return [{"n": start + i, "text": _format.value_text(m)} for i, m in enumerate(items)]


__all__ = ["MAX_MESSAGES", "MAX_WINDOW", "STATE_FILTERS", "TAIL_WINDOW", "async_pool", "async_task", "disconnect", "pool_label",
           "complete_utf8", "cut_window", "matches", "message_items", "parse_meta_filter", "read_window",
           "row", "state_class", "summary", "usage_of"]
