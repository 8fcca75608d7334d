"""Unit tests for keycourier.partner.connections: model and parsers, client retries, workflow.

The platform is replaced by ``ScriptedTransport``, an in-test fake that
answers from a script and records what it was sent (no MagicMock).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    IntegrityError,
    PolicyError,
    UnavailableError,
    UsageError,
)
from keycourier.ledger.interface import Event, RecordOutcome, StoredEvent, VaultStatus
from keycourier.partner.connections.client import (
    CONNECTION_RETRY,
    ConnectionClient,
    HttpResponse,
    UrllibTransport,
)
from keycourier.partner.connections.model import (
    MAX_RESPONSE_BYTES,
    BusinessInfo,
    Connection,
    ConnectionStatus,
    Endpoint,
    describe_error_body,
    make_endpoint,
    parse_connection,
    parse_connection_list,
    parse_duration,
    parse_json_body,
    parse_uuid,
)
from keycourier.partner.connections.workflow import (
    WaitPolicy,
    create_connection,
    disconnect_connection,
    wait_for_connection,
)
from keycourier.redact import Secret
from tests.support.fuzz import EXTRA_EXAMPLES

ENTITY = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
CID = "9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10"
CID2 = "0e6d2a55-1f11-4a3c-9a42-7d9f1c2b3a44"
NOW = "2024-05-25T10:00:00Z"


def conn_doc(cid: str = CID, status: str | None = "pending_auth", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": cid,
        "created_at": NOW,
        "updated_at": NOW,
        "connection_url": "https://connect.example.com/authorize?c=abc",
        "business_info": None,
        "errors": None,
        "last_pull": None,
        "platform": None,
        "status": status,
    }
    doc.update(extra)
    return doc


def reply(status: int, doc: Any = None, headers: Mapping[str, str] | None = None) -> HttpResponse:
    body = b"" if doc is None else json.dumps(doc).encode()
    return HttpResponse(status=status, headers=dict(headers or {}), body=body)


@dataclass
class Sent:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float | None = None


@dataclass
class ScriptedTransport:
    replies: list[HttpResponse | Error]
    sent: list[Sent] = field(default_factory=list)

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> HttpResponse:
        self.sent.append(Sent(method, url, dict(headers), body, timeout))
        if not self.replies:
            raise AssertionError(f"unexpected call {method} {url}")
        nxt = self.replies.pop(0)
        if isinstance(nxt, Error):
            raise nxt
        return nxt


class RotatingTokens:
    """Issues tok-1, then tok-2 after invalidate(), ..."""

    def __init__(self) -> None:
        self.generation = 1
        self.invalidations = 0

    def get(self) -> Secret:
        return Secret(f"tok-{self.generation}")

    def invalidate(self) -> None:
        self.invalidations += 1
        self.generation += 1


@dataclass
class ListRecorder:
    events: list[Event] = field(default_factory=list)
    closed: int = 0

    def record(self, event: Event) -> RecordOutcome:
        self.events.append(event)
        return RecordOutcome(seq=len(self.events), vault_status=VaultStatus.DISABLED)

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return ()

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return ()

    def shared_events(self, bundle_id: str) -> None:
        return None

    def close(self) -> None:
        self.closed += 1


def monite() -> Endpoint:
    return make_endpoint(
        dialect="monite", base_url="https://api.sandbox.monite.com/v1/", version="2024-05-25"
    )


def tesouro() -> Endpoint:
    return make_endpoint(
        dialect="tesouro",
        base_url="https://api.sandbox.tesouro.com/finops/v1",
        version="2025-06-23",
    )


@dataclass
class Sleeps:
    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(
    replies: list[HttpResponse | Error],
    endpoint: Endpoint | None = None,
    tokens: RotatingTokens | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tuple[ConnectionClient, ScriptedTransport, RotatingTokens, Sleeps]:
    transport = ScriptedTransport(list(replies))
    tok = tokens or RotatingTokens()
    sleeps = Sleeps()
    fixed_now = datetime(2026, 1, 1, tzinfo=UTC)
    c = ConnectionClient(
        endpoint or monite(),
        tok,
        transport=transport,
        retry=CONNECTION_RETRY,
        sleep=sleep or sleeps,
        now=lambda: fixed_now,
    )
    return c, transport, tok, sleeps


# --------------------------------------------------------------------------- edge inputs


def test_parse_uuid_accepts_canonical_and_lowercases() -> None:
    assert parse_uuid(ENTITY.upper(), "entity ID") == ENTITY


@pytest.mark.parametrize(
    "bad",
    [
        ENTITY + "\n",
        "{" + ENTITY + "}",
        "urn:uuid:" + ENTITY,
        ENTITY.replace("-", ""),
        ENTITY[:-1] + "g",
        ENTITY[:-1] + "\u0663",  # an Arabic-Indic digit
        "x" * 10_000,
        "",
    ],
)
def test_parse_uuid_rejects(bad: str) -> None:
    with pytest.raises(UsageError, match="is not a UUID") as info:
        parse_uuid(bad, "entity ID")
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800.0),
        ("90s", 90.0),
        ("2h", 7200.0),
        ("45", 45.0),
        ("500ms", 0.5),
        ("24h", 86400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["0", "25h", "1d", "", "-5", "\u0661\u0660", "1.5m", "m"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(bad)


# --------------------------------------------------------------------------- text shown to a user

EVIL = "ok\x1b[31mred\u202e"  # an ANSI colour escape and a right-to-left override


def _error(call: Callable[[], object]) -> Error:
    with pytest.raises(Error) as info:
        call()
    return info.value


def _body(doc: object) -> str:
    return describe_error_body(json.dumps(doc).encode())


def _business_info() -> BusinessInfo:
    conn = parse_connection(conn_doc(business_info={"name": EVIL, "legal_name": EVIL}))
    assert conn.business_info is not None
    return conn.business_info


def _refused_by_platform() -> Error:
    c, _, _, _ = client([reply(409, {"error": {"message": EVIL}}, {"x-request-id": EVIL})])
    return _error(lambda: c.list(ENTITY))


def _wait_ends_with_errors() -> Error:
    c, _, _, _ = client([reply(200, conn_doc(errors=[{"message": EVIL}]))])
    clock = FakeClock()
    return _error(
        lambda: wait_for_connection(c, ENTITY, CID, timeout=60, clock=clock.now, sleep=clock.sleep)
    )


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> Error:
    import urllib.error
    import urllib.request

    def refuse(*args: object, **kwargs: object) -> object:
        raise urllib.error.URLError(EVIL)

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)
    return _error(lambda: UrllibTransport().send("GET", "https://a.example/", {}, None))


# each place that shows text from the platform (or from a user) -> what it shows
SHOWN: dict[str, Callable[[pytest.MonkeyPatch], str | None]] = {
    "bad UUID": lambda _: _error(lambda: parse_uuid(EVIL, "entity ID")).message,
    "bad dialect": lambda _: (
        _error(
            lambda: make_endpoint(dialect=EVIL, base_url="https://a.example", version="2024-05-25")
        ).message
    ),
    "unknown status": lambda _: _error(lambda: parse_connection(conn_doc(status=EVIL))).message,
    "connection error": lambda _: parse_connection(conn_doc(errors=[{"message": EVIL}])).errors[0],
    "wait on errors": lambda _: _wait_ends_with_errors().message,
    "business name": lambda _: _business_info().name,
    "business legal name": lambda _: _business_info().legal_name,
    "error message": lambda _: _body({"error": {"message": EVIL}}),
    "error detail": lambda _: _body({"detail": EVIL}),
    "validation error": lambda _: _body({"detail": [{"loc": ["body", EVIL], "msg": EVIL}]}),
    "refusal": lambda _: _refused_by_platform().message,
    "request ID": lambda _: " ".join(_refused_by_platform().hints),
    "network error": lambda monkeypatch: _unreachable(monkeypatch).message,
}


@pytest.mark.parametrize("place", list(SHOWN))
def test_platform_text_reaches_no_terminal_unescaped(
    place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the platform (or a user) sent is shown with its controls escaped: no raw ESC
    or bidi override reaches the terminal, and neither is hidden."""
    shown = SHOWN[place](monkeypatch)
    assert shown is not None
    assert "\x1b" not in shown
    assert "\u202e" not in shown
    assert shown.isprintable()
    assert "\\x1b[31mred" in shown
    assert "\\u202e" in shown


def test_platform_text_is_cut_where_it_is_shown() -> None:
    long = "a" * 1000
    assert _body({"error": {"message": long}}) == "a" * 300 + "…"
    assert _body({"detail": long}) == "a" * 300 + "…"
    assert _body({"detail": [{"msg": long}]}) == "a" * 400 + "…"
    c, _, _, _ = client([reply(409, None, {"x-request-id": "r" * 100})])
    refused = _error(lambda: c.list(ENTITY))
    assert f"platform request ID: {'r' * 80}…" in refused.hints


# --------------------------------------------------------------------------- endpoints


def test_make_endpoint_dialect_defaults() -> None:
    m = monite()
    assert m.base_url == "https://api.sandbox.monite.com/v1"
    assert m.version_header == "x-monite-version"
    assert m.spec.collection_path == "/accounting_connections"
    assert m.spec.scope_header == "x-monite-entity-id"
    t = tesouro()
    assert t.version_header == "x-finops-version"
    assert t.spec.collection_path == "/accounting-connections"
    assert t.spec.scope_header == "x-organization-id"
    t2 = make_endpoint(
        dialect="tesouro",
        base_url="https://api.tesouro.com/v1",
        version="2025-06-23",
        version_header="X-Tesouro-Version",
    )
    assert t2.version_header == "x-tesouro-version"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dialect": "oauth2"}, "dialects"),
        ({"base_url": "http://api.monite.com/v1"}, "loopback"),
        ({"base_url": "ftp://api.monite.com/v1"}, "http"),
        ({"base_url": "https://user:pw@api.monite.com/v1"}, "credentials"),
        ({"base_url": "https://api.monite.com/v1?x=1"}, "query"),
        ({"version": "25-05-2024"}, "YYYY-MM-DD"),
        ({"version_header": "x-api-version"}, "version header"),
        ({"timeout": "0"}, "timeout"),
    ],
)
def test_make_endpoint_rejects(kwargs: dict[str, str], match: str) -> None:
    args = {"dialect": "monite", "base_url": "https://api.monite.com/v1", "version": "2024-05-25"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        make_endpoint(
            dialect=args["dialect"],
            base_url=args["base_url"],
            version=args["version"],
            version_header=args.get("version_header"),
            timeout=float(args.get("timeout", "30")),
        )


def test_loopback_http_is_allowed() -> None:
    ep = make_endpoint(dialect="monite", base_url="http://127.0.0.1:9/v1", version="2024-05-25")
    assert ep.base_url == "http://127.0.0.1:9/v1"


# --------------------------------------------------------------------------- parsers


def test_parse_connection_full_object() -> None:
    doc = conn_doc(
        status="connected",
        platform="xero",
        last_pull="2024-05-25T11:00:00+02:00",
        business_info={"name": "Acme", "legal_name": "Acme Ltd", "base_currency": "EUR"},
        errors=[],
        some_future_field={"ignored": True},
    )
    conn = parse_connection(doc)
    assert conn.id == CID
    assert conn.status is ConnectionStatus.CONNECTED
    assert conn.platform == "xero"
    assert conn.ready
    assert conn.active
    assert conn.last_pull == datetime(2024, 5, 25, 9, 0, tzinfo=UTC)
    assert conn.business_info is not None
    assert conn.business_info.legal_name == "Acme Ltd"
    assert conn.to_json()["status"] == "connected"
    assert conn.to_json()["created_at"] == "2024-05-25T10:00:00Z"


def test_active_and_ready_by_status() -> None:
    assert parse_connection(conn_doc(status="pending_auth")).active
    assert parse_connection(conn_doc(status="deauthorized")).active  # fail closed
    assert parse_connection(conn_doc(status=None)).active  # fail closed
    assert not parse_connection(conn_doc(status="disconnected")).active
    assert not parse_connection(conn_doc(status="connected")).ready  # no platform yet


def test_parse_connection_sanitises_error_messages() -> None:
    conn = parse_connection(conn_doc(errors=[{"message": "token \x1b[2Jrevoked"}]))
    assert conn.errors == ("token \\x1b[2Jrevoked",)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"id": "not-a-uuid"}, "id is not a UUID"),
        ({"id": None}, "no id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"connection_url": "javascript:alert(1)"}, "not an http"),
        ({"connection_url": "http://evil.example/x"}, "plain http"),
        ({"connection_url": "https://a.example/x\x1b[0m"}, "connection_url"),
        ({"connection_url": "https://a.example/x y"}, "connection_url"),
        ({"connection_url": "https://u:p@a.example/"}, "credentials"),
        ({"connection_url": 5}, "connection_url"),
        ({"platform": "xero\nevil"}, "platform"),
        ({"errors": "boom"}, "errors"),
        ({"errors": [{"msg": "x"}]}, "no message"),
        ({"business_info": []}, "business_info"),
    ],
)
def test_parse_connection_rejects(change: dict[str, Any], match: str) -> None:
    doc = conn_doc()
    doc.update(change)
    with pytest.raises(IntegrityError, match=match):
        parse_connection(doc)


def test_unknown_status_is_named() -> None:
    with pytest.raises(IntegrityError, match="unknown connection status 'paused'"):
        parse_connection(conn_doc(status="paused"))


def test_parse_connection_list() -> None:
    items = parse_connection_list({"data": [conn_doc(), conn_doc(CID2, "disconnected")]})
    assert [c.id for c in items] == [CID, CID2]
    assert parse_connection_list({"data": []}) == ()
    with pytest.raises(IntegrityError):
        parse_connection_list({"items": []})
    with pytest.raises(IntegrityError, match="too many"):
        parse_connection_list({"data": [conn_doc()] * 201})


def test_parse_json_body_limits() -> None:
    with pytest.raises(IntegrityError, match="larger than"):
        parse_json_body(b" " * (MAX_RESPONSE_BYTES + 1), "reply")
    with pytest.raises(IntegrityError):
        parse_json_body(b'{"a": NaN}', "reply")
    with pytest.raises(IntegrityError):
        parse_json_body(b"[" * 40 + b"]" * 40, "reply")
    with pytest.raises(IntegrityError):
        parse_json_body(b"\xff\xfe", "reply")
    assert parse_json_body(b'{"a": [1]}', "reply") == {"a": [1]}


def test_describe_error_body_shapes() -> None:
    assert describe_error_body(b'{"error": {"message": "Bad thing"}}') == "Bad thing"
    validation = {
        "detail": [
            {"loc": ["body", "platform"], "msg": "value is not a valid enumeration member"},
            {"loc": ["header", "x-monite-entity-id"], "msg": "field required"},
        ]
    }
    text = describe_error_body(json.dumps(validation).encode())
    assert text == (
        "platform: value is not a valid enumeration member; header.x-monite-entity-id: "
        "field required"
    )
    assert describe_error_body(b"<html>oops</html>") == ""
    assert describe_error_body(b'{"error": "x"}') == ""


@settings(max_examples=EXTRA_EXAMPLES)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        ),
        max_leaves=20,
    )
)
def test_parse_connection_never_crashes(doc: Any) -> None:
    outcome: Connection | Error
    try:
        outcome = parse_connection(doc)
    except Error as exc:
        outcome = exc
    if isinstance(outcome, Error):
        assert outcome.message.startswith("the platform")
    else:
        assert len(outcome.id) == 36


@settings(max_examples=EXTRA_EXAMPLES)
@given(
    st.dictionaries(
        st.sampled_from(list(conn_doc())),
        st.none()
        | st.integers()
        | st.text(max_size=50)
        | st.lists(st.text(max_size=5), max_size=2),
    )
)
def test_parse_connection_mutated_fields(change: dict[str, Any]) -> None:
    doc = conn_doc()
    doc.update(change)
    try:
        conn = parse_connection(doc)
    except Error:
        return
    assert len(conn.id) == 36
    assert conn.connection_url.startswith(("https://", "http://127.0.0.1"))


@settings(max_examples=EXTRA_EXAMPLES)
@given(st.binary(max_size=200))
def test_describe_error_body_never_raises(body: bytes) -> None:
    assert isinstance(describe_error_body(body), str)


def test_retry_after_forms() -> None:
    """One reading of Retry-After for token and connection calls."""
    from keycourier.partner import tokens
    from keycourier.partner.retry import retry_after

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("7", now=lambda: now) == 7.0
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after(later, now=lambda: now) == 30.0
    # a date that names no zone is GMT as well (HTTP has no other), not unreadable
    no_zone = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert retry_after(no_zone, now=lambda: now) == 30.0
    earlier = (now - timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after(earlier, now=lambda: now) == 0.0
    assert retry_after("soon", now=lambda: now) is None
    assert retry_after("\u0663", now=lambda: now) is None
    assert retry_after("1" * 10, now=lambda: now) is None
    assert retry_after(None, now=lambda: now) is None
    assert vars(tokens)["retry_after"] is retry_after


# --------------------------------------------------------------------------- client


def test_monite_headers_and_path() -> None:
    c, transport, _, _ = client([reply(200, {"data": []})])
    assert c.list(ENTITY) == ()
    sent = transport.sent[0]
    assert sent.method == "GET"
    assert sent.url == "https://api.sandbox.monite.com/v1/accounting_connections"
    assert sent.headers["Authorization"] == "Bearer tok-1"
    assert sent.headers["x-monite-version"] == "2024-05-25"
    assert sent.headers["x-monite-entity-id"] == ENTITY
    assert "x-organization-id" not in sent.headers


def test_tesouro_headers_and_path() -> None:
    c, transport, _, _ = client([reply(201, conn_doc())], endpoint=tesouro())
    conn = c.create(ENTITY)
    assert conn.id == CID
    sent = transport.sent[0]
    assert sent.method == "POST"
    assert sent.url == "https://api.sandbox.tesouro.com/finops/v1/accounting-connections"
    assert sent.headers["x-finops-version"] == "2025-06-23"
    assert sent.headers["x-organization-id"] == ENTITY
    assert "x-monite-entity-id" not in sent.headers
    assert sent.body is None


def test_create_with_platform_sends_body() -> None:
    c, transport, _, _ = client([reply(201, conn_doc())])
    c.create(ENTITY, platform="xero")
    assert transport.sent[0].body == b'{"platform": "xero"}'
    assert transport.sent[0].headers["Content-Type"] == "application/json"


def test_401_refreshes_token_once_and_retries_once() -> None:
    c, transport, tokens, _ = client(
        [reply(401, {"error": {"message": "expired"}}), reply(200, conn_doc())]
    )
    assert c.get(ENTITY, CID).id == CID
    assert tokens.invalidations == 1
    assert [s.headers["Authorization"] for s in transport.sent] == ["Bearer tok-1", "Bearer tok-2"]


def test_second_401_is_auth_error() -> None:
    c, transport, tokens, _ = client(
        [reply(401, {"error": {"message": "nope"}}), reply(401, {"error": {"message": "nope"}})]
    )
    with pytest.raises(AuthError, match="even after a fresh token: nope"):
        c.list(ENTITY)
    assert len(transport.sent) == 2
    assert tokens.invalidations == 1


def test_tesouro_expired_token_400_refreshes() -> None:
    expired = reply(400, {"error": {"message": "The token has been expired."}})
    c, _, tokens, _ = client([expired, reply(200, {"data": []})], endpoint=tesouro())
    assert c.list(ENTITY) == ()
    assert tokens.invalidations == 1


def test_429_honours_retry_after() -> None:
    limited = reply(429, {"error": {"message": "Too Many Requests"}}, {"retry-after": "3"})
    c, transport, _, sleeps = client([limited, limited, reply(200, {"data": []})])
    assert c.list(ENTITY) == ()
    assert sleeps.calls == [3.0, 3.0]
    assert len(transport.sent) == 3


def test_429_with_long_retry_after_gives_up_without_sleeping() -> None:
    c, _, _, sleeps = client([reply(429, None, {"retry-after": "3600"})])
    with pytest.raises(UnavailableError, match="asks to wait 3600 s"):
        c.list(ENTITY)
    assert sleeps.calls == []


def test_429_forever_is_unavailable() -> None:
    c, transport, _, _ = client([reply(429, None, {"retry-after": "1"})] * 5)
    with pytest.raises(UnavailableError, match="429"):
        c.list(ENTITY)
    assert len(transport.sent) == 5


def test_422_in_plain_words() -> None:
    body = {
        "detail": [
            {
                "loc": ["body", "platform"],
                "msg": "value is not a valid enumeration member",
                "type": "type_error.enum",
            }
        ]
    }
    c, _, _, _ = client([reply(422, body, {"x-request-id": "req-42"})])
    with pytest.raises(
        UsageError, match="invalid \\(422\\): platform: value is not a valid"
    ) as info:
        c.create(ENTITY, platform="sage")
    assert "platform request ID: req-42" in info.value.hints


def test_missing_version_is_config_error() -> None:
    body = {
        "error": {
            "type": "missing_api_version",
            "message": "Missing the x-monite-version HTTP header",
        }
    }
    c, _, _, _ = client([reply(400, body)])
    with pytest.raises(ConfigError, match="Missing the x-monite-version"):
        c.list(ENTITY)


def test_404_names_the_scope() -> None:
    c, _, _, _ = client([reply(404, {"error": {"message": "Not found"}})], endpoint=tesouro())
    with pytest.raises(UsageError, match="for this organization"):
        c.get(ENTITY, CID)


def test_get_retries_server_errors_but_post_does_not() -> None:
    c, _, _, sleeps = client([reply(503), reply(502), reply(200, {"data": []})])
    assert c.list(ENTITY) == ()
    assert sleeps.calls == [0.5, 1.0]
    c2, transport2, _, _ = client([reply(503)])
    with pytest.raises(UnavailableError, match="503"):
        c2.create(ENTITY)
    assert len(transport2.sent) == 1


def test_network_error_on_post_is_not_retried() -> None:
    c, transport, _, _ = client([UnavailableError("cannot reach")])
    with pytest.raises(UnavailableError):
        c.disconnect(ENTITY, CID)
    assert len(transport.sent) == 1


def test_redirect_is_not_followed() -> None:
    c, _, _, _ = client([reply(302, None, {"location": "https://evil.example/"})])
    with pytest.raises(UnavailableError, match="redirect"):
        c.list(ENTITY)


def test_malformed_success_body_is_integrity_error() -> None:
    c, _, _, _ = client([HttpResponse(200, {}, b"<html></html>")])
    with pytest.raises(IntegrityError, match="malformed connection list"):
        c.list(ENTITY)


def test_error_messages_never_carry_the_token() -> None:
    c, _, _, _ = client([reply(401, {"error": {"message": "bad"}})] * 2)
    with pytest.raises(AuthError) as info:
        c.list(ENTITY)
    text = info.value.message + " ".join(info.value.hints)
    assert "tok-1" not in text
    assert "tok-2" not in text


# --------------------------------------------------------------------------- workflow


def test_create_refuses_while_active() -> None:
    active = conn_doc(status="connected", platform="xero")
    c, transport, _, _ = client([reply(200, {"data": [active]})])
    rec = ListRecorder()
    with pytest.raises(PolicyError, match=f"{CID} \\(platform xero, status connected\\)") as info:
        create_connection(c, ENTITY, recorder=lambda: rec)
    assert info.value.exit_code == 7
    assert any("--replace" in h for h in info.value.hints)
    assert len(transport.sent) == 1
    assert rec.events == []


def test_create_records_created() -> None:
    c, _, _, _ = client(
        [reply(200, {"data": [conn_doc(CID2, "disconnected")]}), reply(201, conn_doc())]
    )
    rec = ListRecorder()
    result = create_connection(c, ENTITY, recorder=lambda: rec, actor="profile:prod")
    assert result.connection.id == CID
    assert [e.type.value for e in rec.events] == ["connection_created"]
    data = rec.events[0].data
    assert data["entity_id"] == ENTITY
    assert data["connection_id"] == CID
    assert data["dialect"] == "monite"
    assert rec.events[0].actor == "profile:prod"
    assert rec.closed == 1


def test_replace_needs_confirmation() -> None:
    c, transport, _, _ = client(
        [reply(200, {"data": [conn_doc(status="connected", platform="xero")]})]
    )
    with pytest.raises(PolicyError, match="not confirmed"):
        create_connection(c, ENTITY, replace=True, confirm_replace=lambda _: False)
    assert [s.method for s in transport.sent] == ["GET"]


def test_replace_disconnects_then_creates() -> None:
    c, transport, _, _ = client(
        [
            reply(200, {"data": [conn_doc(status="deauthorized", platform="xero")]}),
            reply(200, conn_doc(status="disconnected", platform="xero")),
            reply(201, conn_doc(CID2)),
        ]
    )
    rec = ListRecorder()
    seen: list[str] = []

    def confirm(items: Sequence[Any]) -> bool:
        seen.extend(i.id for i in items)
        return True

    result = create_connection(
        c, ENTITY, replace=True, confirm_replace=confirm, recorder=lambda: rec
    )
    assert seen == [CID]
    assert result.connection.id == CID2
    assert [r.id for r in result.replaced] == [CID]
    assert transport.sent[1].url.endswith(f"/accounting_connections/{CID}/disconnect")
    assert [e.type.value for e in rec.events] == ["connection_disconnected", "connection_created"]
    assert rec.events[0].data["connection_id"] == CID


def test_create_race_rechecks_with_list() -> None:
    c, transport, _, _ = client(
        [
            reply(200, {"data": []}),
            reply(400, {"error": {"message": "Entity already connected"}}),
            reply(200, {"data": [conn_doc(status="pending_auth")]}),
        ]
    )
    with pytest.raises(PolicyError, match="has an active one"):
        create_connection(c, ENTITY)
    assert [s.method for s in transport.sent] == ["GET", "POST", "GET"]


def test_create_refusal_without_active_is_shown() -> None:
    c, _, _, _ = client(
        [
            reply(200, {"data": []}),
            reply(400, {"error": {"message": "Accounting integration not enabled"}}),
            reply(200, {"data": []}),
        ]
    )
    with pytest.raises(UsageError, match="not enabled"):
        create_connection(c, ENTITY)


def test_recording_failure_names_the_connection() -> None:
    def broken() -> ListRecorder:
        raise UnavailableError("ledger is locked")

    c, _, _, _ = client([reply(200, {"data": []}), reply(201, conn_doc())])
    with pytest.raises(UnavailableError, match=f"connection {CID} is pending_auth.*not recorded"):
        create_connection(c, ENTITY, recorder=broken)


def test_disconnect_records() -> None:
    c, _, _, _ = client([reply(200, conn_doc(status="disconnected"))])
    rec = ListRecorder()
    result = disconnect_connection(c, ENTITY, CID, recorder=lambda: rec)
    assert result.connection.status is ConnectionStatus.DISCONNECTED
    assert [e.type.value for e in rec.events] == ["connection_disconnected"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_wait_backs_off_until_connected() -> None:
    pending = reply(200, conn_doc())
    no_platform = reply(200, conn_doc(status="connected"))
    done = reply(200, conn_doc(status="connected", platform="quickbooks"))
    c, _, _, _ = client([pending, pending, no_platform, done])
    clock = FakeClock()
    rec = ListRecorder()
    result = wait_for_connection(
        c, ENTITY, CID, timeout=60, clock=clock.now, sleep=clock.sleep, recorder=lambda: rec
    )
    assert result.connection.platform == "quickbooks"
    assert result.polls == 4
    assert clock.sleeps == [2.0, 3.0, 4.5]
    assert [e.type.value for e in rec.events] == ["connection_connected"]


def test_wait_times_out() -> None:
    c, _, _, _ = client([reply(200, conn_doc())] * 20)
    clock = FakeClock()
    with pytest.raises(UnavailableError, match="still pending_auth after the timeout"):
        wait_for_connection(
            c,
            ENTITY,
            CID,
            timeout=10,
            clock=clock.now,
            sleep=clock.sleep,
            policy=WaitPolicy(first=1.0, factor=2.0, maximum=4.0),
        )
    assert clock.sleeps == [1.0, 2.0, 4.0, 3.0]
    assert clock.t == 10.0


@pytest.mark.parametrize(
    "retry_after",
    # The client's fixed now is 2026-01-01T00:00:00Z; the date form is 120 s later.
    ["120", "Thu, 01 Jan 2026 00:02:00 GMT"],
)
def test_wait_sleeps_out_a_long_retry_after(retry_after: str) -> None:
    """a 429 with Retry-After over the client's 60 s cap is waited out by wait."""
    limited = reply(429, {"error": {"message": "Too Many Requests"}}, {"retry-after": retry_after})
    done = reply(200, conn_doc(status="connected", platform="xero"))
    c, transport, _, client_sleeps = client([limited, done])
    clock = FakeClock()
    result = wait_for_connection(c, ENTITY, CID, timeout=1800, clock=clock.now, sleep=clock.sleep)
    assert result.connection.platform == "xero"
    assert result.polls == 2
    assert clock.sleeps == [120.0]
    assert client_sleeps.calls == []  # nothing slept behind the wait's deadline
    assert len(transport.sent) == 2


def test_wait_rate_limited_past_the_deadline_times_out() -> None:
    pending = reply(200, conn_doc())
    limited = reply(429, None, {"retry-after": "3600"})
    c, transport, _, client_sleeps = client([pending, limited])
    clock = FakeClock()
    with pytest.raises(UnavailableError) as caught:
        wait_for_connection(c, ENTITY, CID, timeout=60, clock=clock.now, sleep=clock.sleep)
    assert caught.value.exit_code == 6
    assert caught.value.message == (
        f"connection {CID} is not connected after the timeout: the platform was "
        "rate-limiting us (429, asked to wait 3600 s); last status seen: pending_auth"
    )
    assert "rerun later: keycourier connection wait" in caught.value.hints
    assert clock.sleeps == [2.0, 58.0]  # the backoff, then only what was left of the timeout
    assert clock.t == 60.0
    assert client_sleeps.calls == []
    assert len(transport.sent) == 2  # no poll at the deadline, before the asked delay


def test_wait_429_without_retry_after_keeps_the_backoff() -> None:
    limited = reply(429, None)
    done = reply(200, conn_doc(status="connected", platform="xero"))
    c, _, _, client_sleeps = client([limited, limited, done])
    clock = FakeClock()
    result = wait_for_connection(c, ENTITY, CID, timeout=60, clock=clock.now, sleep=clock.sleep)
    assert result.polls == 3
    assert clock.sleeps == [2.0, 3.0]
    assert client_sleeps.calls == []


@pytest.mark.parametrize(
    ("failure", "problem"),
    [
        (reply(503), "the platform failed (503)"),
        (
            UnavailableError("cannot reach the platform at api.example: Connection refused"),
            "cannot reach the platform at api.example: Connection refused",
        ),
    ],
)
def test_wait_client_retries_stop_at_the_deadline(
    failure: HttpResponse | Error, problem: str
) -> None:
    """the client's 503/network retries under wait never sleep past --timeout."""
    pending = reply(200, conn_doc())
    clock = FakeClock()
    c, transport, _, _ = client([pending, failure, failure, failure], sleep=clock.sleep)
    with pytest.raises(UnavailableError) as caught:
        wait_for_connection(c, ENTITY, CID, timeout=2.7, clock=clock.now, sleep=clock.sleep)
    assert caught.value.exit_code == 6
    assert caught.value.message == (
        f"connection {CID} is not connected after the timeout: the last poll failed "
        f"({problem}); last status seen: pending_auth"
    )
    assert "rerun later: keycourier connection wait" in caught.value.hints
    # the poll pause, then one 0.5 s retry pause; the 1.0 s one would end past 2.7 s
    assert clock.sleeps == [2.0, 0.5]
    assert clock.t <= 2.7
    assert len(transport.sent) == 3


def test_wait_caps_each_request_timeout_at_the_time_left() -> None:
    pending = reply(200, conn_doc())
    clock = FakeClock()
    c, transport, _, _ = client([pending, pending, pending], sleep=clock.sleep)
    with pytest.raises(UnavailableError, match="still pending_auth after the timeout"):
        wait_for_connection(c, ENTITY, CID, timeout=3.0, clock=clock.now, sleep=clock.sleep)
    assert clock.sleeps == [2.0, 1.0]
    # the profile's 30 s, cut to what is left; the last poll, at the deadline, gets the 0.25 s floor
    assert [s.timeout for s in transport.sent] == [3.0, 1.0, 0.25]
    c2, transport2, _, _ = client([reply(200, {"data": []})])
    c2.list(ENTITY)
    assert transport2.sent[0].timeout is None  # other commands: the profile's own timeout


@pytest.mark.parametrize(
    ("doc", "error", "match"),
    [
        (conn_doc(status="deauthorized", platform="xero"), AuthError, "deauthorized in xero"),
        (conn_doc(status="disconnected"), PolicyError, "is disconnected"),
        (
            conn_doc(errors=[{"message": "Xero app keys invalid"}]),
            PolicyError,
            "Xero app keys invalid",
        ),
    ],
)
def test_wait_dead_ends(doc: dict[str, Any], error: type[Error], match: str) -> None:
    c, _, _, _ = client([reply(200, doc)])
    clock = FakeClock()
    rec = ListRecorder()
    with pytest.raises(error, match=match):
        wait_for_connection(
            c, ENTITY, CID, timeout=60, clock=clock.now, sleep=clock.sleep, recorder=lambda: rec
        )
    assert rec.events == []


@settings(max_examples=EXTRA_EXAMPLES)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_list_reply_bytes_never_crash(body: bytes) -> None:
    outcome: tuple[Connection, ...] | Error
    try:
        outcome = parse_connection_list(parse_json_body(body, "connection list"))
    except Error as exc:
        outcome = exc
    if isinstance(outcome, Error):
        assert outcome.exit_code == 4
    else:
        assert all(len(c.id) == 36 for c in outcome)


@settings(max_examples=EXTRA_EXAMPLES)
@given(st.text(max_size=80))
def test_uuid_edge_parser(value: str) -> None:
    import uuid as uuid_mod

    outcome: str | Error
    try:
        outcome = parse_uuid(value, "entity ID")
    except Error as exc:
        outcome = exc
    if isinstance(outcome, Error):
        assert outcome.exit_code == 2
    else:
        assert str(uuid_mod.UUID(outcome)) == outcome


def test_one_dialect_enum_for_tokens_and_connections() -> None:
    """Connections serve the token profiles' dialects that have accounting connections."""
    from keycourier.partner import profiles
    from keycourier.partner.connections import model

    assert vars(model)["Dialect"] is profiles.Dialect
    assert set(model.DIALECTS) == {profiles.Dialect.MONITE, profiles.Dialect.TESOURO}
