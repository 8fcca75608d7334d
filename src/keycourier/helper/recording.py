"""Provenance events of the token helper: ``token_issued`` and ``token_handed_out``.

Events carry the profile, the client name, the token's fingerprint
(``redact.fingerprint("access-token", token)``) and its expiry; never a token.

``BatchRecorder`` takes events off the request path: ``submit()`` only puts
them on a queue; a worker thread hands them to the real ``Recorder`` (SQLite
and Vault, ``keycourier.ledger.service.open_recorder``) in order. ``close()``
drains the queue before returning, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keycourier.errors import Error

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.interface import Event, Recorder
    from keycourier.partner.tokens import Token


def issued_event(profile: str, token: Token, *, environment: str) -> Event:
    from keycourier.ledger.interface import Event, EventType

    return Event(
        type=EventType.TOKEN_ISSUED,
        at=datetime.now(UTC),
        actor=f"profile:{profile}",
        fingerprint=token.fingerprint,
        data={
            "profile": profile,
            "environment": environment,
            "token_fingerprint": token.fingerprint,
            "expires_at": token.expires_at_iso(),
        },
    )


def handed_out_event(client: str, profile: str, token: Token) -> Event:
    from keycourier.ledger.interface import Event, EventType

    return Event(
        type=EventType.TOKEN_HANDED_OUT,
        at=datetime.now(UTC),
        actor=f"client:{client}",
        fingerprint=token.fingerprint,
        data={"client": client, "profile": profile, "token_fingerprint": token.fingerprint},
    )


def open_recorder(settings: Settings) -> Recorder:
    """The ledger's recorder (SQLite + Vault). Imported lazily: heavy dependencies."""
    import importlib

    service: Any = importlib.import_module("keycourier.ledger.service")
    recorder: Recorder = service.open_recorder(settings)
    return recorder


_STOP = object()


class BatchRecorder:
    """A queue and one worker thread in front of a ``Recorder``."""

    def __init__(
        self, recorder: Recorder, *, on_error: Callable[[str], None] | None = None
    ) -> None:
        self._recorder = recorder
        self._queue: queue.Queue[object] = queue.Queue()
        self._on_error = on_error
        self.recorded = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="keycourier-recorder", daemon=True)
        self._thread.start()
        self._closed = False

    def submit(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")
        self._queue.put(event)

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._recorder.record(item)  # type: ignore[arg-type]
                self.recorded += 1
            except Error as exc:
                self.failed += 1
                if self._on_error is not None:
                    self._on_error(f"could not record {getattr(item, 'type', '?')}: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - keep the worker alive; report the type only
                self.failed += 1
                if self._on_error is not None:
                    self._on_error(f"could not record an event ({type(exc).__name__})")

    def close(self) -> None:
        """Deliver everything queued, then close the underlying recorder."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._recorder.close()
