"""``keycourier serve`` in one process: the helper's routes on its sockets until a signal.

``serve`` runs the application (``keycourier.helper.routes``) on the listening sockets
(``keycourier.helper.listen``), accepting and bounding connections with
``keycourier.helper.connections`` (read deadlines, a connection cap, eviction of the
slowest request), until SIGINT or SIGTERM. ``run`` builds the process's state for it
and drains the ledger recorder at the end. ``serve --workers N`` runs ``serve`` in each
worker (``keycourier.helper.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from keycourier.errors import ConfigError
from keycourier.helper.clients import ClientStore, default_store_path
from keycourier.helper.connections import ConnectionGuard
from keycourier.helper.listen import open_listeners
from keycourier.helper.recording import BatchRecorder, open_recorder
from keycourier.helper.routes import make_app
from keycourier.helper.state import HelperState
from keycourier.partner.profiles import load_profiles

if TYPE_CHECKING:
    import socket

    from keycourier.config import Settings
    from keycourier.helper.server_config import ServerConfig


async def serve(
    state: HelperState,
    announce: Callable[[str], None],
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; ``sock``: a listening socket bound by the worker supervisor."""
    cfg = state.cfg
    app = make_app(state)
    limits = cfg.limits
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout,  # answered and silent this long: closed
        lingering_time=limits.body_timeout,  # an unread body is drained this long at most
    )
    await runner.setup()
    assert runner.server is not None  # noqa: S101 - set by setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    guard: ConnectionGuard | None = None
    try:
        sockets, tls, where = await open_listeners(cfg, sock)
        guard = state.guard = ConnectionGuard(limits, runner.server, ssl=tls, report=_warn)
        guard.serve(sockets)
        gc.collect()
        gc.freeze()  # start-up objects never need collecting: cheaper GC passes per request
        announce(where)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if guard is not None:
            await guard.stop()  # no new connections; runner.cleanup() ends the open ones
        await runner.cleanup()
        if cfg.socket_path is not None and sock is None:
            with contextlib.suppress(FileNotFoundError):
                cfg.socket_path.unlink()


def _warn(message: str) -> None:
    sys.stderr.write(f"keycourier: warning: {message}\n")


def run(
    settings: Settings, cfg: ServerConfig, *, announce: Callable[[str], None]
) -> dict[str, int]:
    """Serve until SIGINT/SIGTERM; drain the recorder; return a summary."""
    profiles = load_profiles(settings.profiles, settings.config_path)
    if not profiles:
        raise ConfigError(
            "no profiles configured", hints=["add a [profiles.NAME] table (docs/token-helper.md)"]
        )
    store = ClientStore(default_store_path(settings))
    store.refresh(max_age=0)  # fail now on a malformed or world-readable store

    def report(message: str) -> None:
        sys.stderr.write(f"keycourier: warning: {message}\n")

    recorder = BatchRecorder(lambda: open_recorder(settings), on_error=report)
    state = HelperState(settings, profiles, store, cfg, recorder=recorder)
    try:
        asyncio.run(serve(state, announce))
    finally:
        recorder.close()
    return {
        "recorded": recorder.recorded,
        "failed": recorder.failed,
        "upstream_calls": state.cache.stats.upstream_calls,
    }
