"""Read a profile's client ID and secret from where the profile says they live."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from keycourier.errors import ConfigError
from keycourier.partner.profiles import EnvCredentials, Profile, VaultCredentials
from keycourier.partner.tokens import ClientCredentials
from keycourier.redact import Secret

MAX_CREDENTIAL_CHARS: Final = 4096

if TYPE_CHECKING:
    from keycourier.config import Settings


def _check(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} is missing or empty in {where}")
    value = value.strip()
    if len(value) > MAX_CREDENTIAL_CHARS or any(ord(c) < 0x20 for c in value):
        raise ConfigError(f"{what} in {where} is malformed")
    return value


def load_credentials(
    profile: Profile, settings: Settings, env: Mapping[str, str] | None = None
) -> ClientCredentials:
    """The profile's client credentials; ConfigError/AuthError/UnavailableError on failure."""
    source = profile.credentials
    environ = settings.env if env is None else env
    if isinstance(source, EnvCredentials):
        where = f"profile {profile.name}: environment variable"
        cid = _check(
            environ.get(source.client_id_env), "client ID", f"{where} {source.client_id_env}"
        )
        secret = _check(
            environ.get(source.client_secret_env),
            "client secret",
            f"{where} {source.client_secret_env}",
        )
        return ClientCredentials(cid, Secret(secret), source.describe())
    return _from_vault(profile, source, settings)


def _from_vault(
    profile: Profile, source: VaultCredentials, settings: Settings
) -> ClientCredentials:
    mount = source.mount or settings.vault.mount
    where = f"profile {profile.name}: Vault KV {mount}/{source.path}"
    if not settings.vault.addr:
        raise ConfigError(f"{where}: no Vault configured", hints=["set VAULT_ADDR or [vault] addr"])
    data = _kv_read(settings, mount, source.path, where)
    cid = _check(data.get(source.client_id_field), f"field {source.client_id_field}", where)
    secret = _check(
        data.get(source.client_secret_field), f"field {source.client_secret_field}", where
    )
    return ClientCredentials(cid, Secret(secret), f"Vault KV {mount}/{source.path}")


def _kv_read(settings: Settings, mount: str, path: str, where: str) -> Mapping[str, Any]:
    # lazy: a cached `token` imports this module and must not load the Vault modules (nor
    # fastkv's http.client and ssl, nor kv's dataclasses) it does not use.
    if settings.vault.auth == "token":  # one GET, without importing hvac and requests
        from keycourier.vault.fastkv import kv_read_direct  # lazy: see above

        data = kv_read_direct(settings, mount, path)
    else:
        # lazy: see above
        from keycourier.vault.client import connect
        from keycourier.vault.kv import kv_read

        data = kv_read(connect(settings), mount, path)
    if data is None:
        raise ConfigError(f"{where}: no such secret")
    return data
