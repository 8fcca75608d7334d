"""The helper's repeat-request path (a known key, a reply already rendered) keeps every check.

``keycourier serve`` runs as a real subprocess on 127.0.0.1 against the
platform stand-in; every request is real HTTP.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helper_server import (
    Helper,
    add_client,
    base_env,
    call,
    kc,
    start_helper,
)
from tests.support.platform_standin import RunningStandin

CI = {"profile": "ci"}


@pytest.fixture
def helper(tmp_path: Path, standin: RunningStandin) -> Iterator[Helper]:
    h = start_helper(base_env(tmp_path, standin), tmp_path)
    try:
        yield h
    finally:
        h.stop()


def metric(helper: Helper, key: str, line_start: str) -> int:
    status, _, data = call(helper.url, "/metrics", key=key)
    assert status == 200
    for line in data.decode().splitlines():
        if line.startswith(line_start + " "):
            return int(line.rsplit(" ", 1)[1])
    return 0


def test_a_warm_key_is_still_checked_for_scope_size_body_and_rate(helper: Helper) -> None:
    key = add_client(helper.env, "warm", "--profile", "ci", "--rate", "1")
    first = call(helper.url, "/v1/token", key=key, body=CI)
    assert first[0] == 200
    token = json.loads(first[2])["access_token"]
    # the same key, the same body: now served from the ready reply
    again = call(helper.url, "/v1/token", key=key, body=CI)
    assert again[0] == 200
    assert json.loads(again[2])["access_token"] == token
    # burst of 2 used up: the ready reply is not a way around the rate limit
    status, headers, _ = call(helper.url, "/v1/token", key=key, body=CI)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    time.sleep(2.1)  # refill the bucket (2 requests)
    assert call(helper.url, "/v1/token", key=key, body={"profile": "other"})[0] == 403
    assert (
        call(helper.url, "/v1/token", key=key, raw=b'{"profile": "' + b"c" * 2000 + b'"}')[0] == 413
    )
    time.sleep(2.1)
    assert call(helper.url, "/v1/token", key=key, raw=b'{"profile": "ci"')[0] == 400
    # a key one character off the warm one is not the warm one
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert call(helper.url, "/v1/token", key=wrong, body=CI)[0] == 401
    assert call(helper.url, "/v1/token", key=key.lower(), body=CI)[0] == 401


def test_other_spellings_of_the_bearer_header_still_work(helper: Helper) -> None:
    key = add_client(helper.env, "speller", "--profile", "ci", "--rate", "1000")
    for auth in (f"Bearer {key}", f"bearer {key}", f"BEARER  {key} ", f"Bearer {key}"):
        for _ in range(2):
            status, _, data = call(
                helper.url, "/v1/token", body=CI, headers={"Authorization": auth}
            )
            assert status == 200, (auth, data)
    assert (
        call(helper.url, "/v1/token", body=CI, headers={"Authorization": f"Basic {key}"})[0] == 401
    )


def test_a_warm_key_is_refused_once_revoked(helper: Helper) -> None:
    key = add_client(helper.env, "doomed", "--profile", "ci", "--rate", "1000")
    reader = add_client(helper.env, "reader", "--profile", "ci")
    for _ in range(5):
        assert call(helper.url, "/v1/token", key=key, body=CI)[0] == 200
    r = kc(helper.env, "helper", "client", "revoke", "doomed")
    assert r.returncode == 0, r.stderr
    time.sleep(1.2)
    assert call(helper.url, "/v1/token", key=key, body=CI)[0] == 401
    # every 200 is counted once, as a hit, and as one first hand-out plus repeats
    assert (
        metric(helper, reader, 'keycourier_helper_requests_total{route="token",status="200"}') == 5
    )
    assert metric(helper, reader, "keycourier_helper_handouts_first_total") == 1
    assert metric(helper, reader, "keycourier_helper_handouts_repeat_total") == 4
    assert metric(helper, reader, "keycourier_helper_cache_hits_total") >= 4


def test_expires_in_counts_down_on_repeat_requests(helper: Helper) -> None:
    key = add_client(helper.env, "clock", "--profile", "ci", "--rate", "1000")
    one = json.loads(call(helper.url, "/v1/token", key=key, body=CI)[2])
    time.sleep(2.2)
    two = json.loads(call(helper.url, "/v1/token", key=key, body=CI)[2])
    assert two["access_token"] == one["access_token"]
    assert two["expires_at"] == one["expires_at"]
    assert one["expires_in"] - 3 <= two["expires_in"] <= one["expires_in"] - 2


def test_a_warm_key_gets_the_refreshed_token_after_the_refresh_point(
    tmp_path: Path, standin: RunningStandin
) -> None:
    standin.state.monite_lifetime = 4  # refresh at 50%: 2 s
    env = base_env(tmp_path, standin, lifetime_profile="refresh_at = 0.5")
    h = start_helper(env, tmp_path)
    try:
        key = add_client(env, "ci", "--profile", "ci", "--rate", "1000")
        first = json.loads(call(h.url, "/v1/token", key=key, body=CI)[2])["access_token"]
        assert json.loads(call(h.url, "/v1/token", key=key, body=CI)[2])["access_token"] == first
        time.sleep(2.2)
        call(h.url, "/v1/token", key=key, body=CI)  # starts the refresh (old token meanwhile)
        deadline = time.monotonic() + 5
        latest = first
        while latest == first and time.monotonic() < deadline:
            time.sleep(0.1)
            latest = json.loads(call(h.url, "/v1/token", key=key, body=CI)[2])["access_token"]
        assert latest != first
        assert standin.state.token_calls == 2
    finally:
        h.stop()


def test_a_body_arriving_in_pieces_is_read_whole(helper: Helper) -> None:
    key = add_client(helper.env, "slowpoke", "--profile", "ci")
    host, port = helper.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"profile": "ci"}'
    head = (
        f"POST /v1/token HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + body[:6])
        time.sleep(0.3)
        sock.sendall(body[6:12])
        time.sleep(0.3)
        sock.sendall(body[12:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"200", reply
    doc = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert set(doc) == {"access_token", "token_type", "expires_in", "expires_at"}
