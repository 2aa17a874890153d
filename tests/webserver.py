"""The web view's tests: a real uvicorn server on a free loopback port, in a thread of
the test process (so that the pool fixture still sees every process a test started),
stopped at the end of its ``with`` block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import uvicorn


class Counted:
    """An ASGI wrapper that counts the body bytes the app sends (what a browser got)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent = 0

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        async def counting(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)


class Server:
    def __init__(self, app: Any, port: int = 0) -> None:
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        # critical: stopping the server cancels the live streams still open, which uvicorn
        # logs as errors (expected here: every test ends with a page still open)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", ws="none",
                                http="h11", lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)
