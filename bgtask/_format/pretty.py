"""The ipython pretty printers (``_repr_pretty_``) of :class:`~bgtask.Task` and
:class:`~bgtask.TaskPool`: the repr, plus the ``info`` summary or the ``ls`` table when the
object is shown on its own."""

from __future__ import annotations

from bgtask._format.status import task_title
from bgtask._format.tables import info_lines, task_table
from bgtask._format.text import terminal_width

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    # What the pretty printers need of a Task and a TaskPool, by shape: presentation sits
    # below the client and never imports it.
    class _TaskLike(Protocol):
        @property
        def pid(self) -> int: ...

        def info(self, fresh: bool = False) -> dict[str, Any]: ...


    class _PoolLike(Protocol):
        def search(self) -> list[Any]: ...


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


__all__ = ["pretty_pool", "pretty_task"]
