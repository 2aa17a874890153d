"""Human-readable summaries of tasks: the command line's tables, the ipython pretty
printers (``_repr_pretty_``) of :class:`~bgtask.Task` and :class:`~bgtask.TaskPool`, and
what the web view shows.

Everything here works on info dicts (``task.info()``), so every view shows the same facts
the same way. Only the standard library is used (and ``wcwidth``, only for tables with
non-ASCII text): ``import bgtask`` must stay cheap. Its modules, bottom up:

* :mod:`~bgtask._format.text`: terminal-safe text (escaping, display widths, one-line values);
* :mod:`~bgtask._format.status`: single values in words (state, command, sizes, times);
* :mod:`~bgtask._format.tables`: the ``ls`` table and the ``info`` lines;
* :mod:`~bgtask._format.pretty`: the ipython pretty printers.

Callers use this package's names (``_format.status_text``), not its modules', so that
a function can move between modules without touching them.
"""

from __future__ import annotations

from bgtask._format.pretty import pretty_pool, pretty_task
from bgtask._format.status import (
    STATE_COLOURS,
    colour_state,
    command_text,
    duration_text,
    full_time_text,
    name_text,
    runtime,
    signal_name,
    size_text,
    status_text,
    task_title,
    time_text,
    unread_bytes,
)
from bgtask._format.tables import MIN_COMMAND_WIDTH, MIN_NAME_WIDTH, info_lines, task_table
from bgtask._format.text import (
    cut,
    display_width,
    jsonable,
    jsonable_info,
    pad,
    printable,
    safe_repr,
    terminal_width,
    value_text,
)

__all__ = [
    "MIN_COMMAND_WIDTH",
    "MIN_NAME_WIDTH",
    "STATE_COLOURS",
    "colour_state",
    "command_text",
    "cut",
    "display_width",
    "duration_text",
    "full_time_text",
    "info_lines",
    "jsonable",
    "jsonable_info",
    "name_text",
    "pad",
    "pretty_pool",
    "pretty_task",
    "printable",
    "runtime",
    "safe_repr",
    "signal_name",
    "size_text",
    "status_text",
    "task_table",
    "task_title",
    "terminal_width",
    "time_text",
    "unread_bytes",
    "value_text",
]
