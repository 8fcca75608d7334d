"""Provenance events of the token helper: ``token_issued`` and ``token_handed_out``.

Events carry the profile, the client name, the token's fingerprint
(``redact.fingerprint("access-token", token)``) and its expiry; never a token.

``BatchRecorder`` takes events off the request path: ``submit()`` only puts
them on a queue; a worker thread hands them to the real ``Recorder`` (SQLite
and Vault, ``keycourier.ledger.recorder.open_recorder``) in order. ``close()``
drains the queue before returning, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from keycourier.errors import Error
from keycourier.ledger.interface import Event, EventType
from keycourier.policy import policy_in_force

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.interface import Recorder
    from keycourier.partner.tokens import Token


def issued_event(profile: str, token: Token, *, environment: str) -> Event:

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

    return Event(
        type=EventType.TOKEN_HANDED_OUT,
        at=datetime.now(UTC),
        actor=client,  # "client:NAME" or "vault:NAME"
        fingerprint=token.fingerprint,
        data={"client": client, "profile": profile, "token_fingerprint": token.fingerprint},
    )


def open_recorder(settings: Settings) -> Recorder:
    """The ledger's recorder (SQLite + Vault), stamping token events with the policy in
    force. Imported lazily: heavy dependencies."""
    # lazy: the ledger's sqlite3 and threading, only when a token event is recorded
    from keycourier.ledger.recorder import open_recorder as open_ledger

    return open_ledger(settings, policy=policy_in_force(settings.policy_path))


class EventSink(Protocol):
    """Where the helper puts its events: a ``BatchRecorder``, or a worker's link to its
    supervisor (``keycourier.helper.workers``), which records them once for all workers."""

    failed: int

    def submit(self, event: Event) -> None: ...

    def pending(self) -> int: ...


_STOP = object()


class BatchRecorder:
    """A queue and one worker thread in front of a ``Recorder``.

    The recorder is opened, used and closed in the worker thread (SQLite
    connections belong to the thread that made them); opening errors are
    raised from the constructor.
    """

    def __init__(
        self, opener: Callable[[], Recorder], *, on_error: Callable[[str], None] | None = None
    ) -> None:
        self._opener = opener
        self._queue: queue.Queue[object] = queue.Queue()
        self._on_error = on_error
        self.recorded = 0
        self.failed = 0
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="keycourier-recorder", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def submit(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")
        self._queue.put(event)

    def pending(self) -> int:
        return self._queue.qsize()

    def _report(self, message: str) -> None:
        if self._on_error is not None:
            self._on_error(message)

    def _run(self) -> None:
        try:
            recorder = self._opener()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    recorder.record(item)  # type: ignore[arg-type]
                    self.recorded += 1
                except Error as exc:
                    self.failed += 1
                    self._report(f"could not record {getattr(item, 'type', '?')}: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - keep the worker alive; type only
                    self.failed += 1
                    self._report(f"could not record an event ({type(exc).__name__})")
        finally:
            try:
                recorder.close()
            except Exception as exc:  # noqa: BLE001 - report, never raise from the worker
                self._report(f"closing the ledger failed ({type(exc).__name__})")

    def close(self) -> None:
        """Deliver everything queued, then close the underlying recorder."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
