"""Where the helper listens: its listening sockets, their TLS context and the address it announces.

TCP sockets on every address of the host, or a Unix socket created 0600 (a stale one
from an earlier run is replaced; a live one is refused). ``keycourier serve --workers N``
binds its socket in the supervisor (``keycourier.helper.workers``) and hands it down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from typing import TYPE_CHECKING

from keycourier.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from keycourier.helper.server_config import ServerConfig


async def open_listeners(
    cfg: ServerConfig, sock: socket.socket | None = None
) -> tuple[list[socket.socket], ssl.SSLContext | None, str]:
    """The sockets to accept on, their TLS context (None: plain) and where they are.

    ``sock``: a listening socket bound (and, at exit, removed) by the worker supervisor.
    """
    if sock is not None:
        tls = tls_context(cfg)
        return [sock], tls, _where(cfg, sock)
    if cfg.socket_path is not None:
        prepare_socket(cfg.socket_path)
        return [_unix_socket(cfg.socket_path)], None, f"unix:{cfg.socket_path}"
    assert cfg.host is not None  # noqa: S101 - set for TCP by server_config
    tls = tls_context(cfg)
    sockets = await _tcp_sockets(cfg.host, cfg.port)
    port = sockets[0].getsockname()[1] if sockets else cfg.port
    scheme = "https" if cfg.tls_cert else "http"
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return sockets, tls, f"{scheme}://{host}:{port}"


def tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or later), or None without a certificate and key."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate or key ({type(exc).__name__})"
        ) from None
    return ctx


def prepare_socket(path: Path) -> None:
    """Make way for a Unix socket at ``path``: a stale socket is removed; a socket a
    helper still listens on, or a file that is not a socket, is refused."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise UsageError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale socket from a previous run
        return
    finally:
        probe.close()
    raise UsageError(f"another helper is already listening on {path}")


def _unix_socket(path: Path) -> socket.socket:
    """A Unix stream socket bound at ``path``, mode 0600 from the start."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


async def _tcp_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` (as ``loop.create_server`` would)."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def _where(cfg: ServerConfig, sock: socket.socket) -> str:
    """How a socket bound by the worker supervisor is announced."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{cfg.socket_path}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if cfg.tls_cert else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
