"""What ``spawn()`` and the fork server (``_supervisor/template.py``) agree on: file
suffixes, the greeting, and the proof that a client knows the template's token.

Stdlib only, imported lazily: neither side needs it on its fast path.
"""

from __future__ import annotations

#: the template's files in the pool (see ``_paths.template_path``).
SOCK, TOKEN, LOCK = ".sock", ".token", ".lock"
#: the server's greeting, then a nonce of :data:`NONCE` bytes.
HELLO = b"bgtask-template-1\n"
NONCE = 32


def proof(token: bytes, nonce: bytes) -> bytes:
    """What a client sends to show it knows *token* (HMAC-SHA256 of the nonce)."""
    import hashlib
    import hmac

    return hmac.new(token, b"bgtask template\0" + nonce, hashlib.sha256).digest()


__all__ = ["HELLO", "LOCK", "NONCE", "SOCK", "TOKEN", "proof"]
