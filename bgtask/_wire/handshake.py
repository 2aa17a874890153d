"""The handshake: mutual HMAC authentication, then the hello that exchanges versions.

It is ``multiprocessing.connection``'s challenge/response, owned here so that it does not
change under us (it did in 3.12) and so that it needs no blocking connection: these are
sans-I/O state machines. Feed them the bytes that arrive (:meth:`receive_data`), send
what they have to say (:meth:`data_to_send`), and stop when they are :attr:`done`. The
same objects serve the blocking client, the supervisor and any future asyncio or ssh
client. The exchange, one framed message per line (``_wire.framing``)::

    server -> client   #CHALLENGE#{sha256}<40 random bytes>
    client -> server   {sha256}HMAC(authkey, "{sha256}<random>")   (3.11: a bare HMAC-MD5)
    server -> client   #WELCOME#  (or #FAILURE#, then it hangs up)
    client -> server   #CHALLENGE#{sha256}<40 random bytes>        (the other way round)
    server -> client   {sha256}HMAC(...)
    client -> server   #WELCOME#
    client -> server   a pickled request: (None, "accept_connection", (name, version), {})
    server -> client   ("#RETURN", the supervisor's PROTOCOL_VERSION)

The server accepts both response formats, as ``multiprocessing`` 3.12 does: a modern
``{digest}mac`` and a legacy 16-byte HMAC-MD5 (the stock client of 3.8-3.11 answers the
whole prefixed challenge with one). So a stock ``BaseManager`` client of any of these
versions can connect; it sends no version in its hello, and its calls keep working.
Nothing the peer sends is unpickled before it has proven it knows the authkey.
"""

from __future__ import annotations

import os
import pickle

from bgtask._wire.framing import FrameDecoder, ProtocolError, frame
from bgtask._wire.names import PROTOCOL_VERSION

# The supervisor imports this module: typing is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
#: random bytes per challenge (3.12's length; 3.11 used 20).
NONCE_LENGTH = 40
#: the digest we ask for, and those we accept from a peer that picks its own.
DIGEST = "sha256"
ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_LEN = max(len(d) for d in ALLOWED_DIGESTS)
#: a legacy (unprefixed) message is a 20-byte challenge or a 16-byte HMAC-MD5.
_LEGACY_LENGTHS = (20, 16)
#: the longest handshake message, as multiprocessing reads them (``recv_bytes(256)``).
MAX_AUTH_MESSAGE = 256
#: the longest first request (the hello, or a stock client's first server command).
MAX_FIRST_REQUEST = 64 * 1024
#: the server's one deadline for the whole handshake, from accept to the first request.
HANDSHAKE_DEADLINE = 10.0
#: the client's name in its hello.
CLIENT_NAME = "bgtask-client"


class AuthenticationFailed(ProtocolError):
    """The peer does not know the authkey (or rejected ours)."""


class VersionMismatch(ProtocolError):
    """The two ends speak different protocol versions.

    :ivar ours: this side's :data:`PROTOCOL_VERSION`.
    :ivar theirs: the peer's.
    """

    def __init__(self, ours: int, theirs: object) -> None:
        super().__init__(f"protocol version mismatch: this bgtask speaks version {ours}, "
                         f"the supervisor version {theirs!r}")
        self.ours = ours
        self.theirs = theirs


def _split_digest(message: bytes) -> tuple[str, bytes]:
    """``(digest name, payload)`` of a challenge or response; name ``""``: legacy MD5."""
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message.startswith(b"{"):
        curly = message.find(b"}", 1, _MAX_DIGEST_LEN + 2)
        if curly > 0 and message[1:curly] in ALLOWED_DIGESTS:
            return message[1:curly].decode("ascii"), message[curly + 1:]
    raise AuthenticationFailed("unsupported message length, digest prefix or digest")


def new_challenge() -> tuple[bytes, bytes]:
    """``(message, framed)``: a fresh challenge body and the frame that carries it."""
    message = b"{%s}%s" % (DIGEST.encode("ascii"), os.urandom(NONCE_LENGTH))
    return message, frame(CHALLENGE + message)


def respond(authkey: bytes, challenge: bytes) -> bytes:
    """The response to the challenge body *challenge* (the MAC covers its prefix too)."""
    import hmac

    name = _split_digest(challenge)[0]
    if not name:  # a legacy peer: a bare HMAC-MD5
        return hmac.new(authkey, challenge, "md5").digest()
    return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, challenge, name).digest())


def verify(authkey: bytes, challenge: bytes, response: bytes) -> bool:
    """Is *response* right for our challenge body *challenge*? The peer may choose any
    allowed digest: it cannot downgrade ours, the MAC covers our ``{digest}`` prefix."""
    import hmac

    try:
        name, mac = _split_digest(response)
    except AuthenticationFailed:
        return False
    try:
        expected = hmac.new(authkey, challenge, name or "md5").digest()
    except ValueError:  # a digest this interpreter lacks (FIPS: no md5)
        return False
    return hmac.compare_digest(expected, mac)


class _Machine:
    """What both ends share: a frame decoder, an output buffer and a step per message."""

    def __init__(self, authkey: bytes) -> None:
        self._authkey = bytes(authkey)
        self._decoder = FrameDecoder(MAX_AUTH_MESSAGE)
        self._out: list[bytes] = []
        self._challenge = b""
        self.done = False

    def data_to_send(self) -> bytes:
        """What to send now (possibly nothing); send it even after an error was raised:
        it may be the ``#FAILURE#`` that tells the peer why it is hung up on."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; empty *data* means it hung up.

        :raises EOFError: the peer hung up before the handshake was done.
        :raises AuthenticationFailed: the peer does not know the authkey.
        :raises ProtocolError: the peer does not speak this protocol.
        """
        if not data:
            raise EOFError("the peer hung up during the handshake")
        if self.done:
            raise ProtocolError("the peer sent data out of turn")
        self._decoder.feed(data)
        while not self.done:
            message = self._decoder.next_message()
            if message is None:
                return
            self._step(message)
        if self._decoder.buffered:
            # Neither end sends anything more before its first message is answered.
            raise ProtocolError("the peer sent data out of turn")

    def _step(self, message: bytes) -> None:
        raise NotImplementedError

    def _answer(self, message: bytes) -> None:
        if not message.startswith(CHALLENGE):
            raise ProtocolError("expected an authentication challenge")
        body = message[len(CHALLENGE):]
        if len(body) < 20:
            raise ProtocolError("the authentication challenge is too short")
        self._out.append(frame(respond(self._authkey, body)))

    def _check(self, response: bytes) -> None:
        if verify(self._authkey, self._challenge, response):
            self._out.append(frame(WELCOME))
        else:
            self._out.append(frame(FAILURE))
            raise AuthenticationFailed("the peer does not know the authkey")


class ServerHandshake(_Machine):
    """The supervisor's end: challenge, answer, then the first request (:attr:`request`).

    It has something to send from the start (the challenge).
    """

    def __init__(self, authkey: bytes) -> None:
        super().__init__(authkey)
        self._challenge, out = new_challenge()
        self._out.append(out)
        self._stage = 0
        #: the client's first request, unpickled, once :attr:`done`.
        self.request: Any = None

    def _step(self, message: bytes) -> None:
        stage = self._stage
        self._stage += 1
        if stage == 0:
            self._check(message)
        elif stage == 1:
            self._answer(message)
        elif stage == 2:
            if message != WELCOME:
                raise AuthenticationFailed("the peer rejected our response")
            self._decoder.max_size = MAX_FIRST_REQUEST  # authenticated: a pickled request
        else:
            try:
                self.request = pickle.loads(message)
            except Exception as exc:
                raise ProtocolError(f"the first request cannot be unpickled: {exc!r}") from None
            self.done = True


def hello_version(request: Any) -> tuple[bool, object]:
    """Is *request* a well-formed ``accept_connection`` hello, and which version does it
    carry? A stock client's ``(name,)`` carries none: ``(True, None)``."""
    try:
        _ident, funcname, args, _kwds = request
    except (TypeError, ValueError):
        return False, None
    if funcname != "accept_connection" or not isinstance(args, tuple) or not 1 <= len(args) <= 2:
        return False, None
    return True, args[1] if len(args) == 2 else None


class ClientHandshake(_Machine):
    """bgtask's client end: answer, challenge, say hello with our version, and check
    the supervisor's (:attr:`peer_version`). It speaks only when spoken to: read first.

    Its response and its own challenge go out together, as do its welcome and its hello,
    so the handshake costs three round trips, not four.
    """

    def __init__(self, authkey: bytes, version: int = PROTOCOL_VERSION) -> None:
        super().__init__(authkey)
        self._version = version
        self._stage = 0
        #: the supervisor's protocol version, once :attr:`done`.
        self.peer_version: object = None

    def _step(self, message: bytes) -> None:
        stage = self._stage
        self._stage += 1
        if stage == 0:
            self._answer(message)
            self._challenge, out = new_challenge()
            self._out.append(out)
        elif stage == 1:
            if message == FAILURE:
                raise AuthenticationFailed("the supervisor rejected our response")
            if message != WELCOME:
                raise ProtocolError("expected the supervisor's welcome")
        elif stage == 2:
            self._check(message)
            hello: tuple[Any, ...] = (None, "accept_connection", (CLIENT_NAME, self._version), {})
            self._out.append(frame(pickle.dumps(hello, protocol=pickle.HIGHEST_PROTOCOL)))
            self._decoder.max_size = MAX_FIRST_REQUEST  # authenticated: a pickled reply
        else:
            try:
                kind, result = pickle.loads(message)
            except Exception as exc:
                raise ProtocolError(f"the supervisor's welcome cannot be unpickled: {exc!r}") from None
            if kind != "#RETURN":
                raise ProtocolError(f"the supervisor refused the connection: {result}")
            self.peer_version = result
            self.done = True
            if result != self._version:
                raise VersionMismatch(self._version, result)


__all__ = ["ALLOWED_DIGESTS", "CHALLENGE", "CLIENT_NAME", "FAILURE", "HANDSHAKE_DEADLINE", "WELCOME",
           "AuthenticationFailed", "ClientHandshake", "ServerHandshake", "VersionMismatch",
           "hello_version", "new_challenge", "respond", "verify"]
