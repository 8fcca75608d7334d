"""Configuration, read in exactly one place: ``load()``.

Precedence: command-line flag > ``KEYCOURIER_*`` / ``VAULT_*`` environment >
config file > built-in default. Config files say *where* secrets are (a file,
an environment variable, a Vault path); they never hold a secret. Nothing is
read at import time.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keycourier._record import field, record
from keycourier.errors import ConfigError
from keycourier.files import read_limited

MAX_CONFIG_BYTES = 256 * 1024


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path(env.get("HOME", str(Path.home()))) / fallback


def default_config_path(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "keycourier" / "config.toml"


def default_data_dir(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_DATA_HOME", ".local/share") / "keycourier"


@record
class VaultSettings:
    """Where Vault/OpenBao is and how to log in. ``addr`` None: no Vault configured."""

    addr: str | None = None
    mount: str = "secret"
    namespace: str | None = None
    cacert: Path | None = None
    timeout: float = 10.0
    auth: str = "token"  # token | approle | jwt
    auth_mount: str | None = None
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - the name of a variable
    token_file: Path | None = None
    role_id: str | None = None
    secret_id_file: Path | None = None
    jwt_file: Path | None = None
    jwt_role: str | None = None
    transit_key: str | None = None


@record
class Settings:
    config_path: Path | None
    ledger_path: Path
    policy_path: Path | None
    vault: VaultSettings
    # Tables owned by other packages, validated there (partner/profiles.py).
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    helper: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def local(
        cls,
        ledger_path: str | os.PathLike[str],
        *,
        policy_path: str | os.PathLike[str] | None = None,
        vault: VaultSettings | None = None,
    ) -> Settings:
        """Settings from arguments only: no environment, no config file (a script that
        runs two profiles side by side builds one of these per profile)."""
        return cls(
            config_path=None,
            ledger_path=_expand(ledger_path),
            policy_path=_path(None if policy_path is None else str(policy_path)),
            vault=vault or VaultSettings(),
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        config_path: str | os.PathLike[str] | None = None,
        ledger_path: str | os.PathLike[str] | None = None,
        policy_path: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """The settings the command line would use: the arguments first, then the
        environment (``env``, default ``os.environ``: KEYCOURIER_*, VAULT_*), then the
        config file (KEYCOURIER_CONFIG or the default path)."""
        return load(
            config_path=config_path, ledger_path=ledger_path, policy_path=policy_path, env=env
        )


_TOP_KEYS = {"ledger", "vault", "policy", "profiles", "helper"}
_VAULT_KEYS = {
    "addr": str,
    "mount": str,
    "namespace": str,
    "cacert": str,
    "timeout": (int, float),
    "auth": str,
    "auth_mount": str,
    "token_env": str,
    "token_file": str,
    "role_id": str,
    "secret_id_file": str,
    "jwt_file": str,
    "jwt_role": str,
    "transit_key": str,
}
_VAULT_AUTH = {"token", "approle", "jwt"}


def _read_file(path: Path) -> dict[str, Any]:
    raw = read_limited(path, f"config file {path}", MAX_CONFIG_BYTES, error=ConfigError)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _table(doc: Mapping[str, Any], key: str, where: Path) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _check_keys(
    table: Mapping[str, Any], allowed: Mapping[str, Any], prefix: str, where: Path
) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {prefix}.{key}")
        expected = allowed[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{where}: {prefix}.{key} has the wrong type")


def _expand(value: str | os.PathLike[str]) -> Path:
    """``~`` and ``~user`` expansion; an unknown user is a config error, not a crash."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise ConfigError(f"cannot expand the home directory in {str(value)!r}") from None


def _path(value: str | None) -> Path | None:
    return _expand(value) if value else None


def load(
    *,
    config_path: str | os.PathLike[str] | None = None,
    ledger_path: str | os.PathLike[str] | None = None,
    policy_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from flags (the keyword arguments), environment and file."""
    env = dict(os.environ if env is None else env)
    explicit = config_path or env.get("KEYCOURIER_CONFIG")
    path = _expand(explicit) if explicit else default_config_path(env)
    doc: dict[str, Any] = {}
    if path.exists() or explicit:
        doc = _read_file(path)
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]}")

    ledger_t = _table(doc, "ledger", path)
    _check_keys(ledger_t, {"path": str}, "ledger", path)
    policy_t = _table(doc, "policy", path)
    _check_keys(policy_t, {"path": str}, "policy", path)
    vault_t = _table(doc, "vault", path)
    _check_keys(vault_t, _VAULT_KEYS, "vault", path)
    profiles = _table(doc, "profiles", path)
    for name, prof in profiles.items():
        if not isinstance(prof, dict):
            raise ConfigError(f"{path}: profiles.{name} must be a table")
    helper = _table(doc, "helper", path)

    ledger = (
        ledger_path
        or env.get("KEYCOURIER_LEDGER")
        or ledger_t.get("path")
        or default_data_dir(env) / "ledger.db"
    )
    policy = policy_path or env.get("KEYCOURIER_POLICY") or policy_t.get("path")

    def pick(env_name: str, key: str) -> str | None:
        value = env.get(env_name) or vault_t.get(key)
        return None if value is None else str(value)

    timeout_raw = pick("KEYCOURIER_VAULT_TIMEOUT", "timeout")
    try:
        timeout = float(timeout_raw) if timeout_raw is not None else 10.0
    except ValueError:
        raise ConfigError("KEYCOURIER_VAULT_TIMEOUT must be a number of seconds") from None
    if not 0 < timeout <= 300:
        raise ConfigError("vault timeout must be between 0 and 300 seconds")
    auth = pick("KEYCOURIER_VAULT_AUTH", "auth") or "token"
    if auth not in _VAULT_AUTH:
        raise ConfigError(f"vault auth must be one of {', '.join(sorted(_VAULT_AUTH))}")
    vault = VaultSettings(
        addr=pick("VAULT_ADDR", "addr") or None,
        mount=pick("KEYCOURIER_VAULT_MOUNT", "mount") or "secret",
        namespace=pick("VAULT_NAMESPACE", "namespace") or None,
        cacert=_path(pick("VAULT_CACERT", "cacert")),
        timeout=timeout,
        auth=auth,
        auth_mount=vault_t.get("auth_mount"),
        token_env=vault_t.get("token_env", "VAULT_TOKEN"),
        token_file=_path(vault_t.get("token_file")),
        role_id=pick("KEYCOURIER_VAULT_ROLE_ID", "role_id"),
        secret_id_file=_path(pick("KEYCOURIER_VAULT_SECRET_ID_FILE", "secret_id_file")),
        jwt_file=_path(pick("KEYCOURIER_VAULT_JWT_FILE", "jwt_file")),
        jwt_role=pick("KEYCOURIER_VAULT_JWT_ROLE", "jwt_role"),
        transit_key=pick("KEYCOURIER_VAULT_TRANSIT_KEY", "transit_key"),
    )
    return Settings(
        config_path=path if doc else None,
        ledger_path=_expand(ledger),
        policy_path=_path(str(policy)) if policy else None,
        vault=vault,
        profiles=profiles,
        helper=helper,
        env=env,
    )
