"""bgtask.web over HTTP (a real uvicorn server on loopback, httpx as the client): the
token and its cookie, CSRF and same-origin checks, the security headers and no CORS, the
XSS corpus in pages and JSON, range reads, SSE resumed by Last-Event-ID, the app
mounted under a prefix, and ``bgtask web`` itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from webserver import Server  # noqa: E402

import bgtask  # noqa: E402
from bgtask.web import _jobs, _serve, create_app  # noqa: E402

pytestmark = [pytest.mark.timeout(60)]

TOKEN = "test-token-" + "x" * 24
#: what a job prints, a client sets as meta, or a command line holds, that must never run.
CORPUS = [
    "<script>window.pwned=1</script>",
    "<img src=x onerror=\"window.pwned=2\">",
    "\"><svg onload=\"window.pwned=3\">",
    "javascript:window.pwned=4",
    "\x1b]8;;javascript:window.pwned=5\x1b\\click me\x1b]8;;\x1b\\",
    "</textarea><script>document.title='pwned'</script>",
]


def csrf_of(html: str) -> str:
    m = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert m, "the page carries its CSRF token"
    return m.group(1)


@pytest.fixture
def server(pool: bgtask.TaskPool) -> Iterator[Server]:
    with Server(create_app(pool, token=TOKEN)) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """A client that opened the token URL: it holds the cookie."""
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True) as c:
        r = c.get(f"/?token={TOKEN}")
        assert r.status_code == 200 and "token" not in str(r.url)
        yield c


def post(c: httpx.Client, path: str, body: Any, csrf: str, **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/json", "X-CSRF-Token": csrf, "Origin": str(c.base_url).rstrip("/"),
         "Sec-Fetch-Site": "same-origin", **headers}
    return c.post(path, content=json.dumps(body), headers=h)


# -- the token ------------------------------------------------------------------------------


def test_every_page_file_and_api_call_needs_the_token(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True) as c:
        for path in ("/", "/tasks/1", "/static/app.js", "/api/tasks", "/api/tasks/1", "/api/events"):
            assert c.get(path).status_code == 401, path
        assert c.get("/api/tasks?token=wrong" + "x" * 30).status_code == 401
        r = c.get("/api/tasks")
        assert r.json() == {"error": r.json()["error"]} and "token" in r.json()["error"]


def test_the_token_url_becomes_an_httponly_strict_cookie(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True) as c:
        r = c.get(f"/?token={TOKEN}&state=running", follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/?state=running"  # the token leaves the address bar
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert c.get("/api/tasks").status_code == 200  # the cookie is enough from now on
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True) as c:  # scripts: a bearer token
        assert c.get("/api/tasks", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_security_headers_and_no_cors(client: httpx.Client) -> None:
    for path in ("/", "/api/tasks", "/static/app.js"):
        r = client.get(path, headers={"Origin": "https://evil.example"})
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not any(k.lower().startswith("access-control-") for k in r.headers), path
    r = client.options("/api/tasks", headers={"Origin": "https://evil.example",
                                              "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    html = client.get("/").text
    assert "<script>" not in html and "onclick" not in html  # no inline script of our own


# -- CSRF ------------------------------------------------------------------------------------


def test_state_changes_need_csrf_json_and_the_same_origin(client: httpx.Client, spawn: Any) -> None:
    task = spawn(["sleep", "30"])
    csrf = csrf_of(client.get(f"/tasks/{task.pid}").text)
    path = f"/api/tasks/{task.pid}/kill"
    assert post(client, path, {}, "").status_code == 403
    assert post(client, path, {}, "0" * 64).status_code == 403
    assert post(client, path, {}, csrf, Origin="https://evil.example").status_code == 403
    assert post(client, path, {}, csrf, Origin="null").status_code == 403
    assert post(client, path, {}, csrf, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    form = client.post(path, data={"signal": "KILL"}, headers={"X-CSRF-Token": csrf})
    assert form.status_code == 403  # a form cannot send JSON
    # Another browser (its own cookie) cannot use this browser's CSRF token.
    with httpx.Client(base_url=str(client.base_url), timeout=10, follow_redirects=True) as other:
        other.get(f"/?token={TOKEN}")
        assert post(other, path, {}, csrf).status_code == 403
    assert task.info(fresh=True)["status"]["running"]
    r = post(client, path, {"signal": "KILL"}, csrf)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert task.wait(10) == -9


def test_actions_and_inputs(client: httpx.Client, spawn: Any) -> None:
    script = ("import bgtask,sys\nline=sys.stdin.readline()\nprint('got', line.strip(), flush=True)\n"
              "m=bgtask.current().stream('control').read(timeout=20)\nprint('control', m, flush=True)\n")
    task = spawn([sys.executable, "-c", script])
    csrf = csrf_of(client.get(f"/tasks/{task.pid}").text)
    assert post(client, f"/api/tasks/{task.pid}/stdin", {"text": "hello <b>\n"}, csrf).json()["ok"]
    assert post(client, f"/api/tasks/{task.pid}/control", {"message": {"cmd": "go", "n": [1, 2]}}, csrf).json()["ok"]
    assert task.wait(20) == 0
    assert task.stream("stdout").read(0) == b"got hello <b>\ncontrol [{'cmd': 'go', 'n': [1, 2]}]\n"
    assert post(client, f"/api/tasks/{task.pid}/bogus", {}, csrf).status_code == 404
    assert post(client, f"/api/tasks/{task.pid}/kill", {"signal": "NOPE"}, csrf).status_code == 400
    assert post(client, f"/api/tasks/{task.pid}/restart", {}, csrf).json()["ok"]
    assert post(client, f"/api/tasks/{task.pid}/pause", {}, csrf).status_code == 200
    assert post(client, f"/api/tasks/{task.pid}/resume", {}, csrf).status_code == 200
    assert post(client, f"/api/tasks/{task.pid}/delete", {}, csrf).json()["ok"]
    assert client.get(f"/api/tasks/{task.pid}").status_code == 404


# -- nothing runs ------------------------------------------------------------------------------


def test_the_xss_corpus_is_inert_in_pages_and_json(client: httpx.Client, spawn: Any) -> None:
    text = "\n".join(CORPUS) + "\n"
    task = spawn(["sh", "-c", 'printf "%s" "$0"', text, *CORPUS], meta={"name": CORPUS[0], **{f"k{i}": c for i, c in enumerate(CORPUS)}})
    task.wait(10)
    pages = [client.get("/").text, client.get(f"/tasks/{task.pid}").text]
    for html in pages:
        for needle in ("<script>window", "<img", "<svg", "</textarea><script"):
            assert needle not in html
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
        assert not re.search(r"""href=["']?javascript:""", html)
    for path in ("/api/tasks", f"/api/tasks/{task.pid}", f"/api/tasks/{task.pid}/streams/stdout"):
        r = client.get(path)
        assert r.headers["content-type"].startswith("application/json")
        assert "<" not in r.text and ">" not in r.text, path  # escaped as \u003c even in JSON
    assert client.get(f"/api/tasks/{task.pid}/streams/stdout").json()["text"] == text
    info = client.get(f"/api/tasks/{task.pid}").json()
    assert info["info"]["meta"]["name"] == CORPUS[0] and info["info"]["argv"][4:] == CORPUS


# -- output windows and the live stream --------------------------------------------------------


def test_range_reads_are_exact_and_capped(client: httpx.Client, spawn: Any) -> None:
    task = spawn([sys.executable, "-c", "import sys; sys.stdout.write('é' * 3000 + 'end\\n')"])
    task.wait(10)
    url = f"/api/tasks/{task.pid}/streams/stdout"
    full = client.get(url).json()
    assert (full["start"], full["end"], full["limit"]) == (0, 6004, 6004)
    odd = client.get(url, params={"start": 101, "end": 201}).json()  # starts inside a character
    assert (odd["start"], odd["end"]) == (102, 200)
    a = client.get(url, params={"start": 102, "end": 201}).json()
    assert a["end"] == 200 and a["text"] == "é" * 49  # the cut character waits for the next window
    b = client.get(url, params={"start": a["end"], "end": 300}).json()
    assert b["start"] == 200 and b["text"] == "é" * 50
    assert client.get(url, params={"tail": 10}).json()["text"] == "ééé" + "end\n"
    assert client.get(url, params={"start": "x"}).status_code == 400
    raw = client.get(url, params={"start": 0, "end": 4, "raw": 1})
    assert raw.content == "éé".encode() and raw.headers["content-disposition"] == "attachment"
    assert _jobs.MAX_WINDOW == 1 << 20


def test_cut_window_keeps_offsets_exact() -> None:
    data = "aé€😀\n".encode() * 3
    for cut in range(1, len(data)):
        a0, b0, t0 = _jobs.cut_window(data[:cut], 0, head=False, line=False, tail=True)
        a1, b1, t1 = _jobs.cut_window(data[b0:], b0, head=False, line=False, tail=False)
        assert (a0, b1) == (0, len(data)) and t0 + t1 == data.decode()


def read_sse(r: httpx.Response, got: dict[str, str], done: Any, deadline: float) -> str:
    """Adds each ``out`` event's text to *got* until ``done()``; returns the last id."""
    last, ev = "", {}
    for line in r.iter_lines():
        if not line:
            if ev.get("event") == "out":
                got[ev["data"]["s"]] += ev["data"]["t"]
            last = ev.get("id", last)
            ev = {}
            if done() or time.monotonic() > deadline:
                break
            continue
        key, _, value = line.partition(": ")
        ev[key] = json.loads(value) if key == "data" else value
    return last


def test_sse_resumes_by_last_event_id_with_nothing_lost_or_repeated(client: httpx.Client, spawn: Any) -> None:
    script = ("import sys,time\nfor i in range(40):\n    sys.stdout.write(f'line {i} é\\n'); sys.stdout.flush()\n"
              "    sys.stderr.write(f'err {i}\\n'); sys.stderr.flush(); time.sleep(0.02)\n")
    task = spawn([sys.executable, "-c", script])
    url = f"/api/tasks/{task.pid}/events"
    got = {"stdout": "", "stderr": ""}
    deadline = time.monotonic() + 30
    with client.stream("GET", url, params={"stdout": 0, "stderr": 0, "data": 0}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        last = read_sse(r, got, lambda: got["stdout"].count("\n") >= 5, deadline)
    assert re.fullmatch(r"\d+,\d+,\d+", last), last
    assert last.split(",")[0] == str(len(got["stdout"].encode()))
    task.wait(20)  # the rest is written while nobody is connected
    with client.stream("GET", url, headers={"Last-Event-ID": last}) as r:  # what a browser sends
        read_sse(r, got, lambda: got["stdout"].count("\n") >= 40 and got["stderr"].count("\n") >= 40, deadline)
    assert got["stdout"] == "".join(f"line {i} é\n" for i in range(40))
    assert got["stderr"] == "".join(f"err {i}\n" for i in range(40))


# -- embedding -------------------------------------------------------------------------------------


def test_mounted_under_a_prefix_without_a_token(pool: bgtask.TaskPool, spawn: Any) -> None:
    import socket

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the host app")

    host = Starlette(routes=[Route("/", home), Mount("/jobs", app=create_app(pool, token=None))])
    task = spawn(["sleep", "30"])
    with Server(host) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        html = c.get("/jobs/").text
        assert f'href="/jobs/tasks/{task.pid}"' in html and 'src="/jobs/static/app.js"' in html
        page = c.get(f"/jobs/tasks/{task.pid}").text
        assert c.get("/jobs/static/app.js").status_code == 200
        assert c.get(f"/jobs/api/tasks/{task.pid}").json()["info"]["pid"] == task.pid
        # No token, but CSRF and same-origin still hold.
        assert post(c, f"/jobs/api/tasks/{task.pid}/pause", {}, "").status_code == 403
        assert post(c, f"/jobs/api/tasks/{task.pid}/pause", {}, csrf_of(page)).json() == {"ok": True}
        # 20 viewers holding their live streams open do not block the host app.
        viewers = []
        try:
            for i in range(20):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                path = f"/jobs/api/tasks/{task.pid}/events" if i % 2 else "/jobs/api/events"
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                viewers.append(s)
            assert all(s.recv(12).startswith(b"HTTP/1.1 200") for s in viewers)
            # Blocked, this request would hang until the client's timeout.
            assert c.get("/", timeout=5.0).text == "the host app"
        finally:
            for s in viewers:
                s.close()


# -- bgtask web -------------------------------------------------------------------------------------


def test_bgtask_web_prints_a_token_url_on_loopback(pool_dir: str, spawn: Any) -> None:
    task = spawn(["sleep", "30"])
    with subprocess.Popen([sys.executable, "-m", "bgtask", "web", "--pool", pool_dir],
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            url = ""
            for line in proc.stderr:
                if "?token=" in line:
                    url = line.strip()
                    break
            assert url.startswith("http://127.0.0.1:"), url
            with httpx.Client(timeout=10, follow_redirects=True) as c:
                for _ in range(100):  # the URL is printed just before uvicorn listens
                    try:
                        r = c.get(url)
                        break
                    except httpx.ConnectError:
                        time.sleep(0.05)
                assert r.status_code == 200 and str(task.pid) in r.text
            with httpx.Client(timeout=10) as stranger:
                assert stranger.get(url.split("?")[0] + "?token=nope" + "x" * 30).status_code == 401
        finally:
            proc.terminate()
            proc.wait(10)


def test_a_non_loopback_address_gets_a_loud_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    for host, loud in (("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True)):
        out = io.StringIO()
        _serve.serve(None, host, 12345, out=out)
        assert ("WARNING" in out.getvalue()) == loud, host
        assert "?token=" in out.getvalue()
    assert not _serve.is_loopback("192.0.2.1")


def test_import_bgtask_and_the_cli_never_import_starlette() -> None:
    code = "import sys, bgtask, bgtask.cli; sys.exit('starlette' in sys.modules or 'uvicorn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
