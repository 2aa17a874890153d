"""bgtask's web view: see and steer jobs from a browser, safely.

``create_app(pool, token=...)`` is an ASGI application (Starlette) to serve on its own
(``bgtask web`` does, with uvicorn, on loopback, printing a URL that carries a fresh
token) or to mount in a Starlette/FastAPI application under a prefix, behind that
application's own authentication (``token=None``)::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    import bgtask.web

    app = Starlette(routes=[Mount("/jobs", app=bgtask.web.create_app(token=None))])

Needs the ``web`` extra (``pip install "bgtask[web]"``); ``import bgtask`` never
imports it. The parts: ``_app`` (routes, pages, the JSON API), ``_events`` (live
updates as server-sent events), ``_jobs`` (what is shown of a task, over the asyncio
API), ``_security`` (token, cookie, CSRF, same-origin, headers), ``_serve`` (the
``bgtask web`` command); ``templates/`` and ``static/`` (one stylesheet, one script).
"""

from __future__ import annotations

from bgtask.web._app import create_app

__all__ = ["create_app"]
