"""Parsers exactly at their size limit and one byte over: right outcome, bounded time and memory.

* The config file at ``MAX_CONFIG_BYTES`` (dense with profile tables, so the
  TOML parser does real work) loads; one byte more is the documented
  ``ConfigError``, refused before parsing. In-process, tracemalloc peak.
* The token helper's ``POST /v1/token`` body at ``max_body`` (the 1024 default
  and the 65536 maximum, padded JSON whitespace) gets a token; one byte more
  is HTTP 413, both with a Content-Length and chunked. A real ``keycourier
  serve`` on 127.0.0.1; its resident memory (``VmRSS`` from /proc) after a
  warm-up and after many limit-size requests.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from keycourier import config
from keycourier.errors import ConfigError
from keycourier.helper.server_config import DEFAULT_MAX_BODY
from tests.fuzz.bounds import measure
from tests.support.helper_server import (
    MONITE_ID,
    MONITE_SECRET,
    Helper,
    add_client,
    base_env,
    start_helper,
)
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

LIMIT = config.MAX_CONFIG_BYTES


def _config_at_limit() -> tuple[bytes, int]:
    """A valid config of exactly MAX_CONFIG_BYTES bytes and the number of profiles in it."""
    head = b'[ledger]\npath = "/tmp/kc-size/ledger.db"\n\n[vault]\naddr = "http://127.0.0.1:8200"\n'
    parts = [head]
    size = len(head)
    n = 0
    while True:
        table = (
            f'\n[profiles.p{n:06d}]\ndialect = "monite"\nbase_url = "http://127.0.0.1:1/v1"\n'
            f'environment = "sandbox"\nclient_id_env = "ID_{n}"\nclient_secret_env = "S_{n}"\n'
        ).encode()
        if size + len(table) > LIMIT - 64:
            break
        parts.append(table)
        size += len(table)
        n += 1
    pad = LIMIT - size - len(b"\n# \n")
    parts.append(b"\n# " + b"x" * pad + b"\n")
    text = b"".join(parts)
    assert len(text) == LIMIT
    return text, n


def test_config_at_the_size_limit_loads_and_one_byte_over_is_refused(tmp_path: Path) -> None:
    text, profiles = _config_at_limit()
    path = tmp_path / "config.toml"
    path.write_bytes(text)
    loaded: list[config.Settings] = []
    env = {"HOME": str(tmp_path)}
    seconds, peak, caught = measure(lambda: loaded.append(config.load(config_path=path, env=env)))
    assert caught is None
    assert len(loaded[0].profiles) == profiles > 1000
    assert seconds < 2.0
    assert peak < 32 * LIMIT  # measured ~12x: ~1,700 small tables, each a few dicts

    path.write_bytes(text + b"\n")
    seconds, peak, caught = measure(lambda: config.load(config_path=path, env=env))
    assert isinstance(caught, ConfigError)
    assert f"larger than {LIMIT} bytes" in str(caught)
    assert seconds < 0.5
    assert peak < 2 * LIMIT + 65536  # read LIMIT + 1 bytes, then refused without parsing


@pytest.fixture(scope="module")
def standin() -> Iterator[RunningStandin]:
    with start_standin(StandinState(clients={MONITE_ID: MONITE_SECRET})) as running:
        yield running


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _post(url: str, key: str, body: bytes, *, chunked: bool) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        if chunked:  # no Content-Length: the helper has to count what arrives
            half = len(body) // 2
            conn.request(
                "POST", "/v1/token", body=iter([body[:half], body[half:]]), headers=headers
            )
        else:
            conn.request("POST", "/v1/token", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("max_body", [DEFAULT_MAX_BODY, 65536])
def test_helper_body_at_max_body_is_served_and_one_byte_over_is_413(
    tmp_path: Path, standin: RunningStandin, max_body: int
) -> None:
    extra = "" if max_body == DEFAULT_MAX_BODY else f"\n[helper]\nmax_body = {max_body}\n"
    env = base_env(tmp_path, standin, extra_config=extra)
    helper: Helper = start_helper(env, tmp_path)
    try:
        key = add_client(env, "sizer", "--profile", "ci", "--rate", "100000")
        core = b'{"profile": "ci"}'
        at_limit = core[:-1] + b" " * (max_body - len(core)) + b"}"
        over = at_limit[:-1] + b" }"
        assert (len(at_limit), len(over)) == (max_body, max_body + 1)

        def both(chunked: bool) -> float:
            started = time.monotonic()
            status, data = _post(helper.url, key, at_limit, chunked=chunked)
            assert status == 200, data
            assert json.loads(data)["access_token"]
            status, data = _post(helper.url, key, over, chunked=chunked)
            assert status == 413, data
            assert f"over {max_body} bytes" in json.loads(data)["error"]
            return time.monotonic() - started

        for i in range(10):  # warm-up: imports, first upstream token, ledger open
            both(chunked=i % 2 == 1)
        before = _rss_kib(helper.proc.pid)
        slowest = max(both(chunked=i % 2 == 1) for i in range(150))
        after = _rss_kib(helper.proc.pid)
        sys.stderr.write(
            f"max_body {max_body}: slowest pair {slowest * 1000:.0f} ms, "
            f"VmRSS {before} -> {after} KiB over 300 limit-size requests\n"
        )
        assert slowest < 2.0, f"a pair of limit-size requests took {slowest:.2f} s"
        assert after - before < 8 * 1024, f"VmRSS grew {before} -> {after} KiB"
    finally:
        err, code = helper.stop()
    assert code == 0, err
    assert "Traceback" not in err
