"""The connection API's model: endpoints, dialects, the connection and its parsers.

Every parser is strict and size-limited, and everything it returns is trusted:
IDs are canonical UUIDs, URLs are http(s) without control characters, every
text is printable and bounded. Nothing here talks to the network.
"""

from __future__ import annotations

import enum
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from keycourier.durations import parse_seconds
from keycourier.errors import ConfigError, Error, IntegrityError, UsageError
from keycourier.partner.profiles import Dialect, get_profile
from keycourier.redact import printable
from keycourier.urls import base_url_problem, is_loopback_host

if TYPE_CHECKING:
    from keycourier.config import Settings

# --------------------------------------------------------------------------- limits

MAX_RESPONSE_BYTES: Final = 256 * 1024
MAX_CONNECTIONS_PER_LIST: Final = 200
MAX_URL_CHARS: Final = 4096
MAX_TEXT_CHARS: Final = 512
MAX_ERRORS_PER_CONNECTION: Final = 32
MAX_JSON_DEPTH: Final = 16
MAX_ID_INPUT_CHARS: Final = 64

_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_DATE_RE: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_PLATFORM_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}\Z")


# --------------------------------------------------------------------------- inputs


def parse_uuid(value: str, what: str) -> str:
    """Validate an entity/organization/connection ID at the edge; return it lower-case."""
    if len(value) > MAX_ID_INPUT_CHARS or not _UUID_RE.match(value):
        shown = value if len(value) <= MAX_ID_INPUT_CHARS else value[:MAX_ID_INPUT_CHARS] + "…"
        raise UsageError(
            f"{what} {printable(shown, MAX_TEXT_CHARS)!r} is not a UUID",
            hints=[f"a {what} looks like 3fa85f64-5717-4562-b3fc-2c963f66afa6"],
        )
    return value.lower()


MAX_WAIT_SECONDS: Final = 24 * 3600.0


def parse_duration(value: str, what: str = "timeout") -> float:
    """A wait: ``30m``, ``90s``, ``2h``, ``500ms`` or a bare number of seconds, more than 0
    and at most 24 h, in seconds (``keycourier.durations``; UsageError otherwise)."""
    try:
        return parse_seconds(
            value,
            what=what,
            units=("h", "m", "s", "ms"),
            bare_seconds=True,
            at_most=MAX_WAIT_SECONDS,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- dialects and endpoints


@dataclass(frozen=True, slots=True)
class DialectSpec:
    collection_path: str
    scope_header: str
    scope_name: str  # what the user calls the scope: entity or organization
    default_version_header: str


DIALECTS: Final[Mapping[Dialect, DialectSpec]] = {
    Dialect.MONITE: DialectSpec(
        collection_path="/accounting_connections",
        scope_header="x-monite-entity-id",
        scope_name="entity",
        default_version_header="x-monite-version",
    ),
    Dialect.TESOURO: DialectSpec(
        collection_path="/accounting-connections",
        scope_header="x-organization-id",
        scope_name="organization",
        default_version_header="x-finops-version",
    ),
}

VERSION_HEADERS: Final = frozenset({"x-monite-version", "x-finops-version", "x-tesouro-version"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call the connection API: built from a profile."""

    dialect: Dialect
    base_url: str  # without trailing slash, e.g. https://api.sandbox.monite.com/v1
    version_header: str
    version: str  # YYYY-MM-DD
    profile: str = "default"
    timeout: float = 30.0  # seconds per HTTP request

    @property
    def spec(self) -> DialectSpec:
        return DIALECTS[self.dialect]


def make_endpoint(
    *,
    dialect: str,
    base_url: str,
    version: str,
    version_header: str | None = None,
    profile: str = "default",
    timeout: float = 30.0,
) -> Endpoint:
    """Validate the pieces of an endpoint (they come from a config file or flags)."""
    parsed_dialect = next((d for d in DIALECTS if d.value == dialect), None)
    if parsed_dialect is None:
        raise ConfigError(
            f"profile {profile}: connections support the dialects "
            f"{', '.join(d.value for d in DIALECTS)}, "
            f"not {printable(dialect[:40], MAX_TEXT_CHARS)!r}"
        )
    header = (version_header or DIALECTS[parsed_dialect].default_version_header).lower()
    if header not in VERSION_HEADERS:
        raise ConfigError(
            f"profile {profile}: version header must be one of {', '.join(sorted(VERSION_HEADERS))}"
        )
    if not _DATE_RE.match(version):
        raise ConfigError(f"profile {profile}: API version must be a date, YYYY-MM-DD")
    if not 0 < timeout <= 300:
        raise ConfigError(f"profile {profile}: timeout must be between 0 and 300 seconds")
    return Endpoint(
        dialect=parsed_dialect,
        base_url=check_base_url(base_url, profile),
        version_header=header,
        version=version,
        profile=profile,
        timeout=timeout,
    )


def check_base_url(url: str, profile: str) -> str:
    """https anywhere, http only on loopback; no credentials, query or fragment."""
    problem = base_url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"profile {profile}: base URL {problem}",
            hints=["use the platform's https:// base URL"],
        )
    return url.rstrip("/")


def endpoint_for_profile(settings: Settings, name: str) -> Endpoint:
    """The connection endpoint of profile ``name``, parsed by the token helper's parser.

    The profile's ``base_url`` is the platform's API base. Monite's already
    ends in ``/v1`` (``https://api.sandbox.monite.com/v1``); Tesouro's token
    endpoint lives at the host root (``/openid/connect/token``), so a base URL
    that does not end in ``/v1`` gets ``/v1`` appended for connection calls
    (``https://api.sandbox.tesouro.com/v1/accounting-connections``). The
    version header is the profile's, so tokens and connections use the same.
    """
    profile = get_profile(settings, name)
    if profile.dialect not in DIALECTS:
        raise ConfigError(
            f"profile {name}: connections support the dialects "
            f"{', '.join(d.value for d in DIALECTS)}, not {profile.dialect.value}",
            hints=["the oauth2 dialect is for tokens only"],
        )
    if profile.version is None:
        raise ConfigError(
            f"profile {name}: connection calls need an API version",
            hints=[
                f"set profiles.{name}.version, e.g. 2024-05-25 (Monite) or 2025-06-23 (Tesouro)"
            ],
        )
    base = profile.base_url.rstrip("/")
    if not urlsplit(base).path.endswith("/v1"):
        base += "/v1"
    return make_endpoint(
        dialect=profile.dialect.value,
        base_url=base,
        version=profile.version,
        version_header=profile.version_header,
        profile=name,
        timeout=profile.timeout,
    )


# --------------------------------------------------------------------------- the connection


class ConnectionStatus(enum.StrEnum):
    PENDING_AUTH = "pending_auth"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DEAUTHORIZED = "deauthorized"


@dataclass(frozen=True, slots=True)
class BusinessInfo:
    name: str | None = None
    legal_name: str | None = None
    email: str | None = None
    base_currency: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    """An ``AccountingConnectionResponse``, parsed."""

    id: str
    created_at: datetime
    updated_at: datetime
    connection_url: str
    status: ConnectionStatus | None = None
    platform: str | None = None
    errors: tuple[str, ...] = ()
    last_pull: datetime | None = None
    business_info: BusinessInfo | None = None

    @property
    def active(self) -> bool:
        """Does it hold the entity's one connection slot?

        Only ``disconnected`` frees it. ``deauthorized`` (the user withdrew
        access in the accounting system) and a missing status count as active
        on purpose: the platform's docs say the entity must be disconnected
        before a new connection can be made, so we fail closed.
        """
        return self.status is not ConnectionStatus.DISCONNECTED

    @property
    def ready(self) -> bool:
        return self.status is ConnectionStatus.CONNECTED and bool(self.platform)

    def to_json(self) -> dict[str, Any]:
        info = self.business_info
        return {
            "id": self.id,
            "status": self.status.value if self.status else None,
            "platform": self.platform,
            "connection_url": self.connection_url,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_pull": _iso(self.last_pull) if self.last_pull else None,
            "errors": list(self.errors),
            "business_info": None
            if info is None
            else {
                "name": info.name,
                "legal_name": info.legal_name,
                "email": info.email,
                "base_currency": info.base_currency,
                "type": info.type,
            },
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- parsers


def _malformed(what: str) -> IntegrityError:
    return IntegrityError(
        f"the platform sent a malformed {what}",
        hints=["check the profile's base URL and API version; rerun with --debug"],
    )


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite number {name}")


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_json_body(body: bytes, what: str) -> object:
    """Decode a JSON reply: UTF-8, size-limited, no NaN/Infinity, bounded depth."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise IntegrityError(f"the platform's {what} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(what) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _malformed(what)
    return value


def _text(obj: Mapping[str, Any], key: str, what: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _malformed(f"{what} (no {key})")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise _malformed(f"{what} ({key})")
    return value


def _timestamp(obj: Mapping[str, Any], key: str, what: str, *, required: bool) -> datetime | None:
    raw = _text(obj, key, what, required=required)
    if raw is None:
        return None
    if len(raw) > 40:
        raise _malformed(f"{what} ({key})")
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _malformed(f"{what} ({key})") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _connection_url(value: str) -> str:
    if len(value) > MAX_URL_CHARS or any(
        unicodedata.category(c)[0] == "C" or c.isspace() for c in value
    ):
        raise _malformed("connection (connection_url)")
    parts = urlsplit(value)
    host = parts.hostname or ""
    if not host or parts.scheme not in {"https", "http"}:
        raise _malformed("connection (connection_url is not an http(s) URL)")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise _malformed("connection (connection_url is plain http to a remote host)")
    if parts.username or parts.password:
        raise _malformed("connection (connection_url carries credentials)")
    return value


def parse_connection(obj: object) -> Connection:
    """Parse one ``AccountingConnectionResponse``.

    Known fields are checked strictly. Unknown fields are ignored: the
    platform adds fields over time (``business_info`` appeared in 2025) and
    the reply as a whole is already size- and depth-limited.
    """
    what = "connection"
    if not isinstance(obj, dict):
        raise _malformed(what)
    raw_id = _text(obj, "id", what, required=True)
    assert raw_id is not None  # noqa: S101 - required=True guarantees it (for mypy)
    if not _UUID_RE.match(raw_id):
        raise _malformed(f"{what} (id is not a UUID)")
    created = _timestamp(obj, "created_at", what, required=True)
    updated = _timestamp(obj, "updated_at", what, required=True)
    url = _text(obj, "connection_url", what, required=True)
    assert created is not None  # noqa: S101
    assert updated is not None  # noqa: S101
    assert url is not None  # noqa: S101
    status_raw = _text(obj, "status", what, required=False)
    status: ConnectionStatus | None = None
    if status_raw is not None:
        try:
            status = ConnectionStatus(status_raw)
        except ValueError:
            raise IntegrityError(
                "the platform reported an unknown connection status "
                f"{printable(status_raw[:40], MAX_TEXT_CHARS)!r}",
                hints=["known: " + ", ".join(s.value for s in ConnectionStatus)],
            ) from None
    platform = _text(obj, "platform", what, required=False)
    if platform is not None and not _PLATFORM_RE.match(platform):
        raise _malformed(f"{what} (platform)")
    return Connection(
        id=raw_id.lower(),
        created_at=created,
        updated_at=updated,
        connection_url=_connection_url(url),
        status=status,
        platform=platform,
        errors=_errors(obj.get("errors")),
        last_pull=_timestamp(obj, "last_pull", what, required=False),
        business_info=_business_info(obj.get("business_info")),
    )


def _errors(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ERRORS_PER_CONNECTION:
        raise _malformed("connection (errors)")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise _malformed("connection (errors)")
        message = _text(item, "message", "connection error", required=True)
        assert message is not None  # noqa: S101
        out.append(printable(message, MAX_TEXT_CHARS))
    return tuple(out)


def _business_info(value: object) -> BusinessInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed("connection (business_info)")
    what = "connection business_info"

    def pick(key: str) -> str | None:
        text = _text(value, key, what, required=False)
        return printable(text, MAX_TEXT_CHARS) if text is not None else None

    return BusinessInfo(
        name=pick("name"),
        legal_name=pick("legal_name"),
        email=pick("email"),
        base_currency=pick("base_currency"),
        type=pick("type"),
    )


def parse_connection_list(obj: object) -> tuple[Connection, ...]:
    """``{"data": [AccountingConnectionResponse, ...]}``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise _malformed("connection list")
    items = obj["data"]
    if len(items) > MAX_CONNECTIONS_PER_LIST:
        raise _malformed("connection list (too many entries)")
    return tuple(parse_connection(item) for item in items)


def describe_error_body(body: bytes) -> str:
    """Plain words from an ``ErrorSchemaResponse`` or ``HTTPValidationError`` body.

    Returns ``""`` when the body has neither shape. Never raises.
    """
    try:
        doc = parse_json_body(body, "error reply")
    except Error:
        return ""
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return printable(err["message"], 300)
    detail = doc.get("detail")
    if isinstance(detail, str):
        return printable(detail, 300)
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if not isinstance(item, dict):
                continue
            msg = item.get("msg")
            loc = item.get("loc")
            where = ""
            if isinstance(loc, list):
                names = [str(p) for p in loc if isinstance(p, str | int) and p != "body"]
                where = ".".join(names)
            if isinstance(msg, str):
                parts.append(f"{where}: {msg}" if where else msg)
        if len(detail) > 5:
            parts.append(f"and {len(detail) - 5} more")
        return printable("; ".join(parts), 400)
    return ""


def error_type(body: bytes) -> str:
    """The ``error.type`` of an ``ErrorSchemaResponse`` body, or ``""``. Never raises."""
    try:
        doc = parse_json_body(body, "error reply")
    except Error:
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        kind = doc["error"].get("type")
        if isinstance(kind, str):
            return kind
    return ""
