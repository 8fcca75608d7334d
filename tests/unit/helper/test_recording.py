"""BatchRecorder: events leave the request path and nothing is lost on close."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from keycourier.errors import UnavailableError
from keycourier.helper.recording import BatchRecorder, handed_out_event, issued_event
from keycourier.ledger.interface import Event, EventType, RecordOutcome, StoredEvent, VaultStatus
from keycourier.partner.tokens import Token
from keycourier.redact import Secret


class ListRecorder:
    """A small in-test Recorder: slow, records its thread, fails on demand."""

    def __init__(self, fail_every: int = 0) -> None:
        self.events: list[Event] = []
        self.threads: set[str] = set()
        self.closed = False
        self.fail_every = fail_every
        self.gate = threading.Event()

    def record(self, event: Event) -> RecordOutcome:
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        if self.fail_every and (len(self.events) + 1) % self.fail_every == 0:
            self.events.append(event)
            raise UnavailableError("ledger busy")
        self.events.append(event)
        return RecordOutcome(len(self.events), VaultStatus.DISABLED)

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return []

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return []

    def shared_events(self, bundle_id: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True


TOKEN = Token(Secret("tok-abc-123-xyz-456"), "Bearer", 1800, 1_700_000_000.0)


def test_submit_does_not_block_and_close_drains() -> None:
    inner = ListRecorder()
    rec = BatchRecorder(lambda: inner)
    for i in range(50):
        rec.submit(
            handed_out_event(f"client:{i}", "ci", TOKEN)
        )  # returns while the recorder is blocked
    assert inner.events == []
    inner.gate.set()
    rec.close()
    assert len(inner.events) == 50
    assert inner.closed
    assert inner.threads == {"keycourier-recorder"}
    assert rec.recorded == 50


def test_events_hold_fingerprints_not_tokens() -> None:
    ev = issued_event("ci", TOKEN, environment="sandbox")
    assert ev.type is EventType.TOKEN_ISSUED
    assert ev.fingerprint == TOKEN.fingerprint
    assert "tok-abc-123-xyz-456" not in repr(ev)
    assert ev.data["expires_at"] == "2023-11-14T22:43:20Z"
    ho = handed_out_event("client:ci", "ci", TOKEN)
    assert ho.actor == "client:ci"
    assert "tok-abc" not in repr(ho)


def test_failures_are_counted_and_reported() -> None:
    inner = ListRecorder(fail_every=2)
    inner.gate.set()
    messages: list[str] = []
    rec = BatchRecorder(lambda: inner, on_error=messages.append)
    for _ in range(4):
        rec.submit(issued_event("ci", TOKEN, environment="sandbox"))
    rec.close()
    assert rec.recorded == 2
    assert rec.failed == 2
    assert all("ledger busy" in m for m in messages)
