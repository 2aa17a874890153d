"""The web view's application: pages, the JSON API under ``/api/``, the event streams
and the two static files, behind :class:`~bgtask.web._security.Guard`.

Pages are rendered on the server by Jinja2 with autoescape on; the one script
(``static/app.js``) fills in live data with ``textContent`` only. Every URL a page
holds starts with the app's ``root_path``, so the app works mounted under a prefix.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import bgtask
from bgtask import _format
from bgtask.web import _jobs
from bgtask.web._events import ListWatcher, TaskFeed, parse_cursor
from bgtask.web._security import Guard

STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
#: the signals the kill button offers, TERM first (as ``bgtask kill``).
SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2")
#: our errors -> HTTP status; the text goes to the viewer escaped like everything else.
STATUS = [
    (bgtask.TaskNotFoundError, 404), (bgtask.AccessDeniedError, 403), (bgtask.OutputGoneError, 410),
    (bgtask.StreamClosedError, 409), (bgtask.SpawnError, 409), (bgtask.TaskUnresponsiveError, 504),
    (bgtask.HostUnreachableError, 502), (bgtask.RemoteError, 502), (ValueError, 400), (TypeError, 400),
    (TimeoutError, 504),
]
ACTIONS = ("kill", "pause", "resume", "restart", "delete", "stdin", "control")
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}  # nginx: do not buffer


class SafeJSON(JSONResponse):
    """JSON with <, > and & escaped: inert even where a browser might sniff it as HTML."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _error(exc: Exception) -> Response:
    code = next((c for cls, c in STATUS if isinstance(exc, cls)), 500)
    return SafeJSON({"error": _format.printable(f"{type(exc).__name__}: {exc}")}, status_code=code)


def _int(request: Request, name: str) -> int | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return None
    if not v.isdigit():
        raise ValueError(f"{name} must be a non-negative integer")
    return int(v)


class WebView:
    """The routes of one app and the pool they look at."""

    def __init__(self, pool: Any) -> None:
        self.pool = _jobs.async_pool(pool)
        self.where = _jobs.pool_label(pool, self.pool)
        self.watcher = ListWatcher(self.pool)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("bgtask.web", "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined)
        files = resources.files("bgtask.web") / "static"
        self.static = {name: (files / name).read_bytes() for name in STATIC_TYPES}

    def routes(self) -> list[Route]:
        return [
            Route("/", self.list_page),
            Route("/tasks/{pid:int}", self.task_page),
            Route("/static/{name}", self.static_file),
            Route("/api/tasks", self.api_tasks),
            Route("/api/events", self.api_list_events),
            Route("/api/tasks/{pid:int}", self.api_task),
            Route("/api/tasks/{pid:int}/events", self.api_task_events),
            Route("/api/tasks/{pid:int}/streams/{name}", self.api_stream),
            Route("/api/tasks/{pid:int}/{action}", self.api_action, methods=["POST"]),
        ]

    # -- pages ---------------------------------------------------------------------------------

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(base=request.scope.get("root_path", ""), csrf=request.state.bgtask_csrf,
                       pool=self.where)
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)

    def _filters(self, request: Request) -> tuple[str, str, list[tuple[str, Any, str]]]:
        state = request.query_params.get("state", "all")
        if state not in _jobs.STATE_FILTERS:
            raise ValueError(f"unknown state filter {state!r}")
        meta = request.query_params.get("meta", "")
        return state, meta, _jobs.parse_meta_filter(meta)

    async def list_page(self, request: Request) -> Response:
        error = ""
        try:
            state, meta, wanted = self._filters(request)
            infos = await self.watcher.snapshot()
            rows = [_jobs.row(i) for i in infos if _jobs.matches(i, state, wanted)]
        except (ValueError, bgtask.BgTaskError, OSError) as exc:
            state, meta, rows, error = "all", "", [], _format.printable(str(exc))
        return self._render(request, "list.html", rows=rows, states=_jobs.STATE_FILTERS, state=state,
                            meta=meta, error=error)

    async def task_page(self, request: Request) -> Response:
        task = _jobs.async_task(self.pool, request.path_params["pid"])
        try:
            return await self._task_page(request, task)
        finally:
            _jobs.disconnect(task)

    async def _task_page(self, request: Request, task: Any) -> Response:
        try:
            info = await task.info(fresh=True)
        except bgtask.BgTaskError as exc:
            return HTMLResponse(f"<!doctype html><title>bgtask</title><p>{_format.printable(type(exc).__name__)}"
                                f": no such task</p>", status_code=404)
        t = _jobs.summary(info, await _jobs.usage_of(task))
        return self._render(request, "task.html", t=t, signals=SIGNALS)

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(self.static[name], media_type=STATIC_TYPES[name])

    # -- the JSON API ---------------------------------------------------------------------------

    async def api_tasks(self, request: Request) -> Response:
        try:
            state, _, wanted = self._filters(request)
            infos = await self.watcher.snapshot()
        except (ValueError, bgtask.BgTaskError) as exc:
            return _error(exc)
        return SafeJSON({"tasks": [dict(_jobs.row(i), info=_format.jsonable_info(i))
                                   for i in infos if _jobs.matches(i, state, wanted)]})

    async def api_task(self, request: Request) -> Response:
        task = _jobs.async_task(self.pool, request.path_params["pid"])
        try:
            return await self._api_task(request, task)
        finally:
            _jobs.disconnect(task)

    async def _api_task(self, request: Request, task: Any) -> Response:
        try:
            info = await task.info(fresh=True)
            usage = await _jobs.usage_of(task)
        except (bgtask.BgTaskError, ValueError) as exc:
            return _error(exc)
        return SafeJSON({"summary": _jobs.summary(info, usage), "info": _format.jsonable_info(info),
                         "usage": usage})

    async def api_stream(self, request: Request) -> Response:
        """``?start=&end=`` (or ``?tail=N``): a window of stdout/stderr as text (``raw=1``:
        the bytes), or data messages as JSON lines; never more than 1 MiB at once."""
        task = _jobs.async_task(self.pool, request.path_params["pid"])
        try:
            return await self._api_stream(request, task)
        finally:
            _jobs.disconnect(task)

    async def _api_stream(self, request: Request, task: Any) -> Response:
        name = request.path_params["name"]
        try:
            start, end, tail = _int(request, "start"), _int(request, "end"), _int(request, "tail")
            if name in ("stdout", "stderr"):
                stream = task.stream(name)
                if request.query_params.get("raw") == "1":
                    return await self._raw(stream, start, end, tail)
                line = request.query_params.get("align") == "line"
                return SafeJSON(dict(await _jobs.read_window(stream, start, end, tail, line), stream=name))
            if name == "data":
                return SafeJSON(await self._messages(task.stream("data"), start, end, tail))
            raise ValueError(f"unknown or unreadable stream {name!r} (stdout, stderr, data)")
        except (bgtask.BgTaskError, ValueError) as exc:
            return _error(exc)

    async def _raw(self, stream: Any, start: int | None, end: int | None, tail: int | None) -> Response:
        first, limit = await stream.bounds()
        end = limit if end is None else min(end, limit)
        start = max(end - tail, first) if tail is not None else max(first, start or 0)
        end = max(start, min(end, start + _jobs.MAX_WINDOW))
        data = await stream.read(start, end) if end > start else b""
        # An attachment of octets: no browser renders a job's bytes as a page.
        return Response(data, media_type="application/octet-stream",
                        headers={"content-disposition": "attachment", "x-start": str(start),
                                 "x-end": str(start + len(data)), "x-limit": str(limit)})

    async def _messages(self, stream: Any, start: int | None, end: int | None,
                        tail: int | None) -> dict[str, Any]:
        first, limit = await stream.bounds()
        end = limit if end is None else min(end, limit)
        if tail is not None:
            start = end - min(tail, _jobs.MAX_MESSAGES)
        start = max(first, start if start is not None else first)
        end = max(start, min(end, start + _jobs.MAX_MESSAGES))
        try:
            items = await stream.read(start, end) if end > start else []
        except bgtask.OutputGoneError as exc:  # read by someone meanwhile
            start = int(exc.start or end)
            items = await stream.read(start, end) if end > start else []
        return {"start": start, "end": start + len(items), "first": first, "limit": limit,
                "items": _jobs.message_items(list(items), start)}

    async def api_action(self, request: Request) -> Response:
        task = _jobs.async_task(self.pool, request.path_params["pid"])
        try:
            return await self._api_action(request, task)
        finally:
            _jobs.disconnect(task)

    async def _api_action(self, request: Request, task: Any) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            return SafeJSON({"error": f"no such action (one of {', '.join(ACTIONS)})"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            return SafeJSON({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return SafeJSON({"error": "the body must be a JSON object"}, status_code=400)
        try:
            return SafeJSON(await self._act(task, action, body))
        except (bgtask.BgTaskError, ValueError, TypeError, TimeoutError) as exc:
            return _error(exc)

    async def _act(self, task: Any, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "kill":
            sig = body.get("signal", "TERM")
            if isinstance(sig, bool) or not isinstance(sig, (str, int)):
                raise TypeError("signal is a name (\"TERM\") or a number")
            return {"ok": bool(await task.kill(sig))}  # an unknown signal: ValueError
        if action == "pause":
            return {"ok": bool(await task.pause())}
        if action == "resume":
            return {"ok": bool(await task.resume())}
        if action == "restart":
            info = await task.info(fresh=True)
            if (info.get("status") or {}).get("running"):
                # As `bgtask restart`: stop the running job first (TERM, KILL after grace).
                await task.stop()
            return {"ok": bool(await task.restart())}
        if action == "delete":
            await task.delete()
            return {"ok": True}
        if action == "stdin":
            text, close = body.get("text", ""), bool(body.get("close", False))
            if not isinstance(text, str):
                raise TypeError("stdin text must be a string")
            stream = task.stream("stdin")
            if text:
                await stream.write(text, timeout=5.0)
            if close:
                await stream.close()
            return {"ok": True, "sent": len(text.encode())}
        if action == "control":
            if "message" not in body:
                raise ValueError("a control message is {\"message\": <any JSON>}")
            await task.stream("control").write(body["message"])
            return {"ok": True}
        raise AssertionError(action)  # api_action let only ACTIONS through

    # -- event streams --------------------------------------------------------------------------

    async def api_list_events(self, request: Request) -> Response:
        try:
            state, _, wanted = self._filters(request)
        except ValueError as exc:
            return _error(exc)
        return StreamingResponse(self.watcher.rows(state, wanted), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    async def api_task_events(self, request: Request) -> Response:
        task = _jobs.async_task(self.pool, request.path_params["pid"])
        try:
            await task.info()
        except bgtask.BgTaskError as exc:
            # Not 200: an EventSource gives up instead of reconnecting to a task that is gone.
            return _error(exc)
        cursor = parse_cursor(request.headers.get("last-event-id"), dict(request.query_params))
        return StreamingResponse(TaskFeed(task, cursor).events(), media_type="text/event-stream",
                                 headers=SSE_HEADERS)


def create_app(pool: Any = None, *, token: str | None) -> Starlette:
    """The web view as an ASGI application (Starlette).

    :param pool: a :class:`~bgtask.TaskPool`, an ``AsyncTaskPool``, a path or URL, or
        None (the default pool).
    :param token: the secret every request must carry: ``?token=`` once (then a
        cookie) or ``Authorization: Bearer``. ``None``: no built-in auth, for an app
        mounted behind the host application's own; CSRF and same-origin checks, and the
        security headers, apply either way.
    """
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ValueError("token must be a string of at least 16 characters (or None)")
    view = WebView(pool)
    app = Starlette(routes=view.routes(), middleware=[Middleware(Guard, token=token)])
    app.state.view = view
    return app


__all__ = ["WebView", "create_app"]
