"""The helper's connection guard: request framing, caps and eviction (no sockets needed)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from keycourier.helper.connections import (
    ConnectionGuard,
    Limits,
    _body_length,
    _Conn,
    _peer_of,
)


class Inner(asyncio.Protocol):
    """Stands in for aiohttp's protocol: records what reaches it."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def run(body: Callable[[], None]) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


def connect(guard: ConnectionGuard, peer: str | None = None) -> tuple[_Conn, Inner, Transport]:
    inner = Inner()
    conn = _Conn(guard, lambda: inner)
    conn.peer = peer
    transport = Transport()
    if guard.admit(conn):
        conn.connection_made(transport)
    return conn, inner, transport


POST = (
    b"POST /v1/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 19\r\n\r\n"
)
BODY = b'{"profile": "ci"}\r\n'


def test_a_whole_request_is_no_longer_arriving_and_reaches_aiohttp_unchanged() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(), lambda: Inner(), cap=10)
        conn, inner, _ = connect(guard)
        assert guard.arriving() == 1  # nothing sent yet: waiting for a header block
        conn.data_received(POST + BODY)
        assert guard.arriving() == 0
        assert inner.data == POST + BODY

    run(body)


def test_pieces_split_anywhere_are_followed() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(), lambda: Inner(), cap=10)
        whole = POST + BODY
        for cut in range(1, len(whole)):
            conn, inner, _ = connect(guard)
            conn.data_received(whole[:cut])
            assert guard.arriving() == 1, cut
            conn.data_received(whole[cut:])
            assert guard.arriving() == 0, cut
            assert inner.data == whole
            conn.connection_lost(None)
        assert guard.open == 0

    run(body)


def test_keep_alive_and_pipelined_requests() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(), lambda: Inner(), cap=10)
        conn, _, _ = connect(guard)
        get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        conn.data_received(get + POST + BODY + get)  # three at once
        assert guard.arriving() == 0
        conn.data_received(b"GET /hea")  # the next one starts: arriving again
        assert guard.arriving() == 1
        conn.data_received(b"lthz HTTP/1.1\r\n\r\n")
        assert guard.arriving() == 0

    run(body)


def test_chunked_and_oversized_requests_are_left_to_aiohttp() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(), lambda: Inner(), cap=10)
        chunked, _, _ = connect(guard)
        chunked.data_received(b"POST /v1/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n")
        assert guard.arriving() == 0  # untracked from here on
        chunked.data_received(b"GET / HTTP/1.1\r\n")
        assert guard.arriving() == 0

        big, _, _ = connect(guard)
        big.data_received(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40_000)
        assert guard.arriving() == 1  # still arriving: the header deadline still applies
        big.data_received(b"\r\n\r\n")
        assert guard.arriving() == 0

    run(body)


def test_at_the_cap_the_longest_arriving_request_makes_room() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(), lambda: Inner(), cap=3)
        busy, _, busy_t = connect(guard)
        busy.data_received(POST + BODY)  # whole request in hand: never evicted
        slow1, inner1, slow1_t = connect(guard)
        slow1.data_received(b"POST /v1/tok")
        slow2, _, slow2_t = connect(guard)
        newer, _, newer_t = connect(guard)  # the cap is 3: the oldest arriving goes
        assert slow1_t.aborted
        assert [t.aborted for t in (busy_t, slow2_t, newer_t)] == [False, False, False]
        assert (guard.open, guard.evicted) == (3, 1)
        slow1.connection_lost(None)  # the transport reports it later: counted once
        assert guard.open == 3
        assert inner1.lost
        slow2.data_received(POST + BODY)
        newer.data_received(POST + BODY)
        refused, refused_inner, refused_t = connect(guard)  # nothing arriving: refused
        assert refused_t.aborted is False  # never got a transport: closed by the acceptor
        assert refused.inner is None
        assert guard.refused == 1
        assert refused_inner.data == b""

    run(body)


def test_the_per_peer_cap_evicts_within_that_peer() -> None:
    def body() -> None:
        guard = ConnectionGuard(Limits(max_per_peer=2), lambda: Inner(), cap=100)
        _, _, other_t = connect(guard, "uid:1000")
        _, _, a1 = connect(guard, "uid:0")
        _, _, a2 = connect(guard, "uid:0")
        _, _, a3 = connect(guard, "uid:0")
        assert a1.aborted
        assert [t.aborted for t in (a2, a3, other_t)] == [False, False, False]
        assert guard.open == 3

    run(body)


def test_deadlines_close_late_requests() -> None:
    async def main() -> None:
        guard = ConnectionGuard(
            Limits(header_timeout=0.05, body_timeout=0.05), lambda: Inner(), cap=10
        )
        head, _, head_t = connect(guard)
        body_conn, _, body_t = connect(guard)
        body_conn.data_received(POST + BODY[:5])
        done, _, done_t = connect(guard)
        done.data_received(POST + BODY)
        await asyncio.sleep(0.1)
        guard.sweep()
        assert head_t.aborted
        assert body_t.aborted
        assert not done_t.aborted
        assert guard.timed_out == 2
        assert head.inner is not None

    asyncio.run(main())


def test_body_length_in_any_spelling() -> None:
    line = b"POST /v1/token HTTP/1.1\r\nHost: x"
    assert _body_length(line) == 0
    assert _body_length(line + b"\r\nContent-Length: 19") == 19
    assert _body_length(line + b"\r\ncontent-length : 5 \r\nX: y") == 5
    assert _body_length(line + b"\r\nCONTENT-LENGTH:7") == 7
    assert _body_length(line + b"\r\nTransfer-Encoding: chunked") == -1
    assert _body_length(line + b"\r\ntransfer-encoding: chunked\r\nX: y") == -1
    for malformed in (b"\r\nContent-Length: 5x", b"\r\nContent-Lengthy: 5", b"\r\nContent-Length:"):
        assert _body_length(line + malformed) == 0  # aiohttp refuses it and closes


def test_peers_are_unix_uids_and_non_loopback_addresses() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert _peer_of(a, "") == f"uid:{os.geteuid()}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert _peer_of(tcp, ("127.0.0.1", 5000)) is None  # loopback: all alike
        assert _peer_of(tcp, ("192.0.2.7", 5000)) == "ip:192.0.2.7"
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp6:
        assert _peer_of(tcp6, ("::1", 5000, 0, 0)) is None
        assert _peer_of(tcp6, ("2001:db8::1", 5000, 0, 0)) == "ip:2001:db8::1"
