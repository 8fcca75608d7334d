"""Parsers under attack: the token helper's HTTP request handling.

A real ``keycourier serve`` on 127.0.0.1 (against the platform stand-in)
gets generated methods, paths, headers and bodies. Property: every reply is
2xx or 4xx, every error reply is a JSON object with an ``error`` string, the
helper never answers 5xx and never dies.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import FUZZ_EXAMPLES
from tests.support.helper_server import Helper, add_client, base_env, start_helper
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

MONITE_ID = "2f0c9d3e-1b4a-4e8f-a6c5-7d9e0f1a2b3c"
MONITE_SECRET = "fuzz-secret-5e6f7a8b9c0d1e2f3a4b"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Helper, str]]:
    standin: RunningStandin = start_standin(StandinState(clients={MONITE_ID: MONITE_SECRET}))
    tmp: Path = tmp_path_factory.mktemp("helper-fuzz")
    home = tmp / "home"
    home.mkdir()
    try:
        env = base_env(tmp, standin)
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local/share"),
            MONITE_CLIENT_SECRET=MONITE_SECRET,
        )
        key = add_client(env, "fuzzer", "--profile", "ci", "--rate", "1000")
        helper = start_helper(env, tmp)
        try:
            yield helper, key
        finally:
            _, code = helper.stop()
            assert code == 0, f"the helper exited with {code}"
    finally:
        standin.stop()


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
paths = st.sampled_from(
    ["/v1/token", "/healthz", "/metrics", "/", "/v1/token/", "/v1//token", "/%00", "/v1/token?x=1"]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
    lambda s: "/" + s.replace("#", "")
)
bodies = (
    st.binary(max_size=300)
    | st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["profile", "x", ""]),
            st.none() | st.booleans() | st.integers() | st.sampled_from(["ci", "other", "nope"]),
            max_size=3,
        ),
    )
    | st.sampled_from([b'{"profile": "ci"}', b"{", b"[]", b'"ci"', b"null", b"\xff\xfe"])
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "HEAD"]))
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["valid", "none", "garbage", "basic", "empty", "wrong"]))
    if auth != "none":
        headers["Authorization"] = {
            "valid": "Bearer {key}",
            "garbage": "Bearer " + draw(header_text),
            "basic": "Basic " + draw(header_text),
            "empty": "",
            "wrong": "Bearer {key}x",
        }[auth]
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/json; charset=x"])
            | header_text
        )
    for name in draw(st.lists(st.sampled_from(["X-Forwarded-For", "Host", "Accept"]), max_size=2)):
        headers[name] = draw(header_text)
    return method, draw(paths), headers, draw(bodies)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(req=requests())
@example(req=("POST", "/v1/token", {"Authorization": "Bearer {key}"}, b'{"profile": "ci"}'))
@example(req=("GET", "/v1/token", {"Authorization": "Bearer {key}"}, b""))
def test_generated_requests(
    running: tuple[Helper, str], req: tuple[str, str, dict[str, str], bytes]
) -> None:
    helper, key = running
    method, path, headers, body = req
    headers = {k: v.replace("{key}", key) for k, v in headers.items()}
    status, data = _send(helper, method, path, headers, body)
    assert helper.proc.poll() is None, "the helper died"
    assert 200 <= status < 500, (status, data[:200])
    routed = (method, path.split("?")[0]) in ROUTES or (method == "HEAD" and path in GETS)
    if status >= 400 and method != "HEAD" and routed:
        _assert_json_error(data)


ROUTES = {("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/token")}
GETS = {"/healthz", "/metrics"}


def _assert_json_error(data: bytes) -> None:
    doc = json.loads(data)
    assert isinstance(doc, dict)
    assert isinstance(doc.get("error"), str), doc


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nope"), ("GET", "/v1/token"), ("DELETE", "/healthz")]
)
def test_unrouted_requests_get_json_errors(
    running: tuple[Helper, str], method: str, path: str
) -> None:
    """Unknown paths (404) and wrong methods (405) must also answer a JSON error body."""
    helper, _ = running
    status, data = _send(helper, method, path, {}, b"")
    assert status in (404, 405)
    _assert_json_error(data)


def _send(
    helper: Helper, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    url = urlsplit(helper.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, data


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer \x80"}, {"Authorization": "Bearer kck_\xff"}],
    ids=["bearer-0x80", "bearer-0xff"],
)
def test_regression_non_utf8_authorization(
    running: tuple[Helper, str], headers: dict[str, str]
) -> None:
    """Found by test_generated_requests: a non-UTF-8 byte in the bearer key gave a 500.

    aiohttp decodes header bytes with surrogateescape; the helper then encodes
    the key to UTF-8 (hashlib.sha256(presented.encode())) and raises.
    """
    helper, _ = running
    status, data = _send(helper, "POST", "/v1/token", headers, b'{"profile": "ci"}')
    assert status == 401, (status, data[:200])
    _assert_json_error(data)
    assert helper.proc.poll() is None
