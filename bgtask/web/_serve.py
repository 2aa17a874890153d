"""``bgtask web``: serve the web view with uvicorn and print a URL carrying a fresh
token, the way Jupyter does; loopback unless told otherwise, loudly."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from typing import Any

from bgtask.web._app import create_app


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and names that only resolve there (``localhost``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addrs = {str(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def url_of(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/?token={token}"


def serve(pool: Any, host: str = "127.0.0.1", port: int = 0, *, out: Any = None) -> int:
    """Run the server until interrupted; returns the exit status."""
    import uvicorn  # only `bgtask web` needs it, not an app mounted elsewhere

    out = sys.stderr if out is None else out
    token = secrets.token_urlsafe(32)
    port = port or free_port(host)
    if not is_loopback(host):
        out.write(
            "\n"
            "  WARNING: the bgtask web view is listening on a non-loopback address\n"
            f"  ({host}). Anyone who can reach it and learns the token can read every\n"
            "  job's output and kill, restart or feed them. It is plain HTTP: the token\n"
            "  and the output cross the network unencrypted. Prefer --host 127.0.0.1\n"
            "  with an SSH tunnel, or mount bgtask.web.create_app behind your own HTTPS\n"
            "  and authentication.\n\n")
    out.write(f"bgtask web: serving the tasks of {pool or 'the default pool'}\n"
              f"open this URL (it carries the access token):\n\n    {url_of(host, port, token)}\n\n")
    out.flush()
    app = create_app(pool, token=token)
    config = uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning",
                            access_log=False, proxy_headers=False, server_header=False)
    uvicorn.Server(config).run()
    return 0


__all__ = ["free_port", "is_loopback", "serve", "url_of"]
