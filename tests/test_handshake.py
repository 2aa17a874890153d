"""The wire without I/O: framing and the handshake's state machines, against each other,
against the running interpreter's stock ``multiprocessing`` client and server, and
against a real supervisor (versions)."""

from __future__ import annotations

import hmac
import os
import socket
import threading
from multiprocessing import connection as mpc

import pytest

import bgtask
from bgtask import _paths
from bgtask._wire.faults import ProtocolMismatchError, map_fault
from bgtask._wire.framing import FrameDecoder, ProtocolError, encode_header, frame, parse_header
from bgtask._wire.handshake import (
    AuthenticationFailed,
    ClientHandshake,
    ServerHandshake,
    VersionMismatch,
    respond,
    verify,
)
from bgtask._wire.names import PROTOCOL_VERSION

KEY = b"k" * 32

# -- framing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 255, 0x7FFFFFFF, 0x80000000, 2**40])
def test_header_round_trip(size: int) -> None:
    head = encode_header(size)
    assert len(head) == (4 if size <= 0x7FFFFFFF else 12)
    assert parse_header(head) == (size, len(head))
    assert parse_header(head[:-1]) is None  # incomplete


def test_decoder_takes_bytes_one_at_a_time() -> None:
    data = frame(b"hello") + frame(b"") + frame(b"x" * 70000)
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i:i + 1])
        while (msg := dec.next_message()) is not None:
            got.append(msg)
    assert got == [b"hello", b"", b"x" * 70000]
    assert dec.buffered == 0


def test_decoder_refuses_bad_and_oversized_lengths() -> None:
    dec = FrameDecoder()
    dec.feed(b"\xff\xff\xff\xfe")  # -2: neither a length nor the long marker
    with pytest.raises(ProtocolError):
        dec.next_message()
    dec = FrameDecoder(max_size=256)
    dec.feed(encode_header(257))
    with pytest.raises(ProtocolError):
        dec.next_message()  # refused before 257 bytes are even awaited


# -- the handshake between our two machines ------------------------------------------------------


def test_our_client_and_server_agree_and_exchange_versions() -> None:
    client, server = ClientHandshake(KEY), ServerHandshake(KEY)
    assert client.data_to_send() == b""  # the server speaks first; the client only answers
    # The server's answer to the hello is not part of its machine: play it by hand.
    while not server.done:
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
    assert server.request == (None, "accept_connection", ("bgtask-client", PROTOCOL_VERSION), {})
    import pickle

    client.receive_data(frame(pickle.dumps(("#RETURN", PROTOCOL_VERSION))))
    assert client.done and client.peer_version == PROTOCOL_VERSION


def test_a_wrong_key_fails_on_both_sides_and_the_server_says_so() -> None:
    client, server = ClientHandshake(b"wrong" * 8), ServerHandshake(KEY)
    client.receive_data(server.data_to_send())
    with pytest.raises(AuthenticationFailed):
        server.receive_data(client.data_to_send())
    failure = server.data_to_send()
    assert failure.startswith(frame(b"#FAILURE#"))
    with pytest.raises(AuthenticationFailed):
        client.receive_data(failure)


def test_another_version_is_named_both_ways() -> None:
    import pickle

    client, server = ClientHandshake(KEY), ServerHandshake(KEY)
    while not server.done:
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
    with pytest.raises(VersionMismatch) as info:
        client.receive_data(frame(pickle.dumps(("#RETURN", PROTOCOL_VERSION + 1))))
    err = map_fault(info.value, 42, "connecting", True)
    assert isinstance(err, ProtocolMismatchError) and isinstance(err, bgtask.RemoteError)
    assert str(PROTOCOL_VERSION) in str(err) and str(PROTOCOL_VERSION + 1) in str(err)


def test_legacy_md5_and_modern_responses_both_verify() -> None:
    challenge = b"{sha256}" + os.urandom(40)
    # 3.8-3.11's answer_challenge: a bare HMAC-MD5 of the whole (prefixed) challenge.
    assert verify(KEY, challenge, hmac.new(KEY, challenge, "md5").digest())
    assert verify(KEY, challenge, respond(KEY, challenge))
    assert not verify(b"other", challenge, respond(KEY, challenge))
    assert not verify(KEY, challenge, b"{nope}" + bytes(32))
    # A legacy 20-byte challenge gets a bare MD5 answer.
    assert respond(KEY, b"x" * 20) == hmac.new(KEY, b"x" * 20, "md5").digest()


# -- against the stock multiprocessing of this interpreter --------------------------------------


def drive(machine: ClientHandshake | ServerHandshake, sock: socket.socket) -> None:
    out = machine.data_to_send()
    if out:
        sock.sendall(out)
    while not machine.done:
        machine.receive_data(sock.recv(4096))
        out = machine.data_to_send()
        if out:
            sock.sendall(out)


def test_the_stock_client_authenticates_with_our_server() -> None:
    a, b = socket.socketpair()
    stock = mpc.Connection(b.detach())
    result: list[object] = []

    def stock_client() -> None:
        mpc.answer_challenge(stock, KEY)
        mpc.deliver_challenge(stock, KEY)
        stock.send((None, "accept_connection", ("stock",), {}))
        result.append("ok")

    t = threading.Thread(target=stock_client)
    t.start()
    try:
        server = ServerHandshake(KEY)
        drive(server, a)
        assert server.request == (None, "accept_connection", ("stock",), {})
    finally:
        t.join(5)
        a.close()
        stock.close()
    assert result == ["ok"]


def test_our_client_authenticates_with_the_stock_server() -> None:
    a, b = socket.socketpair()
    stock = mpc.Connection(b.detach())
    hello: list[object] = []

    def stock_server() -> None:
        mpc.deliver_challenge(stock, KEY)
        mpc.answer_challenge(stock, KEY)
        hello.append(stock.recv())
        stock.send(("#RETURN", PROTOCOL_VERSION))

    t = threading.Thread(target=stock_server)
    t.start()
    try:
        client = ClientHandshake(KEY)
        drive(client, a)
        assert client.peer_version == PROTOCOL_VERSION
    finally:
        t.join(5)
        a.close()
        stock.close()
    assert hello == [(None, "accept_connection", ("bgtask-client", PROTOCOL_VERSION), {})]


# -- against a real supervisor -------------------------------------------------------------------


def test_a_supervisor_answers_another_version_with_its_own_and_hangs_up(pool: bgtask.TaskPool) -> None:
    task = pool.spawn(["sleep", "60"])
    try:
        token = _paths.read_token_file(str(pool.path), task.pid)[0]
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(_paths.sock_path(str(pool.path), task.pid))
        try:
            with pytest.raises(VersionMismatch) as info:
                drive(ClientHandshake(_paths.authkey_from_token(token), PROTOCOL_VERSION + 7), sock)
            assert (info.value.ours, info.value.theirs) == (PROTOCOL_VERSION + 7, PROTOCOL_VERSION)
            assert sock.recv(1) == b""  # it hung up: no call of another version is served
        finally:
            sock.close()
        assert task.info()["pid"] == task.pid  # and it still serves this client
    finally:
        task.delete()
