"""The ``oauth2`` dialect against an independent OAuth2 server from a registry.

The server is npm's ``oauth2-mock-server`` (axa-group, 9.3.0): a standalone
OAuth 2.0 / OIDC server that implements the client_credentials grant at
``/token`` and issues signed JWTs with ``expires_in`` 3600. It is not written
here: the wrapper below only starts it on 127.0.0.1 port 0 and, through its
documented ``beforeResponse`` hook, refuses clients whose ID/secret do not
match (the stock server accepts anyone), logging which client-authentication
method each request used.

The fixture installs it outside the repository when it is missing (npm,
from the npm registry)::

    npm install --prefix /tmp/kc-oauth2-npm oauth2-mock-server@9.3.0

``KEYCOURIER_TEST_OAUTH2_SERVER_DIR`` points at another install prefix. The
tests skip, saying so, only when node/npm are absent or the install fails.
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
from keycourier.helper.profiles import parse_profile
from keycourier.partner.tokens import ClientCredentials, Token, fetch_token
from keycourier.redact import Secret

PREFIX = Path(os.environ.get("KEYCOURIER_TEST_OAUTH2_SERVER_DIR", "/tmp/kc-oauth2-npm"))
PACKAGE = "oauth2-mock-server@9.3.0"
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
    installed = (PREFIX / "node_modules" / "oauth2-mock-server").is_dir()
    npm = shutil.which("npm")
    if node is not None and not installed and npm is not None:
        # From the npm registry, with npm itself, outside the repository.
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(PREFIX),
                "--no-audit",
                "--no-fund",
                "--silent",
                PACKAGE,
            ],
            capture_output=True,
            timeout=300,
            check=False,
        )
        installed = (PREFIX / "node_modules" / "oauth2-mock-server").is_dir()
    if node is None or not installed:
        pytest.skip(
            f"oauth2-mock-server could not be installed under {PREFIX} (needs node and npm)"
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
