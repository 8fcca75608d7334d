"""``keycourier serve`` as a real subprocess on 127.0.0.1, against the platform stand-in."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier import config
from keycourier.ledger.interface import EventType
from tests.support.helper_server import (
    Helper,
    add_client,
    base_env,
    call,
    kc,
    metric,
    self_signed,
    start_helper,
)
from tests.support.openbao import free_port
from tests.support.platform_standin import RunningStandin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def helper(tmp_path: Path, standin: RunningStandin) -> Iterator[Helper]:
    env = base_env(tmp_path, standin)
    h = start_helper(env, tmp_path)
    try:
        yield h
    finally:
        h.stop()


def test_healthz_needs_no_auth_and_metrics_do(helper: Helper) -> None:
    status, _, body = call(helper.url, "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    status, headers, _ = call(helper.url, "/metrics")
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_auth_matrix(helper: Helper, standin: RunningStandin) -> None:
    key = add_client(helper.env, "ci-runner", "--profile", "ci")
    slow = add_client(helper.env, "slow", "--profile", "ci", "--rate", "1")
    doomed = add_client(helper.env, "doomed", "--profile", "*")
    body = {"profile": "ci"}

    status, _, data = call(helper.url, "/v1/token", key=key, body=body)
    assert status == 200, data
    doc = json.loads(data)
    assert set(doc) == {"access_token", "token_type", "expires_in", "expires_at"}
    assert standin.state.is_valid(doc["access_token"])

    # no key, malformed header, wrong key (right shape), garbage key
    assert call(helper.url, "/v1/token", body=body)[0] == 401
    assert (
        call(helper.url, "/v1/token", body=body, headers={"Authorization": "Basic abc"})[0] == 401
    )
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert call(helper.url, "/v1/token", key=wrong, body=body)[0] == 401
    assert call(helper.url, "/v1/token", key="kck_00000000_" + "x" * 43, body=body)[0] == 401

    # out-of-scope profile; unknown profile for a '*' client
    status, _, data = call(helper.url, "/v1/token", key=key, body={"profile": "other"})
    assert status == 403
    assert call(helper.url, "/v1/token", key=doomed, body={"profile": "nope"})[0] == 404

    # oversized and malformed bodies
    assert (
        call(helper.url, "/v1/token", key=key, raw=b'{"profile": "' + b"a" * 5000 + b'"}')[0] == 413
    )
    assert call(helper.url, "/v1/token", key=key, raw=b"not json")[0] == 400
    assert call(helper.url, "/v1/token", key=key, body={"profile": "ci", "x": 1})[0] == 400

    # rate limit: 1/s with a burst of 2
    codes = [call(helper.url, "/v1/token", key=slow, body=body) for _ in range(3)]
    assert [c[0] for c in codes] == [200, 200, 429]
    assert int(codes[2][1]["Retry-After"]) >= 1

    # revoked key: refused by the running helper within about a second
    assert call(helper.url, "/v1/token", key=doomed, body=body)[0] == 200
    r = kc(helper.env, "helper", "client", "revoke", "doomed")
    assert r.returncode == 0, r.stderr
    time.sleep(1.2)
    assert call(helper.url, "/v1/token", key=doomed, body=body)[0] == 401

    status, _, data = call(helper.url, "/metrics", key=key)
    text = data.decode()
    assert status == 200
    assert 'keycourier_helper_requests_total{route="token",status="401"} 5' in text
    assert 'keycourier_helper_requests_total{route="token",status="403"} 1' in text
    assert 'keycourier_helper_requests_total{route="token",status="413"} 1' in text
    assert 'keycourier_helper_requests_total{route="token",status="429"} 1' in text
    assert metric(text, "keycourier_helper_upstream_calls_total") == 1
    # four token 200s: the first waited for the platform, the other three were hits
    assert metric(text, "keycourier_helper_cache_misses_total") == 1
    assert metric(text, "keycourier_helper_cache_hits_total") == 3  # slow x2, doomed
    assert 'keycourier_helper_token_age_seconds{profile="ci"}' in text


def test_client_list_never_shows_keys(helper: Helper) -> None:
    key = add_client(helper.env, "lister", "--profile", "ci")
    r = kc(helper.env, "helper", "client", "list", "--json")
    assert r.returncode == 0
    assert key not in r.stdout
    doc = json.loads(r.stdout)
    assert doc[0]["name"] == "lister"
    assert "key_sha256" not in doc[0]
    store = Path(helper.env["HOME"]) / ".local" / "share" / "keycourier" / "helper-clients.json"
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert key not in store.read_text()


def burst(url: str, key: str, n: int) -> list[tuple[int, str]]:
    """``n`` concurrent ``POST /v1/token`` for profile ci: (status, access token or "")."""
    import aiohttp

    async def scenario() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, str]:
                async with s.post(
                    url + "/v1/token",
                    json={"profile": "ci"},
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    doc = await resp.json()
                    return resp.status, doc.get("access_token", "")

            return await asyncio.gather(*(one() for _ in range(n)))

    return asyncio.run(scenario())


def test_200_concurrent_requests_make_one_upstream_call(
    helper: Helper, standin: RunningStandin
) -> None:
    key = add_client(helper.env, "burst", "--profile", "ci", "--rate", "10000")
    standin.state.delay = 0.3
    results = burst(helper.url, key, 200)
    assert all(status == 200 for status, _ in results)
    assert len({tok for _, tok in results}) == 1
    assert standin.state.token_calls == 1


def test_200_concurrent_requests_across_a_refresh_make_one_upstream_call(
    tmp_path: Path, standin: RunningStandin
) -> None:
    standin.state.monite_lifetime = 4  # refresh point at 2 s (refresh_at = 0.5), served to 3 s
    env = base_env(tmp_path, standin, lifetime_profile="refresh_at = 0.5")
    h = start_helper(env, tmp_path)
    try:
        key = add_client(env, "burst", "--profile", "ci", "--rate", "10000")
        status, _, data = call(h.url, "/v1/token", key=key, body={"profile": "ci"})
        assert status == 200, data
        warmed = time.monotonic()
        assert standin.state.token_calls == 1
        standin.state.delay = 0.3  # the refresh stays in flight while the burst arrives
        time.sleep(max(0.0, warmed + 2.3 - time.monotonic()))  # past 50%, well before expiry
        results = burst(h.url, key, 200)
        assert [status for status, _ in results] == [200] * 200
        # the old token (while the background refresh runs) or the new one: both issued here
        assert all(tok in standin.state.issued for _, tok in results)
        deadline = time.monotonic() + 5
        while len(standin.state.issued) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # longer than the stand-in's delay: a second refresh would show by now
        assert standin.state.token_calls == 2
        text = call(h.url, "/metrics", key=key)[2].decode()
        assert metric(text, "keycourier_helper_upstream_calls_total") == 2
    finally:
        h.stop()


def test_token_and_exec_go_through_the_helper(
    helper: Helper, standin: RunningStandin, tmp_path: Path
) -> None:
    key = add_client(helper.env, "cli", "--profile", "ci")
    key_file = tmp_path / "ci.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    env = dict(helper.env)
    env.pop("MONITE_CLIENT_SECRET")  # the CLI must not need the platform credentials now
    env.update(
        KEYCOURIER_HELPER_URL=helper.url, KEYCOURIER_HELPER_KEY_FILE=str(key_file), KF=str(key_file)
    )
    r = kc(env, "token", "--profile", "ci", "--format", "json")
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["access_token"]
    assert standin.state.is_valid(token)
    r = kc(
        env,
        "exec",
        "--profile",
        "ci",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['MONITE_TOKEN']);"
        " print(open(os.environ['KF']).read().strip())",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "<concealed by keycourier>\n<concealed by keycourier>\n"  # token, client key
    assert standin.state.token_calls == 1
    env["KEYCOURIER_HELPER_KEY"] = "kck_00000000_" + "y" * 43
    env.pop("KEYCOURIER_HELPER_KEY_FILE")
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 5
    assert r.stdout == ""
    r = kc(env | {"KEYCOURIER_HELPER_KEY": key}, "token", "--profile", "other")
    assert r.returncode == 7  # out of scope: a policy refusal


def test_exec_through_the_helper_without_a_local_profile_uses_the_documented_default(
    helper: Helper, tmp_path: Path
) -> None:
    """No [profiles.ci] on the client's side: the token goes to PARTNER_TOKEN (documented as
    the default of env_name), or to the variable --env-name names."""
    key_file = tmp_path / "ci.key"
    key_file.write_text(add_client(helper.env, "bare", "--profile", "ci") + "\n")
    key_file.chmod(0o600)
    empty = tmp_path / "client-config.toml"
    empty.write_text("")
    env = {k: v for k, v in helper.env.items() if not k.startswith("MONITE_")}
    env.update(
        KEYCOURIER_CONFIG=str(empty),
        KEYCOURIER_HELPER_URL=helper.url,
        KEYCOURIER_HELPER_KEY_FILE=str(key_file),
    )
    show = "import os; print(sorted(k for k in os.environ if k.endswith('TOKEN')))"
    r = kc(env, "exec", "--profile", "ci", "--", sys.executable, "-c", show)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['PARTNER_TOKEN']\n"
    r = kc(
        env, "exec", "--profile", "ci", "--env-name", "CI_TOKEN", "--", sys.executable, "-c", show
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['CI_TOKEN']\n"
    docs = (ROOT / "docs" / "token-helper.md").read_text() + (ROOT / "README.md").read_text()
    assert "`PARTNER_TOKEN`" in docs


def test_events_are_recorded_once_per_client_and_nothing_is_lost_on_shutdown(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    h = start_helper(env, tmp_path)
    try:
        k1 = add_client(env, "one", "--profile", "ci")
        k2 = add_client(env, "two", "--profile", "ci")
        for key in (k1, k1, k1, k2, k2):
            assert call(h.url, "/v1/token", key=key, body={"profile": "ci"})[0] == 200
        text = call(h.url, "/metrics", key=k1)[2].decode()
        assert "keycourier_helper_handouts_first_total 2" in text
        assert "keycourier_helper_handouts_repeat_total 3" in text
    finally:
        err, code = h.stop()
    assert code == 0, err
    assert "3 events recorded, 0 failed" in err
    token = next(iter(standin.state.issued))
    settings = config.load(env=env)
    from keycourier.ledger.recorder import open_recorder
    from keycourier.partner.tokens import Token
    from keycourier.redact import Secret

    fp = Token(Secret(token), "Bearer", 1, 0).fingerprint
    rec = open_recorder(settings)
    try:
        events = [s.event for s in rec.history(fingerprint=fp)]
    finally:
        rec.close()
    kinds = sorted((e.type, e.actor) for e in events)
    assert kinds == [
        (EventType.TOKEN_HANDED_OUT, "client:one"),
        (EventType.TOKEN_HANDED_OUT, "client:two"),
        (EventType.TOKEN_ISSUED, "profile:ci"),
    ]
    for e in events:
        assert token not in json.dumps(dict(e.data))


def test_outage_serves_cached_token_until_expiry_then_503(
    tmp_path: Path, standin: RunningStandin
) -> None:
    standin.state.monite_lifetime = 6  # refresh at 50% (3 s); never served in its last second
    env = base_env(tmp_path, standin, lifetime_profile="max_retries = 0\nrefresh_at = 0.5")
    h = start_helper(env, tmp_path)
    try:
        key = add_client(env, "ci", "--profile", "ci")
        status, _, data = call(h.url, "/v1/token", key=key, body={"profile": "ci"})
        assert status == 200
        first = json.loads(data)["access_token"]
        standin.state.inject(503, count=1000)
        time.sleep(3.3)  # past the 80% refresh point, before expiry
        status, _, data = call(h.url, "/v1/token", key=key, body={"profile": "ci"})
        assert status == 200
        assert json.loads(data)["access_token"] == first
        time.sleep(2.0)  # 5.3 s: inside the last second, so no longer served
        status, headers, data = call(h.url, "/v1/token", key=key, body={"profile": "ci"})
        assert status == 503
        assert "upstream unavailable" in json.loads(data)["error"]
        assert "Retry-After" in headers
        assert first not in data.decode()
        # the one refresh (at 3.3 s) failed; the 503 came inside the back-off, with no new call
        text = call(h.url, "/metrics", key=key)[2].decode()
        assert metric(text, "keycourier_helper_upstream_errors_total") == 1
        assert metric(text, "keycourier_helper_upstream_calls_total") == 2
    finally:
        h.stop()


def test_upstream_auth_failure_is_502_with_a_reason(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    env["MONITE_CLIENT_SECRET"] = "wrong-secret-zzzzzzzzzzzz"
    h = start_helper(env, tmp_path)
    try:
        key = add_client(env, "ci", "--profile", "ci")
        status, _, data = call(h.url, "/v1/token", key=key, body={"profile": "ci"})
        assert status == 502
        reason = json.loads(data)["error"]
        assert "refused" in reason
        assert "wrong-secret-zzzzzzzzzzzz" not in reason
    finally:
        h.stop()


def test_non_loopback_is_refused_without_tls(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    r = kc(env, "serve", "--listen", f"0.0.0.0:{free_port()}")
    assert r.returncode == 2
    assert "non-loopback" in r.stderr
    r = kc(env, "serve", "--listen", f"0.0.0.0:{free_port()}", "--allow-remote")
    assert r.returncode == 2
    assert "--tls-cert" in r.stderr


def test_unix_socket_mode(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    sock = tmp_path / "helper.sock"
    h = start_helper(env, tmp_path, "--socket", str(sock))
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        key = add_client(env, "local", "--profile", "ci")
        r = kc(
            env | {"KEYCOURIER_HELPER_URL": f"unix:{sock}", "KEYCOURIER_HELPER_KEY": key},
            "token",
            "--profile",
            "ci",
        )
        assert r.returncode == 0, r.stderr
        assert standin.state.is_valid(r.stdout.strip())
    finally:
        h.stop()
    assert not sock.exists()


def test_tls_listener_and_helper_client_with_a_ca_file(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    cert, key_pem = self_signed(tmp_path)
    h = start_helper(
        env,
        tmp_path,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key_pem),
    )
    try:
        assert h.url.startswith("https://127.0.0.1:")
        key = add_client(env, "tls", "--profile", "ci")
        client_env = env | {"KEYCOURIER_HELPER_URL": h.url, "KEYCOURIER_HELPER_KEY": key}
        r = kc(client_env | {"KEYCOURIER_HELPER_CACERT": str(cert)}, "token", "--profile", "ci")
        assert r.returncode == 0, r.stderr
        assert standin.state.is_valid(r.stdout.strip())
        r = kc(client_env, "token", "--profile", "ci")  # an unknown CA is refused
        assert r.returncode == 6
        assert r.stdout == ""
    finally:
        h.stop()
