"""The upstream token client and the cache against the platform stand-in, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keycourier.errors import AuthError, ConfigError, ExitCode, UnavailableError
from keycourier.helper.cache import TokenCache
from keycourier.partner.profiles import Profile, parse_profile
from keycourier.partner.retry import RetryPolicy
from keycourier.partner.tokens import ClientCredentials, Token, fetch_token
from keycourier.redact import Secret
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

MONITE_ID = "5b7c3f1e-8d2a-4c6b-9e0f-1a2b3c4d5e6f"
MONITE_SECRET = "mon-secret-7f3a9c2e1b8d4f6a0c5e7b9d"
TESOURO_ID = "tesouro-client-42"
TESOURO_SECRET = "tes-secret-0a1b2c3d4e5f6a7b8c9d"


@pytest.fixture
def standin() -> Iterator[RunningStandin]:
    state = StandinState(clients={MONITE_ID: MONITE_SECRET, TESOURO_ID: TESOURO_SECRET})
    running = start_standin(state)
    try:
        yield running
    finally:
        running.stop()


def monite_profile(url: str, **extra: Any) -> Profile:
    table = {
        "dialect": "monite",
        "base_url": f"{url}/v1",
        "environment": "sandbox",
        "version": "2024-05-25",
        "client_id_env": "MID",
        "client_secret_env": "MSECRET",
        **extra,
    }
    return parse_profile("mon", table, "test")


def tesouro_profile(url: str) -> Profile:
    table = {
        "dialect": "tesouro",
        "base_url": url,
        "environment": "sandbox",
        "version": "2025-06-23",
        "client_id_env": "TID",
        "client_secret_env": "TSECRET",
    }
    return parse_profile("tes", table, "test")


MONITE_CREDS = ClientCredentials(
    MONITE_ID, Secret(MONITE_SECRET), "environment variables MID/MSECRET"
)
TESOURO_CREDS = ClientCredentials(
    TESOURO_ID, Secret(TESOURO_SECRET), "environment variables TID/TSECRET"
)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("lifetime", [1800, 86400])
def test_monite_token_reads_the_documented_lifetimes(
    standin: RunningStandin, lifetime: int
) -> None:
    standin.state.monite_lifetime = lifetime
    token: Token = run(fetch_token(monite_profile(standin.url), MONITE_CREDS, clock=lambda: 1000.0))
    assert token.expires_in == lifetime
    assert token.expires_at == 1000.0 + lifetime
    assert standin.state.is_valid(token.access_token.reveal())
    seen = standin.state.requests[-1]
    assert seen["content_type"] == "application/json"
    assert seen["headers"]["x-monite-version"] == "2024-05-25"


def test_lifetime_counts_from_when_the_request_was_sent(standin: RunningStandin) -> None:
    """A reply that takes 1.5 s to arrive does not push expires_at 1.5 s past the real
    expiry: the platform started the lifetime after the request left, so counting from
    the send time is the conservative choice (counting from the arrival was not)."""
    standin.state.delay = 1.5
    before = time.time()
    token: Token = run(fetch_token(monite_profile(standin.url), MONITE_CREDS))
    arrived = time.time()
    assert arrived - before >= 1.5
    assert before <= token.issued_at <= before + 0.5
    assert token.expires_at <= before + 0.5 + 1800
    assert token.expires_at < arrived + 1800 - 1.0
    # the stand-in issued it after the delay: keycourier's expiry is the earlier one
    issued = standin.state.issued[token.access_token.reveal()]
    assert token.expires_at <= issued.expires_at - 1.0


def test_tesouro_token_is_form_encoded_with_a_3600_s_lifetime(standin: RunningStandin) -> None:
    token: Token = run(fetch_token(tesouro_profile(standin.url), TESOURO_CREDS))
    assert token.expires_in == 3600
    assert token.access_token.reveal().count(".") == 2  # JWT-shaped
    seen = standin.state.requests[-1]
    assert seen["content_type"] == "application/x-www-form-urlencoded"
    assert seen["headers"]["x-tesouro-version"] == "2025-06-23"


def test_tesouro_expired_token_gets_the_documented_400(standin: RunningStandin) -> None:
    clock = [1000.0]
    standin.state.clock = lambda: clock[0]
    token: Token = run(fetch_token(tesouro_profile(standin.url), TESOURO_CREDS))
    req = urllib.request.Request(  # noqa: S310 - loopback http
        f"{standin.url}/v1/standin/whoami",
        headers={"Authorization": f"Bearer {token.access_token.reveal()}"},
    )
    with urllib.request.urlopen(req) as resp:  # noqa: S310 - loopback
        assert resp.status == 200
    clock[0] += 3601
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)  # noqa: S310 - loopback
    assert info.value.code == 400
    assert json.loads(info.value.read()) == {"error": {"message": "The token has been expired."}}


def test_wrong_secret_is_an_auth_error_naming_profile_and_source(standin: RunningStandin) -> None:
    bad = ClientCredentials(
        MONITE_ID, Secret("wrong-secret-value-123"), "environment variables MID/MSECRET"
    )
    with pytest.raises(AuthError) as info:
        run(fetch_token(monite_profile(standin.url), bad))
    msg = info.value.message
    assert info.value.exit_code is ExitCode.AUTH
    assert "profile mon" in msg
    assert "environment variables MID/MSECRET" in msg
    assert "HTTP 401" in msg
    assert "x-request-id" in msg
    assert "wrong-secret-value-123" not in msg


def test_non_uuid_client_id_is_a_422_config_error(standin: RunningStandin) -> None:
    bad = ClientCredentials("not-a-uuid", Secret(MONITE_SECRET), "env")
    with pytest.raises(ConfigError) as info:
        run(fetch_token(monite_profile(standin.url), bad))
    assert "HTTP 422" in info.value.message
    assert "client_id" in info.value.message
    assert MONITE_SECRET not in info.value.message


def test_missing_version_header_is_the_documented_400(standin: RunningStandin) -> None:
    profile = monite_profile(standin.url)
    from keycourier._record import replace

    no_version = replace(profile, version=None, version_header=None)
    with pytest.raises(ConfigError) as info:
        run(fetch_token(no_version, MONITE_CREDS))
    assert "missing_api_version" in info.value.message
    assert "Missing the x-monite-version HTTP header" in info.value.message


def test_429_honours_retry_after(standin: RunningStandin) -> None:
    standin.state.inject(429, count=2, retry_after="2")
    sleeps = Sleeps()
    token: Token = run(fetch_token(monite_profile(standin.url), MONITE_CREDS, sleep=sleeps))
    assert sleeps.calls == [2.0, 2.0]
    assert standin.state.token_calls == 3
    assert standin.state.is_valid(token.access_token.reveal())


def test_429_with_a_long_retry_after_gives_up_as_unavailable(standin: RunningStandin) -> None:
    standin.state.inject(429, retry_after="3600")
    with pytest.raises(UnavailableError) as info:
        run(fetch_token(monite_profile(standin.url), MONITE_CREDS, sleep=Sleeps()))
    assert info.value.exit_code is ExitCode.UNAVAILABLE
    assert "rate limiting" in info.value.message


def test_5xx_is_retried_with_bounded_jittered_backoff(standin: RunningStandin) -> None:
    standin.state.inject(503, count=2)
    sleeps = Sleeps()
    policy = RetryPolicy(server_retries=3, backoff=0.5)
    run(
        fetch_token(
            monite_profile(standin.url), MONITE_CREDS, sleep=sleeps, retry=policy, rand=lambda: 1.0
        )
    )
    assert sleeps.calls == [0.5, 1.0]
    standin.state.inject(500, count=10)
    sleeps2 = Sleeps()
    with pytest.raises(UnavailableError, match="HTTP 500"):
        run(
            fetch_token(
                monite_profile(standin.url),
                MONITE_CREDS,
                sleep=sleeps2,
                retry=policy,
                rand=lambda: 0.5,
            )
        )
    assert sleeps2.calls == [0.25, 0.5, 1.0]  # 3 retries, then give up: 4 calls


def test_timeouts_are_retried_then_unavailable(standin: RunningStandin) -> None:
    standin.state.delay = 0.5
    profile = monite_profile(standin.url, timeout=0.1, max_retries=1)
    with pytest.raises(UnavailableError, match=r"TimeoutError|cannot reach"):
        run(fetch_token(profile, MONITE_CREDS, sleep=Sleeps()))


def test_unreachable_endpoint_is_unavailable() -> None:
    from tests.support.openbao import free_port

    profile = monite_profile(f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(UnavailableError, match="cannot reach"):
        run(fetch_token(profile, MONITE_CREDS, sleep=Sleeps()))


def test_200_concurrent_callers_across_a_refresh_make_one_upstream_call(
    standin: RunningStandin,
) -> None:
    profile = monite_profile(standin.url)
    clock = [10_000.0]
    standin.state.delay = 0.2  # every caller arrives while the refresh is in flight

    async def fetch(p: Profile) -> Token:
        return await fetch_token(p, MONITE_CREDS, clock=lambda: clock[0])

    async def scenario() -> None:
        cache = TokenCache(fetch, clock=lambda: clock[0])
        # cold start: 200 callers, one upstream call
        results = await asyncio.gather(*(cache.get(profile) for _ in range(200)))
        assert standin.state.token_calls == 1
        first = results[0].token.access_token.reveal()
        assert {r.token.access_token.reveal() for r in results} == {first}
        # inside the refresh window (past 80%): old token served, exactly one refresh
        clock[0] += 1800 * 0.85
        results = await asyncio.gather(*(cache.get(profile) for _ in range(200)))
        assert {r.token.access_token.reveal() for r in results} == {first}
        while cache.peek("mon") is not None and cache.peek("mon").access_token.reveal() == first:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        assert standin.state.token_calls == 2
        # past expiry: nobody gets the old token; 200 callers, one call
        clock[0] += 1800
        results = await asyncio.gather(*(cache.get(profile) for _ in range(200)))
        assert standin.state.token_calls == 3
        tokens = {r.token.access_token.reveal() for r in results}
        assert len(tokens) == 1
        assert first not in tokens

    run(scenario())


def test_default_refresh_point_is_80_percent_of_the_lifetime(standin: RunningStandin) -> None:
    profile = monite_profile(standin.url)  # no refresh_at: the default
    assert profile.refresh_fraction == 0.8
    clock = [10_000.0]

    async def fetch(p: Profile) -> Token:
        return await fetch_token(p, MONITE_CREDS, clock=lambda: clock[0])

    async def scenario() -> None:
        cache = TokenCache(fetch, clock=lambda: clock[0], background_refresh=False)
        first = (await cache.get(profile)).token
        assert first.expires_in == 1800
        assert standin.state.token_calls == 1
        clock[0] = first.issued_at + 1800 * 0.79  # before the refresh point: a hit
        again = await cache.get(profile)
        assert again.hit
        assert again.token is first
        assert cache.fresh(profile) is first
        assert standin.state.token_calls == 1
        clock[0] = first.issued_at + 1800 * 0.81  # past it: one refresh
        assert cache.fresh(profile) is None
        refreshed = await cache.get(profile)
        assert not refreshed.hit
        assert standin.state.token_calls == 2
        assert refreshed.token.access_token.reveal() != first.access_token.reveal()
        assert standin.state.is_valid(refreshed.token.access_token.reveal())

    run(scenario())


def test_outage_serves_cached_until_expiry_then_fails_cleanly(standin: RunningStandin) -> None:
    profile = monite_profile(standin.url, max_retries=0)
    clock = [10_000.0]

    async def fetch(p: Profile) -> Token:
        return await fetch_token(p, MONITE_CREDS, clock=lambda: clock[0], sleep=Sleeps())

    async def scenario() -> None:
        cache = TokenCache(
            fetch, clock=lambda: clock[0], background_refresh=False, failure_backoff=0
        )
        good = (await cache.get(profile)).token
        standin.state.inject(503, count=100)
        clock[0] += 1800 * 0.9  # refresh due, upstream down: the cached token is still served
        again = await cache.get(profile)
        assert again.token.access_token.reveal() == good.access_token.reveal()
        assert cache.stats.upstream_errors == 1
        clock[0] += 1800 * 0.1  # now expired
        with pytest.raises(UnavailableError, match="HTTP 503"):
            await cache.get(profile)

    run(scenario())


def test_profile_token_source_for_connections(
    standin: RunningStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keycourier import config
    from keycourier.helper.service import ProfileTokenSource

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[profiles.mon]\ndialect = "monite"\nbase_url = "{standin.url}/v1"\n'
        'environment = "sandbox"\nversion = "2024-05-25"\n'
        'client_id_env = "MID"\nclient_secret_env = "MSECRET"\n'
    )
    env = {
        "HOME": str(tmp_path),
        "MID": MONITE_ID,
        "MSECRET": MONITE_SECRET,
        "KEYCOURIER_LEDGER": str(tmp_path / "ledger.db"),
    }
    settings = config.load(config_path=cfg, env=env)
    source = ProfileTokenSource(settings, "mon")
    first = source.get()
    assert source.get().reveal() == first.reveal()  # cached
    assert standin.state.token_calls == 1
    source.invalidate()  # what the connection client does after a 401
    second = source.get()
    assert second.reveal() != first.reveal()
    assert standin.state.token_calls == 2
    assert source.get().reveal() == second.reveal()  # the new token was cached
    assert standin.state.is_valid(second.reveal())
