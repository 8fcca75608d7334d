"""Optional live probes against the vendors' endpoints (stdlib HTTP only).

The client ID and secret are sent only to the configured token endpoint, over
HTTPS unless the endpoint is loopback (local stand-ins). Redirects are never
followed and environment proxies are not used, so the credential cannot be
forwarded elsewhere. A probe that cannot complete is ``UNVERIFIED``; the
policy decides whether that warns or rejects. No message carries a response
body, a token or the secret.
"""

from __future__ import annotations

import base64
import enum
import http.client
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from keycourier.policy.context import SandboxContext
from keycourier.policy.model import Policy, check_endpoint_url
from keycourier.redact import Secret

MAX_RESPONSE_BYTES: Final = 1024 * 1024
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}\Z")
_REALM = re.compile(r"^[0-9]{1,30}\Z")
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")  # printable ASCII: safe in a header


class ProbeStatus(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    REJECT = "reject"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: ProbeStatus
    message: str


class _UnverifiedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes

    def json(self, what: str) -> Any:  # noqa: ANN401 - untrusted JSON, checked by callers
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _UnverifiedError(
                f"{what} answered HTTP {self.status} with malformed JSON"
            ) from None

    def error_code(self) -> str | None:
        try:
            doc = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        code = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(code, str) and _ERROR_CODE.match(code):
            return code
        return None


def _request(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
    what: str,
) -> _Response:
    problem = check_endpoint_url(url)
    if problem:  # the loader checked already; re-checked here, fail closed
        raise _UnverifiedError(f"{what} URL {problem}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = parts.path or "/"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={**headers, "User-Agent": "keycourier-probe"})
        resp = conn.getresponse()
        data = resp.read(MAX_RESPONSE_BYTES + 1)
        status = resp.status
    except TimeoutError:
        raise _UnverifiedError(f"{what} did not answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _UnverifiedError(
            f"could not complete the call to {what} ({type(exc).__name__})"
        ) from None
    finally:
        conn.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise _UnverifiedError(f"{what} answered with more than {MAX_RESPONSE_BYTES} bytes")
    return _Response(status, data)


def _basic(client_id: str, secret: Secret) -> str:
    raw = client_id.encode("utf-8") + b":" + secret.reveal_bytes()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _token(resp: _Response, what: str) -> Secret:
    doc = resp.json(what)
    token = doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise _UnverifiedError(f"{what} answered without a usable access_token")
    return Secret(token)


def _refused(resp: _Response) -> bool:
    """401, or 400 invalid_client: the vendor does not accept this ID and secret."""
    return resp.status == 401 or (resp.status == 400 and resp.error_code() == "invalid_client")


def _probe_quickbooks(
    policy: Policy,
    client_id: str,
    secret: Secret,
    ctx: SandboxContext,
    refresh_token: Secret | None,
    timeout: float,
) -> ProbeResult:
    realm = ctx.realm_id
    if refresh_token is None or not realm:
        raise _UnverifiedError(
            "the QuickBooks probe needs the company's realm ID (--realm-id) and a refresh token "
            "for it (--probe-refresh-token-file)"
        )
    if not _REALM.match(realm):
        raise _UnverifiedError("the realm ID is not a QuickBooks company ID (digits only)")
    params = policy.rule("live-probe").params
    form = urlencode(
        {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal().strip()}
    ).encode("ascii")
    resp = _request(
        "POST",
        str(params["quickbooks_token_url"]),
        headers={
            "Authorization": _basic(client_id, secret),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        body=form,
        timeout=timeout,
        what="the Intuit token endpoint",
    )
    if _refused(resp):
        return ProbeResult(
            ProbeStatus.REJECT,
            f"the Intuit token endpoint refused the client ID and secret (HTTP {resp.status})",
        )
    if resp.status != 200:
        code = resp.error_code()
        raise _UnverifiedError(
            f"the Intuit token endpoint answered HTTP {resp.status}"
            + (f" ({code})" if code else "")
            + "; check the refresh token and realm"
        )
    access = _token(resp, "the Intuit token endpoint")
    path = f"/v3/company/{quote(realm)}/companyinfo/{quote(realm)}"
    api_headers = {"Authorization": f"Bearer {access.reveal()}", "Accept": "application/json"}
    prod = _request(
        "GET",
        str(params["quickbooks_api_base"]).rstrip("/") + path,
        headers=api_headers,
        body=None,
        timeout=timeout,
        what="the QuickBooks production API",
    )
    if prod.status == 200:
        doc = prod.json("the QuickBooks production API")
        if not isinstance(doc, dict) or not isinstance(doc.get("CompanyInfo"), dict):
            raise _UnverifiedError("the QuickBooks production API answered without CompanyInfo")
        return ProbeResult(
            ProbeStatus.PASS, f"the production API returned company info for realm {realm}"
        )
    if prod.status in (401, 403):
        sandbox = _request(
            "GET",
            str(params["quickbooks_sandbox_api_base"]).rstrip("/") + path,
            headers=api_headers,
            body=None,
            timeout=timeout,
            what="the QuickBooks sandbox API",
        )
        also = (
            "; the sandbox API accepted it, so this is a development key"
            if sandbox.status == 200
            else ""
        )
        return ProbeResult(
            ProbeStatus.REJECT,
            f"the production API refused the token (HTTP {prod.status}){also}: "
            "development keys only reach sandbox companies",
        )
    raise _UnverifiedError(f"the QuickBooks production API answered HTTP {prod.status}")


def _probe_xero(policy: Policy, client_id: str, secret: Secret, timeout: float) -> ProbeResult:
    params = policy.rule("live-probe").params
    resp = _request(
        "POST",
        str(params["xero_token_url"]),
        headers={
            "Authorization": _basic(client_id, secret),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        body=urlencode({"grant_type": "client_credentials"}).encode("ascii"),
        timeout=timeout,
        what="the Xero identity endpoint",
    )
    if _refused(resp):
        return ProbeResult(
            ProbeStatus.REJECT,
            f"the Xero identity endpoint refused the client ID and secret (HTTP {resp.status})",
        )
    if resp.status != 200:
        code = resp.error_code()
        raise _UnverifiedError(
            f"the Xero identity endpoint answered HTTP {resp.status}"
            + (f" ({code})" if code else "")
            + "; the probe needs a custom connection (client_credentials)"
        )
    access = _token(resp, "the Xero identity endpoint")
    org = _request(
        "GET",
        str(params["xero_api_base"]).rstrip("/") + "/api.xro/2.0/Organisation",
        headers={"Authorization": f"Bearer {access.reveal()}", "Accept": "application/json"},
        body=None,
        timeout=timeout,
        what="the Xero Organisation API",
    )
    if org.status != 200:
        raise _UnverifiedError(f"the Xero Organisation API answered HTTP {org.status}")
    doc = org.json("the Xero Organisation API")
    orgs = doc.get("Organisations") if isinstance(doc, dict) else None
    if not isinstance(orgs, list) or not orgs or not all(isinstance(o, dict) for o in orgs):
        raise _UnverifiedError("the Xero Organisation API answered without Organisations")
    flags = [o.get("IsDemoCompany") for o in orgs]
    if not all(isinstance(f, bool) for f in flags):
        raise _UnverifiedError("the Xero Organisation API answered without IsDemoCompany")
    if any(flags):
        return ProbeResult(
            ProbeStatus.REJECT, "the Xero organisation is a Demo Company (IsDemoCompany: true)"
        )
    return ProbeResult(ProbeStatus.PASS, "the Xero organisation is not a demo company")


def run_probe(
    policy: Policy,
    platform: str,
    client_id: str,
    secret: Secret,
    ctx: SandboxContext,
    refresh_token: Secret | None,
) -> ProbeResult:
    """Run the live probe for ``platform``; never raises for network or vendor trouble."""
    timeout = float(policy.param("live-probe", "timeout_seconds"))
    try:
        if platform == "quickbooks":
            return _probe_quickbooks(policy, client_id, secret, ctx, refresh_token, timeout)
        if platform == "xero":
            return _probe_xero(policy, client_id, secret, timeout)
        raise _UnverifiedError(f"no live probe exists for platform {platform}")
    except _UnverifiedError as exc:
        return ProbeResult(ProbeStatus.UNVERIFIED, exc.message)
