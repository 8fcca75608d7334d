"""The ``oauth2`` dialect against an independent OAuth2 server from a registry.

The server is npm's ``oauth2-mock-server`` (axa-group, 9.3.0): a standalone
OAuth 2.0 / OIDC server that implements the client_credentials grant at
``/token`` and issues signed JWTs with ``expires_in`` 3600. It is not written
here: the wrapper below only starts it on 127.0.0.1 port 0 and, through its
documented ``beforeResponse`` hook, refuses clients whose ID/secret do not
match (the stock server accepts anyone), logging which client-authentication
method each request used.

``./scripts/test`` installs it (with npm, from the npm registry) into
``.venv/npm`` and points ``KEYCOURIER_TEST_OAUTH2_SERVER_DIR`` at it. The tests
never install anything themselves, and a missing server or ``node`` fails them
loudly: a suite that silently skips its only independent peer proves nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keycourier.errors import AuthError
from keycourier.partner.profiles import parse_profile
from keycourier.partner.tokens import ClientCredentials, Token, fetch_token
from keycourier.redact import Secret

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("KEYCOURIER_TEST_OAUTH2_SERVER_DIR", str(ROOT / ".venv" / "npm")))
CLIENT_ID = "ci-client"
CLIENT_SECRET = "oauth2 secret/with+special=chars"

RUNNER = """
import { createRequire } from "node:module";
const require = createRequire(process.env.KC_PREFIX + "/node_modules/");
const pkg = process.env.KC_PREFIX + "/node_modules/oauth2-mock-server/dist/index.mjs";
const { OAuth2Server } = await import(pkg);
const { parse } = require("basic-auth");
const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeResponse", (resp, req) => {
  const basic = parse(req.headers.authorization || "");
  const method = basic ? "basic" : "post";
  const dec = (v) =>
    v === undefined ? undefined : decodeURIComponent(String(v).replace(/\\+/g, " "));
  const id = basic ? dec(basic.name) : req.body.client_id;
  const secret = basic ? dec(basic.pass) : req.body.client_secret;
  const ok = id === process.env.KC_CLIENT_ID && secret === process.env.KC_CLIENT_SECRET;
  const scope = req.body.scope ?? null;
  console.log(JSON.stringify({ method, grant: req.body.grant_type, scope, ok }));
  if (!ok) {
    resp.statusCode = 401;
    resp.body = { error: "invalid_client", error_description: "client authentication failed" };
  }
});
await server.start(0, "127.0.0.1");
console.log(JSON.stringify({ port: server.address().port }));
"""


@dataclass
class OAuthServer:
    proc: subprocess.Popen[str]
    url: str

    def log(self) -> list[dict[str, object]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def oauth_server(tmp_path: Path) -> Iterator[OAuthServer]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: ./scripts/test installs Debian's nodejs and npm")
    if not (PREFIX / "node_modules" / "oauth2-mock-server").is_dir():
        pytest.fail(
            f"oauth2-mock-server is not installed under {PREFIX}: "
            "./scripts/test installs it (or set KEYCOURIER_TEST_OAUTH2_SERVER_DIR)"
        )
    script = tmp_path / "runner.mjs"
    script.write_text(RUNNER)
    env = dict(
        os.environ, KC_PREFIX=str(PREFIX), KC_CLIENT_ID=CLIENT_ID, KC_CLIENT_SECRET=CLIENT_SECRET
    )
    proc = subprocess.Popen(
        [node, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith("{"):
            proc.kill()
            raise AssertionError(
                f"oauth2-mock-server did not start: {first}{proc.communicate()[1]}"
            )
        port = json.loads(first)["port"]
        yield OAuthServer(proc, f"http://127.0.0.1:{port}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _profile(url: str, method: str, scope: str | None = None) -> object:
    table: dict[str, object] = {
        "dialect": "oauth2",
        "base_url": url,
        "token_path": "/token",
        "environment": "sandbox",
        "auth_method": method,
        "client_id_env": "X_ID",
        "client_secret_env": "X_SECRET",
    }
    if scope:
        table["scope"] = scope
    return parse_profile("generic", table, "test")


CREDS = ClientCredentials(CLIENT_ID, Secret(CLIENT_SECRET), "environment variables X_ID/X_SECRET")


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_against_an_independent_server(
    oauth_server: OAuthServer, method: str
) -> None:
    profile = _profile(oauth_server.url, method, scope="read:partner")
    token: Token = asyncio.run(fetch_token(profile, CREDS))  # type: ignore[arg-type]
    assert token.token_type == "Bearer"
    assert token.expires_in == 3600
    assert token.access_token.reveal().count(".") == 2  # a signed JWT
    log = oauth_server.log()
    assert log == [
        {
            "method": method.removeprefix("client_secret_"),
            "grant": "client_credentials",
            "scope": "read:partner",
            "ok": True,
        }
    ]


def test_wrong_secret_is_an_auth_error(oauth_server: OAuthServer) -> None:
    profile = _profile(oauth_server.url, "client_secret_basic")
    bad = ClientCredentials(
        CLIENT_ID, Secret("not the secret"), "environment variables X_ID/X_SECRET"
    )
    with pytest.raises(AuthError) as info:
        asyncio.run(fetch_token(profile, bad))  # type: ignore[arg-type]
    assert "invalid_client" in info.value.message
    assert "not the secret" not in info.value.message
