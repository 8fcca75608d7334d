"""Read a profile's client ID and secret from where the profile says they live."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from keycourier.errors import AuthError, ConfigError, UnavailableError
from keycourier.helper.profiles import EnvCredentials, Profile, VaultCredentials
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
    if importlib.util.find_spec("keycourier.vault") is not None:
        vault: Any = importlib.import_module("keycourier.vault")
        client = vault.connect(settings)
        data = vault.kv_read(client, mount, path)
        if data is None:
            raise ConfigError(f"{where}: no such secret")
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: the secret is not a key/value map")
        return data
    return _kv_read_hvac(settings, mount, path, where)  # pragma: no cover - until vault.py lands


def _kv_read_hvac(
    settings: Settings, mount: str, path: str, where: str
) -> Mapping[str, Any]:  # pragma: no cover
    import hvac
    import hvac.exceptions
    import requests

    token = settings.env.get(settings.vault.token_env)
    if settings.vault.token_file is not None:
        try:
            token = settings.vault.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the Vault token file: {exc.strerror}") from None
    if not token:
        raise AuthError(f"{where}: no Vault token", hints=[f"set {settings.vault.token_env}"])
    client = hvac.Client(
        url=settings.vault.addr,
        token=token,
        namespace=settings.vault.namespace,
        timeout=settings.vault.timeout,
        verify=str(settings.vault.cacert) if settings.vault.cacert else True,
    )
    try:
        resp = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        raise ConfigError(f"{where}: no such secret") from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        raise AuthError(f"{where}: Vault refused the read (permission denied)") from None
    except (requests.exceptions.RequestException, hvac.exceptions.VaultDown) as exc:
        raise UnavailableError(f"{where}: Vault is unreachable ({type(exc).__name__})") from None
    data = resp.get("data", {}).get("data")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the secret is not a key/value map")
    return data
