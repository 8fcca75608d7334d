"""The connection client and workflow against the stand-in, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier._record import replace
from keycourier.errors import AuthError, ConfigError, PolicyError, UnavailableError, UsageError
from keycourier.partner.connections.client import (
    CONNECTION_RETRY,
    ConnectionClient,
    StaticTokenSource,
)
from keycourier.partner.connections.model import ConnectionStatus, Endpoint, make_endpoint
from keycourier.partner.connections.workflow import (
    WaitPolicy,
    create_connection,
    disconnect_connection,
    wait_for_connection,
)
from keycourier.redact import Secret
from tests.support.connections_standin import ConnectionsState, RunningStandin, start_standin

ENTITY = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
OTHER = "5c0a6f0e-9a43-4f63-8d2b-0b8f1ee0a111"
ROOT = Path(__file__).resolve().parents[2]


class StandinTokens:
    """A token source whose tokens the stand-in accepts; invalidate() issues a new one."""

    def __init__(self, state: ConnectionsState) -> None:
        self.state = state
        self.issued: list[str] = []
        self._new()

    def _new(self) -> None:
        token = "tok-" + secrets.token_urlsafe(16)
        self.state.accept_token(token)
        self.issued.append(token)

    def get(self) -> Secret:
        return Secret(self.issued[-1])

    def invalidate(self) -> None:
        self._new()


@pytest.fixture
def standin() -> Iterator[RunningStandin]:
    running = start_standin(ConnectionsState())
    try:
        yield running
    finally:
        running.stop()


def endpoint(url: str, dialect: str) -> Endpoint:
    version = "2024-05-25" if dialect == "monite" else "2025-06-23"
    return make_endpoint(dialect=dialect, base_url=url, version=version)


def make_client(
    running: RunningStandin, dialect: str = "monite"
) -> tuple[ConnectionClient, StandinTokens]:
    tokens = StandinTokens(running.state)
    client = ConnectionClient(
        endpoint(running.url, dialect),
        tokens,
        retry=replace(CONNECTION_RETRY, backoff=0.01),
        sleep=time.sleep,
    )
    return client, tokens


def open_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback stand-in
        return str(resp.read().decode())


@pytest.mark.parametrize(
    ("dialect", "path", "version_header", "scope_header"),
    [
        ("monite", "/v1/accounting_connections", "x-monite-version", "x-monite-entity-id"),
        ("tesouro", "/v1/accounting-connections", "x-finops-version", "x-organization-id"),
    ],
)
def test_full_lifecycle_per_dialect(
    standin: RunningStandin, dialect: str, path: str, version_header: str, scope_header: str
) -> None:
    client, _ = make_client(standin, dialect)
    created = create_connection(client, ENTITY).connection
    assert created.status is ConnectionStatus.PENDING_AUTH
    assert created.connection_url.startswith(standin.url + "/standin/authorize/")
    # The entity's user opens the link and authorizes Xero.
    assert open_url(created.connection_url + "&platform=xero") == "connected to xero\n"
    waited = wait_for_connection(
        client, ENTITY, created.id, timeout=5, policy=WaitPolicy(first=0.05)
    )
    assert waited.connection.status is ConnectionStatus.CONNECTED
    assert waited.connection.platform == "xero"
    assert client.get(ENTITY, created.id).last_pull is not None
    # One active connection per entity.
    with pytest.raises(PolicyError, match="platform xero, status connected"):
        create_connection(client, ENTITY)
    gone = disconnect_connection(client, ENTITY, created.id).connection
    assert gone.status is ConnectionStatus.DISCONNECTED
    again = create_connection(client, ENTITY).connection
    assert again.id != created.id
    assert [c.status for c in client.list(ENTITY)] == [
        ConnectionStatus.DISCONNECTED,
        ConnectionStatus.PENDING_AUTH,
    ]
    seen = [r for r in standin.state.requests if r.path.startswith(path)]
    assert seen
    for req in seen:
        assert req.headers["authorization"] == "Bearer ****"
        assert req.headers[version_header]
        assert req.headers[scope_header] == ENTITY


def test_dialects_do_not_see_each_other(standin: RunningStandin) -> None:
    monite, _ = make_client(standin, "monite")
    tesouro, _ = make_client(standin, "tesouro")
    create_connection(monite, ENTITY)
    assert tesouro.list(ENTITY) == ()
    assert monite.list(OTHER) == ()


def test_wrong_dialect_headers_are_refused(standin: RunningStandin) -> None:
    tokens = StandinTokens(standin.state)
    # The Monite path with Tesouro's headers: the version header is missing.
    mixed = Endpoint(
        dialect=endpoint(standin.url, "monite").dialect,
        base_url=standin.url,
        version_header="x-finops-version",
        version="2024-05-25",
    )
    client = ConnectionClient(mixed, tokens)
    with pytest.raises(ConfigError, match="Missing the x-monite-version HTTP header"):
        client.list(ENTITY)


def test_replace_disconnects_the_active_one(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    first = create_connection(client, ENTITY).connection
    standin.state.authorize(first.id, "quickbooks")
    result = create_connection(client, ENTITY, replace=True, confirm_replace=lambda _: True)
    assert [c.id for c in result.replaced] == [first.id]
    assert standin.state.status_of(first.id) == "disconnected"
    assert standin.state.status_of(result.connection.id) == "pending_auth"


def test_expired_token_is_refreshed_once(standin: RunningStandin) -> None:
    client, tokens = make_client(standin)
    assert client.list(ENTITY) == ()
    standin.state.revoke_token(tokens.issued[-1])  # the platform expires it
    assert client.list(ENTITY) == ()
    assert len(tokens.issued) == 2
    assert len(standin.state.requests) == 3


def test_unrefreshable_token_gives_auth_error(standin: RunningStandin) -> None:
    client = ConnectionClient(
        endpoint(standin.url, "monite"), StaticTokenSource(Secret("never-issued"))
    )
    with pytest.raises(AuthError, match="refused the given partner token \\(401\\)") as caught:
        client.list(ENTITY)
    assert "fresh token" not in caught.value.message  # none was fetched
    assert len(standin.state.requests) == 1  # the same token is not sent again


def test_rate_limit_with_retry_after_over_http(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    standin.state.inject(
        429, body={"error": {"message": "Too Many Requests"}}, headers={"Retry-After": "1"}, times=2
    )
    started = time.monotonic()
    assert client.list(ENTITY) == ()
    assert time.monotonic() - started >= 2.0
    assert len(standin.state.requests) == 3


def test_422_validation_body_in_plain_words(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    # An older API version's body with a platform the enum does not know.
    with pytest.raises(UsageError, match="invalid \\(422\\): platform: value is not a valid enum"):
        client.create(ENTITY, platform="sage")
    assert client.create(ENTITY, platform="xero").platform == "xero"


def test_create_race_is_rechecked(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    existing = create_connection(client, ENTITY).connection
    # The first list comes back empty (a lagging replica), the POST is refused.
    standin.state.inject(200, body={"data": []}, method="GET")
    with pytest.raises(PolicyError, match=f"has an active one: {existing.id}"):
        create_connection(client, ENTITY)


def test_wait_reports_deauthorized_and_errors(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    conn = create_connection(client, ENTITY).connection
    standin.state.report_error(conn.id, "Xero: invalid client keys")
    with pytest.raises(PolicyError, match="Xero: invalid client keys"):
        wait_for_connection(client, ENTITY, conn.id, timeout=5, policy=WaitPolicy(first=0.05))
    other, _ = make_client(standin, "tesouro")
    conn2 = create_connection(other, ENTITY).connection
    standin.state.authorize(conn2.id, "xero")
    standin.state.deauthorize(conn2.id)
    with pytest.raises(AuthError, match="deauthorized in xero"):
        wait_for_connection(other, ENTITY, conn2.id, timeout=5, policy=WaitPolicy(first=0.05))


def test_wait_sees_authorization_happen_later(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    conn = create_connection(client, ENTITY).connection
    timer = threading.Timer(0.4, standin.state.authorize, args=(conn.id, "quickbooks"))
    timer.start()
    try:
        result = wait_for_connection(
            client, ENTITY, conn.id, timeout=10, policy=WaitPolicy(first=0.1, maximum=0.2)
        )
    finally:
        timer.cancel()
    assert result.connection.platform == "quickbooks"
    assert result.polls >= 2


def test_wait_timeout_over_http(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    conn = create_connection(client, ENTITY).connection
    with pytest.raises(UnavailableError, match="still pending_auth after the timeout"):
        wait_for_connection(client, ENTITY, conn.id, timeout=0.3, policy=WaitPolicy(first=0.1))


def test_unknown_connection_is_404(standin: RunningStandin) -> None:
    client, _ = make_client(standin)
    with pytest.raises(UsageError, match="no such accounting connection"):
        client.get(ENTITY, OTHER)


def test_unreachable_platform_is_unavailable() -> None:
    running = start_standin(ConnectionsState(accepted_tokens=["t"]))
    url = running.url
    running.stop()
    client = ConnectionClient(
        endpoint(url, "monite"),
        StaticTokenSource(Secret("t")),
        retry=replace(CONNECTION_RETRY, backoff=0.01),
    )
    with pytest.raises(UnavailableError, match="cannot reach the platform"):
        client.list(ENTITY)


def test_standalone_runner(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.connections_standin",
            "--port",
            "0",
            "--write-token",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("url=http://127.0.0.1:")
        url = line.removeprefix("url=")
        assert url.endswith("/v1")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        client = ConnectionClient(endpoint(url, "monite"), StaticTokenSource(Secret(token)))
        conn = create_connection(client, ENTITY).connection
        assert open_url(conn.connection_url) == "connected to xero\n"
        assert client.get(ENTITY, conn.id).status is ConnectionStatus.CONNECTED
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_standalone_runner_with_token_endpoints(tmp_path: Path) -> None:
    """The demo's set-up: token routes and connection routes in one process."""
    import json

    client_id = "6a1f3c8e-2b4d-4e5f-8a9b-0c1d2e3f4a5b"
    secret = "demo-secret-" + "q" * 20
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({client_id: secret}))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.connections_standin",
            "--port",
            "0",
            "--clients-file",
            str(clients),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip().removeprefix("url=")
        root = proc.stdout.readline().decode().strip().removeprefix("root=")
        assert url == root + "/v1"
        request = urllib.request.Request(  # noqa: S310 - loopback stand-in
            url + "/auth/token",
            data=json.dumps(
                {
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                }
            ).encode(),
            headers={"content-type": "application/json", "x-monite-version": "2024-05-25"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            token = json.loads(resp.read())["access_token"]
        client = ConnectionClient(endpoint(url, "monite"), StaticTokenSource(Secret(token)))
        conn = create_connection(client, ENTITY).connection
        assert open_url(conn.connection_url) == "connected to xero\n"
        assert client.get(ENTITY, conn.id).ready
        bad = ConnectionClient(endpoint(url, "monite"), StaticTokenSource(Secret("made-up")))
        with pytest.raises(AuthError):
            bad.list(ENTITY)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0
