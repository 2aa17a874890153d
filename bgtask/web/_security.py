"""The web view's guard: one ASGI middleware in front of every page, file and API call.

* **Token** (when the app has one; the Jupyter model): ``?token=`` once, answered with
  an HttpOnly ``SameSite=Strict`` cookie and a redirect to the same URL without the
  token (so it stays out of history and logs); ``Authorization: Bearer`` for scripts.
  Flower and supervisord's page shipped without auth by default (CVE-2022-30034,
  CVE-2019-12105): here nothing answers without it.
* **CSRF**: every request that is not GET/HEAD needs ``X-CSRF-Token`` (an HMAC of a
  per-browser cookie, so one viewer's token is useless in another's browser), a JSON
  body, and a same-origin request (``Origin`` naming this host, ``Sec-Fetch-Site:
  same-origin`` where the browser sends it). Else 403.
* **No CORS**: no ``Access-Control-*`` header is ever sent; a preflight gets 403.
* **Headers** on every answer: a Content-Security-Policy with ``script-src 'self'`` (no
  inline script anywhere, so markup that slipped through could not run), nosniff,
  ``frame-ancestors 'none'``, no referrer, and no caching of job data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    # another site cannot even load our JSON as a script or image (no-cors requests)
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
SAFE_METHODS = ("GET", "HEAD")
CSRF_HEADER = "x-csrf-token"


def _headers(scope: Scope) -> dict[str, str]:
    # Latin-1 as HTTP says; a repeated header keeps its first value.
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is no cookie, not a 500
        return {}
    return {k: m.value for k, m in jar.items()}


def route_path(scope: Scope) -> str:
    """The path inside this app (a host app may have mounted it under a prefix)."""
    root, path = scope.get("root_path", "") or "", scope.get("path", "")
    return path[len(root):] if path.startswith(root) else path


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Guard:
    """The ASGI middleware described above, around *app*.

    :param token: the token every request must carry (None: no built-in auth).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self._secret = secrets.token_bytes(32)  # signs CSRF tokens; new per app

    # -- names and values -------------------------------------------------------------------

    def _suffix(self, scope: Scope) -> str:
        # Cookies ignore ports: two `bgtask web` on one host must not overwrite each
        # other's, hence the port in the name.
        server = scope.get("server") or ("", 0)
        return str(server[1] or "")

    def _auth_value(self) -> str:
        assert self.token is not None
        # The cookie is not the token itself: a cookie copied out of a browser does not
        # open a `?token=` URL.
        return hmac.new(self.token.encode(), b"bgtask-web-cookie", hashlib.sha256).hexdigest()

    def csrf_token(self, browser: str) -> str:
        return hmac.new(self._secret, browser.encode(), hashlib.sha256).hexdigest()

    # -- the middleware ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        cookies = _cookies(headers)
        suffix = self._suffix(scope)
        auth_name, browser_name = f"bgtask-auth-{suffix}", f"bgtask-browser-{suffix}"
        path_root = scope.get("root_path", "") or ""
        set_cookies: list[str] = []

        browser = cookies.get(browser_name, "")
        if len(browser) != 43:  # secrets.token_urlsafe(32); anything else is not ours
            browser = secrets.token_urlsafe(32)
            set_cookies.append(self._cookie(browser_name, browser, path_root))
        scope.setdefault("state", {})
        scope["state"]["bgtask_csrf"] = self.csrf_token(browser)

        if self.token is not None:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = next((v for k, v in query if k == "token"), None)
            bearer = headers.get("authorization", "")
            authed = _same(cookies.get(auth_name, ""), self._auth_value()) or (
                bearer.startswith("Bearer ") and _same(bearer[7:].strip(), self.token))
            if given is not None and _same(given, self.token):
                set_cookies.append(self._cookie(auth_name, self._auth_value(), path_root))
                if scope["method"] in SAFE_METHODS:
                    # Swap the token for the cookie, then show the same URL without it.
                    rest = urlencode([(k, v) for k, v in query if k != "token"])
                    where = path_root + route_path(scope)
                    await self._answer(send, 303, b"", set_cookies,
                                       [(b"location", (where + ("?" + rest if rest else "")).encode())])
                    return
                authed = True
            if not authed:
                await self._refuse(scope, send, 401, "this bgtask web view needs its token: open the "
                                   "URL that 'bgtask web' printed", set_cookies)
                return

        if scope["method"] not in SAFE_METHODS:
            why = self._csrf_problem(scope, headers)
            if why:
                await self._refuse(scope, send, 403, why, set_cookies)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k, v) for k, v in SECURITY_HEADERS
                         if not any(h[0].lower() == k for h in message.get("headers", []))]
                cookies_out = [(b"set-cookie", c.encode()) for c in set_cookies]
                message["headers"] = [*message.get("headers", []), *extra, *cookies_out]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _csrf_problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        """Why this state-changing request is refused (None: it is not)."""
        host = headers.get("host", "")
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc != host or not host):
            return "cross-origin request refused"
        site = headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            return "cross-site request refused"
        given = headers.get(CSRF_HEADER, "")
        if not given or not _same(given, scope["state"]["bgtask_csrf"]):
            return "missing or wrong CSRF token (send the page's X-CSRF-Token header)"
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            # A plain HTML form cannot send JSON: one more thing a forged request lacks.
            return "state-changing requests take a JSON body (Content-Type: application/json)"
        return None

    @staticmethod
    def _cookie(name: str, value: str, path_root: str) -> str:
        return f"{name}={value}; Path={path_root or '/'}; HttpOnly; SameSite=Strict"

    async def _refuse(self, scope: Scope, send: Send, status: int, why: str, set_cookies: list[str]) -> None:
        api = route_path(scope).startswith("/api/")
        if api:
            body = json.dumps({"error": why}).encode()
            ctype = b"application/json"
        else:  # no stylesheet here: it would be refused too
            body = (f"<!doctype html><meta charset=utf-8><title>bgtask: {status}</title>"
                    f"<h1>{status}</h1><p>{why}</p>").encode()
            ctype = b"text/html; charset=utf-8"
        await self._answer(send, status, body, set_cookies, [(b"content-type", ctype)])

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes, set_cookies: list[str],
                      headers: list[tuple[bytes, bytes]]) -> None:
        all_headers = [*headers, *SECURITY_HEADERS, (b"content-length", str(len(body)).encode()),
                       *[(b"set-cookie", c.encode()) for c in set_cookies]]
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body})


__all__ = ["CSP", "CSRF_HEADER", "SECURITY_HEADERS", "Guard", "route_path"]
