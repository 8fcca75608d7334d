"""The helper client: no client key over plain http:// off loopback; hostile replies refused.

A real HTTP server on 127.0.0.1 plays a compromised helper that answers
``POST /v1/token`` with whatever body the test sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keycourier.errors import ConfigError, ExitCode, UnavailableError
from keycourier.helper.client import HelperClient
from keycourier.redact import Secret

KEY = Secret("kck_0123abcd_" + "k" * 43)


class RogueHelper:
    def __init__(self) -> None:
        self.body: bytes = b"{}"
        self.requests = 0
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                rogue.requests += 1
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(rogue.body)))
                self.end_headers()
                self.wfile.write(rogue.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def reply(self, access_token: object, **extra: object) -> None:
        expires = datetime.fromtimestamp(time.time() + 900, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = {"access_token": access_token, "token_type": "Bearer", "expires_at": expires}
        doc.update(extra)
        self.body = json.dumps(doc).encode()


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("")
    return path


@pytest.fixture
def rogue() -> Iterator[RogueHelper]:
    helper = RogueHelper()
    try:
        yield helper
    finally:
        helper.server.shutdown()
        helper.server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.77:8377",
        "http://helper.example.test:8377",
        "http://[fd00::7]:8377",
        "http://127.example.test:8377",
    ],
)
def test_plain_http_to_a_non_loopback_helper_is_a_config_error(url: str) -> None:
    client = HelperClient(url, KEY, timeout=1.0)
    with pytest.raises(ConfigError, match="not loopback") as info:
        client.token("ci")
    assert info.value.exit_code == ExitCode.CONFIG
    assert KEY.reveal() not in info.value.message


def test_plain_http_on_loopback_and_https_anywhere_are_allowed(rogue: RogueHelper) -> None:
    rogue.reply("tok-abc.DEF_123~")
    for host in ("127.0.0.1", "localhost"):
        got = HelperClient(f"http://{host}:{rogue.port}", KEY).token("ci")
        assert got.access_token.reveal() == "tok-abc.DEF_123~"
    assert rogue.requests == 2
    # https to a remote host passes the URL check (and then fails to connect: exit 6, not 3).
    with pytest.raises(UnavailableError):
        HelperClient("https://192.0.2.77:1", KEY, timeout=0.5).token("ci")


@pytest.mark.parametrize(
    ("access_token", "extra"),
    [
        ("good\n::set-env name=EVIL::1", {}),
        ("good\nEVIL=1", {}),
        ("good\r\nx", {}),
        ("trailing-newline\n", {}),
        ("has space", {}),
        ("tab\there", {}),
        ("caf\u00e9", {}),
        ("nul\x00byte", {}),
        ("", {}),
        ("x" * (16 * 1024 + 1), {}),
        (["not", "a", "string"], {}),
        ("fine", {"token_type": "Bearer\n::add-mask::"}),
        ("fine", {"token_type": 7}),
        ("fine", {"expires_at": "2099-01-01T00:00:00Z\nEVIL=1"}),
        ("fine", {"expires_at": "2099-1-1T0:0:0Z"}),
        ("fine", {"expires_at": 4102444800}),
        ("fine", {"expires_at": "2999-01-01T00:00:00Z"}),
    ],
)
def test_a_hostile_reply_is_refused(
    rogue: RogueHelper, access_token: object, extra: dict[str, object]
) -> None:
    rogue.reply(access_token, **extra)
    with pytest.raises(UnavailableError, match="token helper") as info:
        HelperClient(f"http://127.0.0.1:{rogue.port}", KEY).token("ci")
    assert "\n" not in info.value.message


def test_token_github_format_writes_nothing_for_an_injected_newline(
    rogue: RogueHelper, tmp_path: Path
) -> None:
    rogue.reply("innocent\n::add-mask::x\nEVIL=1")
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    env = dict(os.environ)
    env.update(
        KEYCOURIER_HELPER_URL=f"http://127.0.0.1:{rogue.port}",
        KEYCOURIER_HELPER_KEY=KEY.reveal(),
        KEYCOURIER_CONFIG=str(_empty_config(tmp_path)),
        KEYCOURIER_LEDGER=str(tmp_path / "ledger.db"),
        GITHUB_ENV=str(github_env),
    )
    r = subprocess.run(
        [sys.executable, "-m", "keycourier", "token", "--profile", "ci", "--format", "github"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == int(ExitCode.UNAVAILABLE), r.stderr
    assert r.stdout == ""
    assert github_env.read_text() == ""
    assert "EVIL" not in r.stderr
    assert rogue.requests == 1


def test_cli_refuses_plain_http_to_a_remote_helper(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        KEYCOURIER_HELPER_URL="http://192.0.2.77:8377",
        KEYCOURIER_HELPER_KEY=KEY.reveal(),
        KEYCOURIER_CONFIG=str(_empty_config(tmp_path)),
        KEYCOURIER_LEDGER=str(tmp_path / "ledger.db"),
    )
    r = subprocess.run(
        [sys.executable, "-m", "keycourier", "token", "--profile", "ci"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == int(ExitCode.CONFIG)
    assert "not loopback" in r.stderr
    assert "https://" in r.stderr
    assert KEY.reveal() not in r.stderr
