"""The baselines' server processes, each started by a benchmark and ended by it.

``python _peers.py KIND ADDRESS``; prints one line when it is ready to be connected to.

* ``raw-conn``: a ``multiprocessing.connection`` Listener; answers each request (a block
  index, 8 bytes) with ``send_bytes`` of that 1 MiB block of the pattern.
  ``raw-conn-4m``: the same with a 4 MiB send buffer (``SO_SNDBUF``), as a supervisor has.
* ``manager``: a naive ``BaseManager`` server whose registered ``Blobs`` object has
  ``read(i)`` (returns block *i* as ``bytes``), ``ping()`` (returns None) and ``info()``
  (returns a dict shaped like a task's info).
* ``idle-manager``: the same server, for the idle memory baseline.
* ``daemon-manager``: a naive detached server: double fork, then the same manager; prints
  the server's pid. The spawn baseline times it from start to its first answer.
"""

from __future__ import annotations

import os
import socket
import sys
from multiprocessing import connection
from multiprocessing.managers import BaseManager

AUTHKEY = b"bgtask-bench"
NBLOCKS = 64


def _blocks() -> list[bytes]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import block

    return [block(i) for i in range(NBLOCKS)]


def _stream(**extra: object) -> dict:
    return {"start": 0, "cursor": 0, "limit": 0, "unread": 0, "eof": False, **extra}


#: a dict shaped like a bgtask task's info(), for a baseline call that returns as much.
INFO_LIKE = {
    "pid": 12345, "child_pid": 12346, "argv": ["sleep", "600"], "command": None, "shell": False,
    "cwd": "/work/main", "meta": {"name": b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00\x8c\x05bench\x94."},
    "owner": 0, "lock": None, "created_at": 1.5e9, "started_at": 1.5e9, "ended_at": None,
    "restarts": 0, "state": "running",
    "status": {"running": True, "paused": False, "exit_code": None, "signal": None, "returncode": None},
    "streams": {
        "stdin": _stream(delivered=0, discarded=0),
        "stdout": _stream(dropped=0, retain_output=0, max_buffer=64 << 20),
        "stderr": _stream(dropped=0, retain_output=0, max_buffer=64 << 20),
        "data": _stream(bytes=0), "control": _stream(bytes=0),
    },
}


class Blobs:
    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks

    def read(self, i: int) -> bytes:
        return self.blocks[i]

    def ping(self) -> None:
        return None

    def info(self) -> dict:
        return INFO_LIKE


def _manager(address: str, blocks: list[bytes]) -> BaseManager:
    shared = Blobs(blocks)
    BaseManager.register("Blobs", callable=lambda: shared)
    return BaseManager(address=address, authkey=AUTHKEY)


def raw_conn(address: str, sndbuf: int = 0) -> None:
    blocks = _blocks()
    listener = connection.Listener(address, "AF_UNIX", authkey=AUTHKEY)
    print("ready", flush=True)
    conn = listener.accept()
    if sndbuf:
        sock = socket.socket(fileno=conn.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.detach()
    while True:
        try:
            req = conn.recv_bytes()
        except (EOFError, OSError):
            return
        conn.send_bytes(blocks[int.from_bytes(req, "little")])


def manager(address: str, blocks: list[bytes]) -> None:
    server = _manager(address, blocks).get_server()
    print("ready", flush=True)
    server.serve_forever()


def daemon_manager(address: str) -> None:
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        pid = os.read(r, 64).decode().strip()
        print(pid, flush=True)
        os._exit(0)
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.write(w, f"{os.getpid()}\n".encode())
    os.close(w)
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    server = _manager(address, []).get_server()
    server.serve_forever()


def main() -> None:
    kind, address = sys.argv[1], sys.argv[2]
    if kind == "raw-conn":
        raw_conn(address)
    elif kind == "raw-conn-4m":
        raw_conn(address, 4 << 20)
    elif kind == "manager":
        manager(address, _blocks())
    elif kind == "idle-manager":
        manager(address, [])
    elif kind == "daemon-manager":
        daemon_manager(address)
    else:
        raise SystemExit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main()
