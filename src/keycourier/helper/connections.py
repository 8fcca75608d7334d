"""Connection limits of the token helper: read deadlines, a connection cap, eviction.

The ``ConnectionGuard`` accepts connections itself (``listen`` and
``accept`` on non-blocking sockets, then ``loop.connect_accepted_socket``), so
each one is counted the moment its descriptor exists and a connection with no
room is closed at once: asyncio's own accept loop would take up to a whole
listen backlog of descriptors before any of them reached a protocol. Each
connection then goes through a ``_Conn``, a thin protocol in front of aiohttp's
own that frames requests just enough to know when one is still arriving (its
header block up to the empty line, then ``Content-Length`` bytes of body). The
guard enforces:

* **header deadline**: a request's header block must be complete within
  ``header_timeout`` seconds of its first byte (of the connection, for the
  first request); **body deadline**: its body within ``body_timeout`` of the
  end of the header block. Past either, the connection is closed.
* **idle keep-alive**: aiohttp closes a connection that has been answered and
  sends nothing more for ``idle_timeout`` seconds (its ``keepalive_timeout``).
* **connection cap**: at most ``max_connections`` at once, fewer when the
  process's descriptor limit is lower (``RESERVED_FDS`` are kept for the
  helper's own files and upstream calls), so ``accept()`` never fails with
  EMFILE. At the cap, a new connection evicts the connection whose request has
  been arriving the longest (a request still arriving is all a slow or idle
  flood can hold); when every connection has a whole request in hand, the new
  one is refused (closed at once).
* **per peer**: at most ``max_per_peer`` connections per peer, where a peer is
  known: the user ID of a Unix-socket client (``SO_PEERCRED``) or the address
  of a non-loopback TCP client. Loopback TCP clients all look alike, so only
  the overall cap applies to them.

A request with ``Transfer-Encoding`` cannot be framed this cheaply: after its
header block the connection is no longer tracked, and the handler's own body
deadline and aiohttp's lingering time bound it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from ssl import SSLContext

RESERVED_FDS: Final = 256  # descriptors kept for everything but client connections
ACCEPT_BATCH: Final = 64  # accept() calls per wake-up, so evictions are closed between batches
LISTEN_BACKLOG: Final = (
    4096  # the kernel's queue of connections awaiting accept() (somaxconn caps it)
)
ACCEPT_PAUSE: Final = 0.1  # seconds without accepting after the system ran out of descriptors
MAX_HEAD_KEPT: Final = 16 * 1024  # header bytes kept to find Content-Length
SWEEP_SECONDS: Final = 0.5
_LENGTH_VALUE = re.compile(rb"[ \t]*:[ \t]*([0-9]{1,12})[ \t]*(?:\r|\Z)")


def _body_length(block: bytes) -> int:
    """The Content-Length of a request header block (0 without one); -1 when the body is
    not framed by it (Transfer-Encoding).

    Both headers together are refused by aiohttp (400, connection closed), so
    the first found decides.
    """
    at = block.find(b"\r\nContent-Length")  # the usual spelling: no need to lower the block
    if at < 0:
        block = block.lower()
        at = block.find(b"\r\ncontent-length")
        if at < 0:
            return -1 if b"\r\ntransfer-encoding" in block else 0
    found = _LENGTH_VALUE.match(block, at + 16)
    return int(found.group(1)) if found else 0  # malformed: aiohttp answers 400 and closes


# phases of a connection's current request
_HEAD: Final = 0  # the header block is arriving (or nothing yet)
_BODY: Final = 1  # Content-Length body bytes are arriving
_DONE: Final = 2  # the whole request is here: being answered, or idle between requests
_UNTRACKED: Final = 3  # chunked body or oversized head: left to aiohttp and the handler


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    idle_timeout: float = 15.0
    max_connections: int = 1024
    max_per_peer: int = 256


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to fit the soft RLIMIT_NOFILE minus ``RESERVED_FDS``."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return max_connections
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(16, min(max_connections, soft - RESERVED_FDS))


def _peer_of(sock: socket.socket, address: object) -> str | None:
    if sock.family == socket.AF_UNIX:
        option = getattr(socket, "SO_PEERCRED", None)
        if option is None:
            return None
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
        except (OSError, struct.error):
            return None
        return f"uid:{uid}"
    if not isinstance(address, tuple) or not address:
        return None
    try:
        if ipaddress.ip_address(address[0]).is_loopback:
            return None
    except ValueError:
        return None
    return f"ip:{address[0]}"


class ConnectionGuard:
    """Counts, deadlines and eviction for every connection of one helper."""

    def __init__(
        self,
        limits: Limits,
        make_inner: Callable[[], asyncio.Protocol],
        *,
        ssl: SSLContext | None = None,
        report: Callable[[str], None] | None = None,
        cap: int | None = None,
    ) -> None:
        self.limits = limits
        self._make_inner = make_inner
        self._ssl = ssl
        self._report = report
        self._listening: list[socket.socket] = []
        self._reported_at = -1e9
        self.cap = cap if cap is not None else connection_cap(limits.max_connections)
        self.open = 0
        self.refused = 0  # closed on arrival: no room
        self.evicted = 0  # closed to make room for a new connection
        self.timed_out = 0  # closed at the header or body deadline
        self.accept_failed = 0  # accept() found no descriptor left
        self._peers: dict[str, int] = {}
        # connections whose request is arriving, oldest first, with the time it started
        self._heads: dict[_Conn, float] = {}
        self._bodies: dict[_Conn, float] = {}
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.Task[None] | None = None

    # -- listening and accepting

    def serve(self, sockets: list[socket.socket]) -> None:
        """Accept on these bound sockets (made listening here) until ``stop``."""
        for sock in sockets:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            self._listening.append(sock)
            self._loop.add_reader(sock.fileno(), self._accept, sock)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors(listening, exc)
                    return
                continue  # e.g. ECONNABORTED: that client gave up
            sock.setblocking(False)
            conn = _Conn(self, self._make_inner)
            conn.peer = _peer_of(sock, address)
            if not self.admit(conn):
                sock.close()  # no room: the descriptor is free again at once
                continue
            conn.starting = asyncio.create_task(self._connect(conn, sock))

    async def _connect(self, conn: _Conn, sock: socket.socket) -> None:
        if not conn.counted:  # evicted before this task ran: no transport was made
            sock.close()
            conn.starting = None
            return
        conn.handshaking = True
        try:
            await self._loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self.limits.header_timeout if self._ssl else None,
            )
        except (OSError, asyncio.CancelledError, TimeoutError, ValueError):
            self.forget(conn)
            sock.close()
        finally:
            conn.starting = None

    def _out_of_descriptors(self, listening: socket.socket, exc: OSError) -> None:
        self.accept_failed += 1
        fd = listening.fileno()
        self._loop.remove_reader(fd)
        self._loop.call_later(ACCEPT_PAUSE, self._resume, listening)
        now = self._loop.time()
        if self._report is not None and now - self._reported_at >= 60:
            self._reported_at = now
            self._report(
                f"cannot accept connections ({exc.strerror}); "
                f"{self.open} open, limit {self.cap}: lower max_connections or raise the "
                "descriptor limit"
            )

    def _resume(self, listening: socket.socket) -> None:
        if listening in self._listening:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    async def stop(self) -> None:
        """Stop listening (open connections are left to aiohttp's shutdown)."""
        for sock in self._listening:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listening.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    # -- admission

    def admit(self, conn: _Conn) -> bool:
        peer = conn.peer
        if peer is not None and self._peers.get(peer, 0) >= self.limits.max_per_peer:
            victim = self._oldest_arriving(peer)
            if victim is None:
                self.refused += 1
                return False
            self._evict(victim)
        if self.open >= self.cap:
            victim = self._oldest_arriving(None)
            if victim is None:
                self.refused += 1
                return False
            self._evict(victim)
        self.open += 1
        if peer is not None:
            self._peers[peer] = self._peers.get(peer, 0) + 1
        conn.counted = True
        self.arriving_head(conn)  # the header deadline runs from the connection's start
        return True

    def arriving(self) -> int:
        """Connections whose current request is still arriving."""
        return len(self._heads) + len(self._bodies)

    def forget(self, conn: _Conn) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self.open -= 1
        peer = conn.peer
        if peer is not None:
            left = self._peers[peer] - 1
            if left:
                self._peers[peer] = left
            else:
                del self._peers[peer]
        conn.waiting = None
        self._heads.pop(conn, None)
        self._bodies.pop(conn, None)

    def _oldest_arriving(self, peer: str | None) -> _Conn | None:
        best: tuple[float, _Conn] | None = None
        for waiting in (self._heads, self._bodies):
            for conn, since in waiting.items():
                if peer is None or conn.peer == peer:
                    if best is None or since < best[0]:
                        best = (since, conn)
                    break  # insertion order is age order: the first match is the oldest
        return best[1] if best is not None else None

    def _evict(self, conn: _Conn) -> None:
        self.evicted += 1
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self.forget(conn)
        if conn.transport is not None:
            conn.transport.abort()  # frees the descriptor now; the peer sees a reset
        elif conn.starting is not None and conn.handshaking:
            conn.starting.cancel()  # in the TLS handshake: _connect closes the socket
        # else not started yet: _connect sees it is no longer counted and closes the socket

    # -- request framing (called by _Conn)

    def arriving_head(self, conn: _Conn) -> None:
        conn.waiting = _HEAD
        self._heads[conn] = self._loop.time()

    def arriving_body(self, conn: _Conn) -> None:
        conn.waiting = _BODY
        self._heads.pop(conn, None)
        self._bodies[conn] = self._loop.time()

    def arrived(self, conn: _Conn) -> None:
        conn.waiting = None
        self._heads.pop(conn, None)
        self._bodies.pop(conn, None)

    # -- deadlines

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_SECONDS, self.limits.header_timeout / 4, self.limits.body_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        now = self._loop.time()
        late: list[_Conn] = []
        for waiting, timeout in (
            (self._heads, self.limits.header_timeout),
            (self._bodies, self.limits.body_timeout),
        ):
            for conn, since in waiting.items():
                if now - since < timeout:
                    break
                late.append(conn)
        for conn in late:
            self.timed_out += 1
            self._close(conn)


class _Conn(asyncio.Protocol):
    """One accepted connection: admission, request framing, then aiohttp's protocol."""

    __slots__ = ("_make_inner", "body_left", "counted", "guard", "handshaking", "head", "inner",
                 "oversized", "peer", "phase", "starting", "transport", "waiting")  # fmt: skip

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.counted = False
        self.starting: asyncio.Task[None] | None = None
        self.handshaking = False
        self.waiting: int | None = None  # _HEAD or _BODY while the guard's deadline runs
        self.phase = _HEAD
        self.head = b""
        self.oversized = False  # more header bytes than MAX_HEAD_KEPT: only the tail is kept
        self.body_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's transports do not subclass asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        if not self.counted:  # closed by the guard during the TLS handshake
            self.transport.abort()
            return
        self.inner = self._make_inner()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.phase != _UNTRACKED:
            self._frame(data)
        self.inner.data_received(data)

    def _frame(self, data: bytes) -> None:
        """Follow the request framing; tell the guard when a request starts or stops arriving.

        The common case, a whole request in one read on a connection that was
        idle, costs one search for the empty line and one for the two headers
        that matter, and no bookkeeping at all.
        """
        while data:
            if self.phase == _DONE:  # the first byte of the next request
                self.phase = _HEAD
                self.head = b""
                self.oversized = False
            if self.phase == _BODY:
                if len(data) < self.body_left:
                    self.body_left -= len(data)
                    return
                data = data[self.body_left :]
                self.body_left = 0
                self._complete()
                continue
            # _HEAD
            start = max(0, len(self.head) - 3)
            buf = self.head + data if self.head else data
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buf) > MAX_HEAD_KEPT:
                    self.oversized = True  # keep looking for the end, not for Content-Length
                    buf = buf[-3:]
                self.head = buf
                if self.waiting != _HEAD:
                    self.guard.arriving_head(self)
                return
            data = buf[end + 4 :]
            self.head = b""
            length = -1 if self.oversized else _body_length(buf[:end])
            if length < 0:
                self.phase = _UNTRACKED
                if self.waiting is not None:
                    self.guard.arrived(self)
                return
            if length > len(data):
                self.body_left = length - len(data)
                self.phase = _BODY
                self.guard.arriving_body(self)
                return
            data = data[length:]
            self._complete()

    def _complete(self) -> None:
        self.phase = _DONE
        if self.waiting is not None:
            self.guard.arrived(self)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
