"""The partner's connection workflow: create, disconnect and wait for a connection.

One active connection per entity (``--replace`` disconnects the old one
first), polling with backoff under one deadline, and each state change handed
to a ``Recorder`` that is opened at the first event, so reads never touch the
ledger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from keycourier.errors import AuthError, Error, IntegrityError, PolicyError, UnavailableError
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome
from keycourier.partner.connections.client import (
    ConnectionClient,
    Deadline,
    DeadlineExceededError,
    PlatformRefusalError,
    RateLimitedError,
)
from keycourier.partner.connections.model import Connection, ConnectionStatus, Endpoint


@dataclass(frozen=True, slots=True)
class Recorded:
    event: str
    outcome: RecordOutcome


@dataclass(frozen=True, slots=True)
class CreateResult:
    connection: Connection
    replaced: tuple[Connection, ...] = ()
    recorded: tuple[Recorded, ...] = ()


@dataclass(frozen=True, slots=True)
class DisconnectResult:
    connection: Connection
    recorded: tuple[Recorded, ...] = ()


@dataclass(frozen=True, slots=True)
class WaitResult:
    connection: Connection
    polls: int
    recorded: tuple[Recorded, ...] = ()


RecorderFactory = Callable[[], Recorder]


@dataclass
class _Recording:
    """Opens the recorder on the first event, so reads never touch the ledger."""

    factory: RecorderFactory | None
    actor: str
    endpoint: Endpoint
    done: list[Recorded] = field(default_factory=list)
    _recorder: Recorder | None = None

    def record(self, kind: str, scope_id: str, conn: Connection) -> None:
        if self.factory is None:
            return
        event = Event(
            type=EventType(kind),
            at=datetime.now(UTC),
            actor=self.actor,
            data={
                "entity_id": scope_id,
                "connection_id": conn.id,
                "dialect": self.endpoint.dialect.value,
                "scope": self.endpoint.spec.scope_name,
                "profile": self.endpoint.profile,
                "status": conn.status.value if conn.status else None,
                "platform": conn.platform,
            },
        )
        try:
            if self._recorder is None:
                self._recorder = self.factory()
            outcome = self._recorder.record(event)
        except Error as exc:
            raise type(exc)(
                f"{exc.message} (connection {conn.id} is {conn.status or 'unknown'} on the "
                f"platform, but the {kind} event was not recorded)",
                hints=exc.hints,
            ) from None
        self.done.append(Recorded(kind, outcome))

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None


def describe(conn: Connection) -> str:
    return (
        f"{conn.id} (platform {conn.platform or 'not chosen yet'}, "
        f"status {conn.status.value if conn.status else 'unknown'})"
    )


def create_connection(
    client: ConnectionClient,
    scope_id: str,
    *,
    replace: bool = False,
    confirm_replace: Callable[[Sequence[Connection]], bool] = lambda _: False,
    platform: str | None = None,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
) -> CreateResult:
    """Create the scope's accounting connection, honouring one-active-per-entity.

    Lists first; refuses (PolicyError, exit 7) while one is active unless
    ``replace``, in which case ``confirm_replace`` must agree and every
    active connection is disconnected (and recorded) before the new one is
    created. A non-201 reply to the create is re-checked with a list, since
    the platform documents no status code for "already exists".
    """
    scope = client.endpoint.spec.scope_name
    recording = _Recording(recorder, actor, client.endpoint)
    try:
        active = [c for c in client.list(scope_id) if c.active]
        replaced: list[Connection] = []
        if active and not replace:
            first = active[0]
            raise PolicyError(
                f"{scope} {scope_id} already has an active accounting connection: "
                f"{describe(first)}",
                hints=[
                    f"each {scope} can connect to one accounting system at a time",
                    "to disconnect it and create a new one, add --replace",
                ],
            )
        if active:
            if not confirm_replace(active):
                raise PolicyError("not replacing the active connection: not confirmed")
            for old in active:
                gone = client.disconnect(scope_id, old.id)
                recording.record("connection_disconnected", scope_id, gone)
                replaced.append(gone)
        try:
            conn = client.create(scope_id, platform=platform)
        except PlatformRefusalError as exc:
            still = [c for c in client.list(scope_id) if c.active]
            if still:
                raise PolicyError(
                    f"the platform refused to create a connection ({exc.status}); "
                    f"{scope} {scope_id} has an active one: {describe(still[0])}",
                    hints=["to disconnect it and create a new one, add --replace"],
                ) from None
            raise
        recording.record("connection_created", scope_id, conn)
        return CreateResult(conn, tuple(replaced), tuple(recording.done))
    finally:
        recording.close()


def disconnect_connection(
    client: ConnectionClient,
    scope_id: str,
    connection_id: str,
    *,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
) -> DisconnectResult:
    recording = _Recording(recorder, actor, client.endpoint)
    try:
        conn = client.disconnect(scope_id, connection_id)
        if conn.status is not ConnectionStatus.DISCONNECTED:
            raise IntegrityError(
                f"the platform answered the disconnect of {connection_id} with status "
                f"{conn.status.value if conn.status else 'unknown'}",
                hints=["check with: keycourier connection get"],
            )
        recording.record("connection_disconnected", scope_id, conn)
        return DisconnectResult(conn, tuple(recording.done))
    finally:
        recording.close()


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    first: float = 2.0
    factor: float = 1.5
    maximum: float = 30.0


def wait_for_connection(
    client: ConnectionClient,
    scope_id: str,
    connection_id: str,
    *,
    timeout: float,
    policy: WaitPolicy | None = None,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[Connection], None] | None = None,
) -> WaitResult:
    """Poll until ``connected`` with a platform; raise on a dead end or timeout.

    ``deauthorized`` -> AuthError (5); ``disconnected`` or errors in the
    object -> PolicyError (7); timeout -> UnavailableError (6, retry ``wait``).

    A 429 is handled here, not in the client, so no sleep runs past the
    deadline: wait ``Retry-After`` (or the current pause when it is absent,
    and never less than that pause), cut to the time left, and poll again.
    When the deadline comes first, the timeout says the platform was
    rate-limiting. ``polls`` counts every GET, 429s included.

    The client's own retries (502/503/504, network errors), its request
    timeouts and a token refresh are bounded by the same deadline; when it
    passes during them, the timeout names the last problem.
    """
    policy = policy or WaitPolicy()
    deadline = clock() + timeout
    bound = Deadline(deadline, clock)
    pause = policy.first
    polls = 0
    last: Connection | None = None
    while True:
        try:
            conn = client.get(scope_id, connection_id, wait_out_rate_limits=False, deadline=bound)
        except DeadlineExceededError as exc:
            raise UnavailableError(
                f"connection {connection_id} is not connected after the timeout: "
                f"the last poll failed ({exc.problem}); {_seen(last)}",
                hints=["rerun later: keycourier connection wait"],
            ) from None
        except RateLimitedError as exc:
            polls += 1
            asked = max(exc.retry_after or 0.0, pause)
            remaining = deadline - clock()
            if remaining > 0:
                sleep(min(asked, remaining))
            pause = min(pause * policy.factor, policy.maximum)
            if asked > remaining:  # the deadline came before the platform's Retry-After
                raise _rate_limited_timeout(connection_id, asked, last) from None
            continue
        polls += 1
        last = conn
        if on_poll is not None:
            on_poll(conn)
        if conn.errors:
            raise PolicyError(
                f"connection {conn.id} reports errors: " + "; ".join(conn.errors[:3]),
                hints=["fix the cause, then disconnect and create a new connection"],
            )
        if conn.status is ConnectionStatus.DEAUTHORIZED:
            raise AuthError(
                f"connection {conn.id} was deauthorized"
                + (f" in {conn.platform}" if conn.platform else ""),
                hints=[
                    "the user withdrew access in the accounting system",
                    "create a new one with: keycourier connection create --replace",
                ],
            )
        if conn.status is ConnectionStatus.DISCONNECTED:
            raise PolicyError(
                f"connection {conn.id} is disconnected",
                hints=["create a new one with: keycourier connection create"],
            )
        if conn.ready:
            recording = _Recording(recorder, actor, client.endpoint)
            try:
                recording.record("connection_connected", scope_id, conn)
            finally:
                recording.close()
            return WaitResult(conn, polls, tuple(recording.done))
        remaining = deadline - clock()
        if remaining <= 0:
            raise UnavailableError(
                f"connection {conn.id} is still "
                f"{conn.status.value if conn.status else 'without a status'} after the timeout",
                hints=[
                    "send the connection_url to the user again",
                    "then rerun: keycourier connection wait",
                ],
            )
        sleep(min(pause, remaining))
        pause = min(pause * policy.factor, policy.maximum)


def _rate_limited_timeout(
    connection_id: str, asked: float, last: Connection | None
) -> UnavailableError:
    return UnavailableError(
        f"connection {connection_id} is not connected after the timeout: the platform was "
        f"rate-limiting us (429, asked to wait {math.ceil(asked)} s); {_seen(last)}",
        hints=["rerun later: keycourier connection wait"],
    )


def _seen(last: Connection | None) -> str:
    if last is None:
        return "no status seen yet"
    return f"last status seen: {last.status.value if last.status else 'none'}"
