"""Local stand-ins for the Intuit (QuickBooks Online) and Xero endpoints the probe uses.

Test code only. The replies follow the vendors' documented behaviour
(``docs/platform-apis.md`` sections 2 and 3, and the OAuth 2 token-endpoint
conventions of RFC 6749 section 5):

* Intuit token endpoint (``/intuit/oauth2/v1/tokens/bearer``): Basic auth with
  the app's client ID and secret, a form body ``grant_type=refresh_token``.
  A wrong pair gets ``401 {"error": "invalid_client"}``, an unknown refresh
  token ``400 {"error": "invalid_grant"}``, success ``200`` with
  ``access_token``, ``refresh_token`` (rotated), ``expires_in: 3600`` and
  ``x_refresh_token_expires_in``.
* QuickBooks Accounting API, production (``/qbo-prod``) and sandbox
  (``/qbo-sandbox``) hosts: ``GET /v3/company/{realm}/companyinfo/{realm}``
  with the bearer token. A production key's token works on the production
  host; a development key's token gets ``403`` ``ApplicationAuthorizationFailed``
  (or ``401`` ``AuthenticationFailed``) there and works on the sandbox host.
* Xero identity (``/xero/connect/token``): Basic auth, ``grant_type=client_credentials``
  for a custom connection; ``400 {"error": "invalid_client"}`` for a wrong pair,
  ``400 {"error": "unauthorized_client"}`` for an app that is not a custom connection.
* Xero Accounting API (``/xero-api/api.xro/2.0/Organisation``): ``{"Organisations":
  [{"Name": ..., "IsDemoCompany": ...}]}``.

Fault injection (``VendorState``): a delay (for timeouts), malformed JSON and
forced status codes. Every request is logged (path and whether it carried Basic
or Bearer credentials) so tests can assert where credentials were sent.

``start_vendor_standin(state)`` serves it on 127.0.0.1, port 0, in a thread;
``.stop()`` shuts it down. ``.policy_toml()`` gives the ``[rules.live-probe]``
table that points keycourier at it.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class VendorState:
    client_id: str
    client_secret: str
    # QuickBooks
    refresh_token: str = ""
    realm_id: str = "9130350000001"
    development_key: bool = False  # the token then only works on the sandbox host
    prod_denial_status: int = 403  # 401 or 403 for a development key on production
    # Xero
    custom_connection: bool = True
    demo_company: bool = False
    # faults
    delay_seconds: float = 0.0
    malformed: set[str] = field(default_factory=set)  # "token", "company", "organisation"
    force_status: dict[str, int] = field(default_factory=dict)  # same keys
    bad_token: str | None = None  # hand out this (malformed) access token instead
    # observations
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, auth scheme)
    issued: set[str] = field(default_factory=set)

    def basic_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            raw = base64.b64decode(header[6:], validate=True)
        except ValueError:
            return False
        expected = f"{self.client_id}:{self.client_secret}".encode()
        return hmac.compare_digest(raw, expected)

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header[7:]
        return any(hmac.compare_digest(token, t) for t in self.issued)


def _handler(state: VendorState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: Any, *, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> None:
            auth = self.headers.get("Authorization", "")
            state.requests.append((self.path, auth.split(" ", 1)[0] if auth else ""))
            if state.delay_seconds:
                time.sleep(state.delay_seconds)

        def _fault(self, key: str) -> bool:
            if key in state.force_status:
                self._send(state.force_status[key], {"error": "server_error"})
                return True
            if key in state.malformed:
                self._send(200, None, raw=b'{"access_token": "trunc')
                return True
            return False

        def _form(self) -> dict[str, list[str]]:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode("utf-8", "replace")
            if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                return {}
            return parse_qs(body)

        def _issue(self) -> str:
            if state.bad_token is not None:
                return state.bad_token
            token = "eyJ" + secrets.token_urlsafe(48)
            state.issued.add(token)
            return token

        def do_POST(self) -> None:
            self._record()
            form = self._form()
            if self.path == "/intuit/oauth2/v1/tokens/bearer":
                if self._fault("token"):
                    return
                if not state.basic_ok(self.headers.get("Authorization")):
                    self._send(401, {"error": "invalid_client"})
                elif form.get("grant_type") != ["refresh_token"]:
                    self._send(400, {"error": "unsupported_grant_type"})
                elif (
                    not hmac.compare_digest(form.get("refresh_token", [""])[0], state.refresh_token)
                    or not state.refresh_token
                ):
                    self._send(400, {"error": "invalid_grant"})
                else:
                    self._send(
                        200,
                        {
                            "token_type": "bearer",
                            "access_token": self._issue(),
                            "refresh_token": "AB11" + secrets.token_hex(20),
                            "expires_in": 3600,
                            "x_refresh_token_expires_in": 8726400,
                        },
                    )
            elif self.path == "/xero/connect/token":
                if self._fault("token"):
                    return
                if not state.basic_ok(self.headers.get("Authorization")):
                    self._send(400, {"error": "invalid_client"})
                elif form.get("grant_type") != ["client_credentials"]:
                    self._send(400, {"error": "unsupported_grant_type"})
                elif not state.custom_connection:
                    self._send(400, {"error": "unauthorized_client"})
                else:
                    self._send(
                        200,
                        {
                            "access_token": self._issue(),
                            "expires_in": 1800,
                            "token_type": "Bearer",
                            "scope": "accounting.settings.read",
                        },
                    )
            else:
                self._send(404, {"error": "not_found"})

        def do_GET(self) -> None:
            self._record()
            auth_ok = state.bearer_ok(self.headers.get("Authorization"))
            for host in ("/qbo-prod", "/qbo-sandbox"):
                company = f"{host}/v3/company/{state.realm_id}/companyinfo/{state.realm_id}"
                if self.path == company:
                    self._company(auth_ok, sandbox=host == "/qbo-sandbox")
                    return
            if self.path == "/xero-api/api.xro/2.0/Organisation":
                self._organisation(auth_ok)
                return
            self._send(404, {"error": "not_found"})

        def _company(self, auth_ok: bool, *, sandbox: bool) -> None:
            if self._fault("company"):
                return
            if not auth_ok:
                self._send(401, _qbo_fault(401, "AuthenticationFailed", "003200"))
            elif state.development_key and not sandbox:
                status = state.prod_denial_status
                if status == 403:
                    self._send(403, _qbo_fault(403, "ApplicationAuthorizationFailed", "003100"))
                else:
                    self._send(401, _qbo_fault(401, "AuthenticationFailed", "003200"))
            elif not state.development_key and sandbox:
                self._send(401, _qbo_fault(401, "AuthenticationFailed", "003200"))
            else:
                self._send(
                    200,
                    {
                        "CompanyInfo": {
                            "CompanyName": "Sandbox Company_US_1" if sandbox else "Acme Corp",
                            "Id": "1",
                            "Country": "US",
                        },
                        "time": "2026-11-23T00:00:00.000-08:00",
                    },
                )

        def _organisation(self, auth_ok: bool) -> None:
            if self._fault("organisation"):
                return
            if not auth_ok:
                self._send(401, {"Title": "Unauthorized", "Status": 401})
                return
            name = "Demo Company (UK)" if state.demo_company else "Acme Ltd"
            self._send(
                200,
                {
                    "Id": secrets.token_hex(16),
                    "Status": "OK",
                    "ProviderName": "keycourier-standin",
                    "Organisations": [
                        {
                            "OrganisationID": secrets.token_hex(16),
                            "Name": name,
                            "IsDemoCompany": state.demo_company,
                            "OrganisationType": "COMPANY",
                        }
                    ],
                },
            )

    return Handler


def _qbo_fault(status: int, message: str, code: str) -> dict[str, Any]:
    return {
        "fault": {
            "error": [
                {
                    "message": f"message={message}; errorCode={code}; statusCode={status}",
                    "code": code.lstrip("0"),
                }
            ],
            "type": "AUTHENTICATION" if status == 401 else "SERVICE",
        },
        "time": "2026-11-23T00:00:00.000-08:00",
    }


@dataclass
class VendorStandin:
    state: VendorState
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def root(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def policy_toml(self, *, timeout: float = 2.0, unverified: str = "warn") -> str:
        return (
            "[rules.live-probe]\n"
            f'unverified = "{unverified}"\n'
            f"timeout_seconds = {timeout}\n"
            f'quickbooks_token_url = "{self.root}/intuit/oauth2/v1/tokens/bearer"\n'
            f'quickbooks_api_base = "{self.root}/qbo-prod"\n'
            f'quickbooks_sandbox_api_base = "{self.root}/qbo-sandbox"\n'
            f'xero_token_url = "{self.root}/xero/connect/token"\n'
            f'xero_api_base = "{self.root}/xero-api"\n'
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_vendor_standin(state: VendorState) -> VendorStandin:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="vendor-standin", daemon=True
    )
    thread.start()
    return VendorStandin(state, server, thread)
