"""Terminal-safe text: control characters escaped, widths in terminal columns, values
as one line (JSON where they are JSON), the terminal's width.

Everything a name, a command or a meta value goes through before a terminal shows it:
a job chooses those, and must never drive the terminal of whoever looks at it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: bidirectional-text controls: they reorder what a terminal shows after them
#: ("Trojan Source"), so they are shown escaped like control characters.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    o = ord(ch)
    # C0 controls, DEL, C1 controls (0x9b alone is a CSI on many terminals), the line
    # and paragraph separators, and the bidi controls.
    return o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029) or ch in _BIDI


def printable(text: str) -> str:
    """*text* with every control character escaped (``\\x1b``, ``\\n``, ``\\u202e``), so
    that a name, a command or a meta value can never drive the terminal it is shown on."""
    # Every character escaped here is also one str.isprintable() refuses (Cc, Zl, Zp,
    # Cf): the common case is decided in C, not a Python call per character (a listing
    # of 1000 tasks made ~26,000 of them).
    if text.isprintable() or not any(_unsafe(ch) for ch in text):
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


def pad(text: str, width: int, right: bool = False, used: int | None = None) -> str:
    """*text* padded with spaces to *width* columns (display width, not ``len``);
    *used*: its display width, if the caller measured it already."""
    gap = " " * max(width - (display_width(text) if used is None else used), 0)
    return gap + text if right else text + gap


def cut(text: str, width: int | None) -> str:
    """*text* on one line, cut to *width* columns with ``...`` (None: never cut)."""
    text = printable(text)
    if width is None or display_width(text) <= width:
        return text
    return _fit(text, width - 3) + "..." if width >= 3 else _fit(text, width)


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def value_text(value: Any, style: str = "json") -> str:
    """A meta value or message as one line: JSON where it is JSON (``style="json"``: the
    command line), else its repr (always with ``style="python"``: ipython's views, where
    ``None`` is ``None``, not ``null``). Control characters come out escaped."""
    if style == "python":
        return printable(safe_repr(value))
    import json  # here: an empty `bgtask ls` has no value to show (json brings re)

    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return printable(safe_repr(value))
    except Exception:  # a user's class whose __iter__/__eq__ misbehaves
        return printable(safe_repr(value))
    # JSON escapes C0 controls itself; the rest (DEL, C1, bidi) as JSON escapes too, so
    # the line stays valid JSON.
    return "".join(f"\\u{ord(ch):04x}" if _unsafe(ch) else ch for ch in text)


def jsonable(value: Any) -> Any:
    """*value* itself if JSON can carry it faithfully, else its repr (a str)."""
    import json

    try:
        json.dumps(value, allow_nan=False)
    except Exception:
        return safe_repr(value)
    return value


def jsonable_info(info: dict[str, Any]) -> dict[str, Any]:
    """The info dict with every meta value made JSON-safe (others already are)."""
    meta = {str(k): jsonable(v) for k, v in info.get("meta", {}).items()}
    return {k: meta if k == "meta" else jsonable(v) for k, v in info.items()}


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


__all__ = ["cut", "display_width", "jsonable", "jsonable_info", "pad", "printable", "safe_repr", "terminal_width", "value_text"]
