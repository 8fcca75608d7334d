"""``GET /metrics`` shows a client only the profiles it may use (real ``keycourier serve``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helper_server import (
    MONITE_ID,
    MONITE_SECRET,
    Helper,
    add_client,
    base_env,
    call,
    start_helper,
)
from tests.support.platform_standin import StandinState, start_standin

AGE = "keycourier_helper_token_age_seconds"


@pytest.fixture(params=["one process", "two workers"])
def helper(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Helper]:
    """One helper process, or a supervisor whose /metrics page sums two workers."""
    with start_standin(StandinState(clients={MONITE_ID: MONITE_SECRET})) as standin:
        args = (
            ("--listen", "127.0.0.1:0", "--workers", "2") if request.param != "one process" else ()
        )
        h = start_helper(base_env(tmp_path, standin), tmp_path, *args)
        try:
            yield h
        finally:
            h.stop()


def metrics(helper: Helper, key: str) -> str:
    status, _, data = call(helper.url, "/metrics", key=key)
    assert status == 200, data
    return data.decode()


def test_each_client_sees_only_its_own_profiles(helper: Helper) -> None:
    ci = add_client(helper.env, "ci-only", "--profile", "ci")
    other = add_client(helper.env, "other-only", "--profile", "other")
    everything = add_client(helper.env, "admin", "--profile", "*")
    assert call(helper.url, "/v1/token", key=ci, body={"profile": "ci"})[0] == 200
    assert call(helper.url, "/v1/token", key=other, body={"profile": "other"})[0] == 200

    seen_by_ci = metrics(helper, ci)
    assert f'{AGE}{{profile="ci"}}' in seen_by_ci
    assert 'profile="other"' not in seen_by_ci

    seen_by_other = metrics(helper, other)
    assert f'{AGE}{{profile="other"}}' in seen_by_other
    assert 'profile="ci"' not in seen_by_other

    seen_by_all = metrics(helper, everything)
    assert f'{AGE}{{profile="ci"}}' in seen_by_all
    assert f'{AGE}{{profile="other"}}' in seen_by_all

    # the helper-wide totals name no profile: every client sees them
    for text in (seen_by_ci, seen_by_other, seen_by_all):
        assert "keycourier_helper_upstream_calls_total 2" in text
