"""Token-helper profiles: the ``[profiles.NAME]`` tables of the config file, validated.

A profile says which token dialect to speak, where the endpoint is, which API
version header to send, which environment it is (``sandbox`` or
``production``), and where the client ID and secret live: a Vault KV v2 path,
or the names of two environment variables. It never holds a secret, and a
profile that tries to (``client_secret = "..."``) is refused.

Example::

    [profiles.ci]
    dialect = "monite"                       # monite | tesouro | oauth2
    base_url = "https://api.sandbox.monite.com/v1"
    environment = "sandbox"                  # sandbox | production
    version = "2024-05-25"                   # x-monite-version value
    client_id_env = "MONITE_CLIENT_ID"       # or: vault_path = "platform/acme/monite"
    client_secret_env = "MONITE_CLIENT_SECRET"
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from keycourier._record import record
from keycourier.errors import ConfigError
from keycourier.urls import base_url_problem

PROFILE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
VERSION_RE: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
HEADER_RE: Final = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
VAULT_PATH_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*\Z")
PATH_RE: Final = re.compile(r"^/[A-Za-z0-9_./\-]{0,200}\Z")
SCOPE_RE: Final = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*\Z")

# Hosts that the platform documents as production (docs/platform-apis.md 1.1, 1.5).
KNOWN_PRODUCTION_HOSTS: Final = frozenset(
    {"api.monite.com", "us.api.monite.com", "api.tesouro.com"}
)
_SANDBOX_LABELS: Final = ("sandbox", "dev", "development", "staging", "test", "demo")

if TYPE_CHECKING:
    from keycourier.config import Settings


class Dialect(enum.StrEnum):
    MONITE = "monite"  # JSON POST {base}/auth/token, x-monite-version
    TESOURO = "tesouro"  # form POST {base}/openid/connect/token, x-tesouro-version
    OAUTH2 = "oauth2"  # RFC 6749 client_credentials, client_secret_basic or _post


class Environment(enum.StrEnum):
    SANDBOX = "sandbox"
    PRODUCTION = "production"


class ClientAuth(enum.StrEnum):
    BASIC = "client_secret_basic"
    POST = "client_secret_post"


DEFAULT_TOKEN_PATH: Final = {
    Dialect.MONITE: "/auth/token",
    Dialect.TESOURO: "/openid/connect/token",
    Dialect.OAUTH2: "/oauth2/token",
}
DEFAULT_VERSION_HEADER: Final = {
    Dialect.MONITE: "x-monite-version",
    Dialect.TESOURO: "x-tesouro-version",
    Dialect.OAUTH2: None,
}


@record
class EnvCredentials:
    """The client ID and secret are read from these environment variables."""

    client_id_env: str
    client_secret_env: str

    def describe(self) -> str:
        return f"environment variables {self.client_id_env}/{self.client_secret_env}"


@record
class VaultCredentials:
    """The client ID and secret are fields of a Vault KV v2 secret."""

    path: str
    mount: str | None = None  # None: the [vault] mount
    client_id_field: str = "client_id"
    client_secret_field: str = "client_secret"  # noqa: S105 - a field name

    def describe(self) -> str:
        mount = self.mount or "<vault mount>"
        return f"Vault KV {mount}/{self.path}"


CredentialSource = EnvCredentials | VaultCredentials


@record
class Profile:
    name: str
    dialect: Dialect
    base_url: str
    environment: Environment
    credentials: CredentialSource
    version: str | None = None
    version_header: str | None = None
    token_path: str = "/auth/token"  # noqa: S105 - a URL path
    client_auth: ClientAuth = ClientAuth.BASIC
    scope: str | None = None
    refresh_fraction: float = 0.8
    timeout: float = 10.0
    max_retries: int = 3
    env_name: str = "PARTNER_TOKEN"

    @property
    def token_url(self) -> str:
        return self.base_url.rstrip("/") + self.token_path


_ALLOWED: Final[Mapping[str, type | tuple[type, ...]]] = {
    "dialect": str,
    "base_url": str,
    "environment": str,
    "version": str,
    "version_header": str,
    "token_path": str,
    "auth_method": str,
    "scope": str,
    "client_id_env": str,
    "client_secret_env": str,
    "vault_path": str,
    "vault_mount": str,
    "vault_client_id_field": str,
    "vault_client_secret_field": str,
    "refresh_at": (int, float),
    "timeout": (int, float),
    "max_retries": int,
    "env_name": str,
}
_SECRET_LOOKING: Final = re.compile(r"(secret|password|token)\Z", re.IGNORECASE)


def host_environment(host: str) -> Environment | None:
    """What a host name says about its environment; None when it says nothing."""
    host = host.lower().rstrip(".")
    if host in KNOWN_PRODUCTION_HOSTS:
        return Environment.PRODUCTION
    labels = re.split(r"[.\-]", host)
    if any(label in _SANDBOX_LABELS for label in labels):
        return Environment.SANDBOX
    return None


def parse_profile(name: str, table: Mapping[str, Any], where: str) -> Profile:
    """Validate one ``[profiles.NAME]`` table; every error names the offending key."""
    prefix = f"{where}: profiles.{name}"
    if not PROFILE_NAME_RE.match(name):
        raise ConfigError(
            f"{where}: profile name {name[:64]!r} is not valid (letters, digits, _.-)"
        )
    for key, value in table.items():
        if key not in _ALLOWED:
            if _SECRET_LOOKING.search(key) and not key.endswith("_env"):
                raise ConfigError(
                    f"{prefix}.{key}: the config file never holds a secret",
                    hints=["use client_id_env/client_secret_env or vault_path instead"],
                )
            raise ConfigError(f"{prefix}: unknown key {key}")
        expected = _ALLOWED[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{prefix}.{key} has the wrong type")

    def req(key: str) -> str:
        value = table.get(key)
        if value is None:
            raise ConfigError(f"{prefix}.{key} is required")
        return str(value)

    try:
        dialect = Dialect(req("dialect"))
    except ValueError:
        raise ConfigError(f"{prefix}.dialect must be one of monite, tesouro, oauth2") from None
    try:
        environment = Environment(req("environment"))
    except ValueError:
        raise ConfigError(f"{prefix}.environment must be sandbox or production") from None

    base_url = req("base_url")
    problem = base_url_problem(base_url)
    if problem is not None:
        raise ConfigError(f"{prefix}.base_url {problem}")
    host = urlsplit(base_url).hostname or ""
    said = host_environment(host)
    if environment is Environment.PRODUCTION and said is Environment.SANDBOX:
        raise ConfigError(
            f"{prefix}.base_url: a production profile refuses the sandbox host {host}",
        )
    if environment is Environment.SANDBOX and said is Environment.PRODUCTION:
        raise ConfigError(
            f"{prefix}.base_url: a sandbox profile refuses the production host {host}"
        )

    version = table.get("version")
    if version is not None and not VERSION_RE.match(version):
        raise ConfigError(f"{prefix}.version must be a date like 2024-05-25")
    if dialect is Dialect.MONITE and version is None:
        raise ConfigError(
            f"{prefix}.version is required for the monite dialect (x-monite-version)",
        )
    version_header = table.get("version_header", DEFAULT_VERSION_HEADER[dialect])
    if version_header is not None and not HEADER_RE.match(version_header):
        raise ConfigError(f"{prefix}.version_header is not a valid header name")
    if version is None:
        version_header = None

    token_path = table.get("token_path", DEFAULT_TOKEN_PATH[dialect])
    if not PATH_RE.match(token_path) or ".." in token_path:
        raise ConfigError(f"{prefix}.token_path must be an absolute path like /auth/token")

    auth_raw = table.get("auth_method", ClientAuth.BASIC.value)
    try:
        client_auth = ClientAuth(auth_raw)
    except ValueError:
        raise ConfigError(
            f"{prefix}.auth_method must be client_secret_basic or client_secret_post"
        ) from None
    if "auth_method" in table and dialect is not Dialect.OAUTH2:
        raise ConfigError(f"{prefix}.auth_method applies to the oauth2 dialect only")
    scope = table.get("scope")
    if scope is not None and (dialect is not Dialect.OAUTH2 or not SCOPE_RE.match(scope)):
        raise ConfigError(f"{prefix}.scope must be a valid oauth2 scope (oauth2 dialect only)")

    credentials = _parse_credentials(table, prefix)

    refresh = float(table.get("refresh_at", 0.8))
    if not 0.1 <= refresh <= 0.95:
        raise ConfigError(f"{prefix}.refresh_at must be a fraction between 0.1 and 0.95")
    timeout = float(table.get("timeout", 10.0))
    if not 0 < timeout <= 120:
        raise ConfigError(f"{prefix}.timeout must be between 0 and 120 seconds")
    retries = int(table.get("max_retries", 3))
    if not 0 <= retries <= 10:
        raise ConfigError(f"{prefix}.max_retries must be between 0 and 10")
    env_name = table.get("env_name", "PARTNER_TOKEN")
    if not ENV_NAME_RE.match(env_name):
        raise ConfigError(f"{prefix}.env_name is not a valid environment variable name")

    return Profile(
        name=name,
        dialect=dialect,
        base_url=base_url.rstrip("/"),
        environment=environment,
        credentials=credentials,
        version=version,
        version_header=version_header,
        token_path=token_path,
        client_auth=client_auth,
        scope=scope,
        refresh_fraction=refresh,
        timeout=timeout,
        max_retries=retries,
        env_name=env_name,
    )


def _parse_credentials(table: Mapping[str, Any], prefix: str) -> CredentialSource:
    has_env = "client_id_env" in table or "client_secret_env" in table
    has_vault = "vault_path" in table
    if has_env and has_vault:
        raise ConfigError(
            f"{prefix}: give either vault_path or client_id_env/client_secret_env, not both"
        )
    if has_vault:
        path = str(table["vault_path"]).strip("/")
        if not VAULT_PATH_RE.match(path) or ".." in path.split("/"):
            raise ConfigError(f"{prefix}.vault_path is not a valid KV path")
        fields = {}
        for key in ("vault_mount", "vault_client_id_field", "vault_client_secret_field"):
            value = table.get(key)
            if value is not None and not VAULT_PATH_RE.match(value):
                raise ConfigError(f"{prefix}.{key} is not valid")
            fields[key] = value
        return VaultCredentials(
            path=path,
            mount=fields["vault_mount"],
            client_id_field=fields["vault_client_id_field"] or "client_id",
            client_secret_field=fields["vault_client_secret_field"] or "client_secret",
        )
    for key in ("vault_mount", "vault_client_id_field", "vault_client_secret_field"):
        if key in table:
            raise ConfigError(f"{prefix}.{key} needs vault_path")
    if not has_env:
        raise ConfigError(
            f"{prefix}: no credential source",
            hints=["set vault_path, or client_id_env and client_secret_env"],
        )
    for key in ("client_id_env", "client_secret_env"):
        value = table.get(key)
        if value is None:
            raise ConfigError(f"{prefix}.{key} is required with environment credentials")
        if not ENV_NAME_RE.match(value):
            raise ConfigError(f"{prefix}.{key} is not a valid environment variable name")
    return EnvCredentials(str(table["client_id_env"]), str(table["client_secret_env"]))


def load_profiles(
    profiles: Mapping[str, Mapping[str, Any]], where: Path | str | None
) -> dict[str, Profile]:
    """Validate every profile table (so a bad one fails even if it is not the one used)."""
    label = str(where) if where is not None else "config"
    return {name: parse_profile(name, table, label) for name, table in profiles.items()}


def get_profile(settings: Settings, name: str) -> Profile:
    """The named profile from ``config.Settings``; ConfigError if absent or invalid."""
    profiles = load_profiles(settings.profiles, settings.config_path)
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"no profile named {name[:64]!r} in the config file",
            hints=[
                f"profiles defined: {known}",
                "add a [profiles.NAME] table (see docs/token-helper.md)",
            ],
        ) from None
