"""What ``spawn()`` and the fork server (``_supervisor/template.py``) agree on: file
suffixes and the request.

A request is :data:`REQUEST` + the template's token (:data:`TOKEN_SIZE` bytes, read by
the client from the template's 0600 token file) + the umask (4 bytes) + the spec's
length (4 bytes) + the spec; the supervisor forked for it then reports on the same
connection. No challenge round trip: both ends check ``SO_PEERCRED`` (the client that
the listener is our uid before it sends the token, the template that the client is),
on a 0600 socket that only its owner (and root) can connect to, and nobody can read a
Unix socket's traffic: a nonce would protect against a replay nobody can make, at the
price of a round trip (two process wake-ups, ~0.7 ms of a ~2.5 ms spawn).

Stdlib only, imported lazily: neither side needs it on its fast path.
"""

from __future__ import annotations

#: the template's files in the pool (see ``_paths.template_path``).
SOCK, TOKEN, LOCK = ".sock", ".token", ".lock"
#: what a request starts with; the number is the protocol's version (it is also part of
#: the template's key, so that a client never talks to a template of another version).
REQUEST = b"bgtask-template-2\n"
#: the token's size in bytes.
TOKEN_SIZE = 32
#: the fixed part of a request: magic, token, umask, spec length.
HEADER = len(REQUEST) + TOKEN_SIZE + 4 + 4


__all__ = ["HEADER", "LOCK", "REQUEST", "SOCK", "TOKEN", "TOKEN_SIZE"]
