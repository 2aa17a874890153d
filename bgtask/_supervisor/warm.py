"""What the fork server (``template.py``) prepares before it forks supervisors.

Whatever is imported (or otherwise made) here is made once, in the template, and shared
by every supervisor forked from it: pages that a child never writes stay shared, so they
cost each supervisor almost nothing (PSS). Whatever a supervisor imports or builds only
after its fork is private to it.
"""

from __future__ import annotations

import sys


def prepare() -> None:
    """Import what a supervisor imports, so that its children start ready."""
    sys.modules.setdefault("multiprocessing.shared_memory", None)  # type: ignore[arg-type]
    import hmac  # noqa: F401  (the handshake, here and in the children)
    import traceback  # noqa: F401  (boot's error path)

    from bgtask._supervisor import boot, server  # noqa: F401


__all__ = ["prepare"]
