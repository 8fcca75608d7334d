"""What ``keycourier serve`` listens on and how it bounds its clients: the flags and ``[helper]``.

``server_config`` checks them once, at start-up: loopback unless ``--allow-remote`` with
TLS, a Unix socket only on its own, and every ``[helper]`` key known and within its range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from keycourier.errors import ConfigError, UsageError
from keycourier.helper.connections import Limits
from keycourier.urls import is_loopback_host

if TYPE_CHECKING:
    from keycourier.config import Settings

DEFAULT_PORT: Final = 8377
DEFAULT_MAX_BODY: Final = 1024
VAULT_CACHE_SECONDS: Final = 30.0
DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str | None
    port: int
    socket_path: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    max_body: int = DEFAULT_MAX_BODY
    vault_policy: str | None = None
    vault_profiles: tuple[str, ...] = ("*",)
    vault_rate: float = 50.0
    vault_cache_seconds: float = VAULT_CACHE_SECONDS
    limits: Limits = DEFAULT_LIMITS


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, not {value[:100]!r}")
    host = host.strip("[]")
    port = int(port_s)
    if not 0 <= port <= 65535 or not host:
        raise UsageError(f"--listen must be HOST:PORT, not {value[:100]!r}")
    return host, port


def server_config(
    settings: Settings,
    *,
    listen: str | None,
    socket_path: str | None,
    allow_remote: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> ServerConfig:
    """Validate flags + ``[helper]``: loopback unless --allow-remote with TLS."""
    table = dict(settings.helper)
    allowed = {
        "listen",
        "socket",
        "max_body",
        "vault_policy",
        "vault_profiles",
        "vault_rate",
        "vault_cache_seconds",
        "clients_file",
        "tls_cert",
        "tls_key",
        *LIMIT_KEYS,
    }
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key helper.{key}")
    if listen and socket_path:
        raise UsageError("give --listen or --socket, not both")
    socket_path = socket_path or (None if listen else table.get("socket"))
    tls_cert = tls_cert or table.get("tls_cert")
    tls_key = tls_key or table.get("tls_key")
    max_body = table.get("max_body", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or not 64 <= max_body <= 65536:
        raise ConfigError("helper.max_body must be an integer between 64 and 65536")
    policy = table.get("vault_policy")
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ConfigError("helper.vault_policy must be a policy name")
    vprofiles = table.get("vault_profiles", ["*"])
    if not isinstance(vprofiles, list) or not all(isinstance(p, str) for p in vprofiles):
        raise ConfigError("helper.vault_profiles must be a list of profile names")
    vrate = table.get("vault_rate", 50.0)
    vcache = table.get("vault_cache_seconds", VAULT_CACHE_SECONDS)
    for key, value, lo, hi in (
        ("vault_rate", vrate, 0.001, 1e6),
        ("vault_cache_seconds", vcache, 0, 300),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ConfigError(f"helper.{key} must be a number between {lo} and {hi}")
    limits = _limits(table)
    if socket_path:
        if tls_cert or allow_remote:
            raise UsageError("--socket is local only: no --allow-remote or TLS")
        return ServerConfig(
            None,
            0,
            Path(socket_path).expanduser(),
            None,
            None,
            max_body,
            policy,
            tuple(vprofiles),
            float(vrate),
            float(vcache),
            limits,
        )
    host, port = parse_listen(listen or table.get("listen") or f"127.0.0.1:{DEFAULT_PORT}")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not is_loopback_host(host):
        if not allow_remote:
            raise UsageError(
                f"refusing to listen on the non-loopback address {host}",
                hints=["the helper hands out tokens: keep it on 127.0.0.1, or use "
                       "--allow-remote with --tls-cert and --tls-key"],
            )  # fmt: skip
        if not tls_cert:
            raise UsageError("--allow-remote needs --tls-cert and --tls-key")
    return ServerConfig(
        host,
        port,
        None,
        Path(tls_cert).expanduser() if tls_cert else None,
        Path(tls_key).expanduser() if tls_key else None,
        max_body,
        policy,
        tuple(vprofiles),
        float(vrate),
        float(vcache),
        limits,
    )


# [helper] key -> (Limits field, lowest, highest, whole number)
LIMIT_KEYS: Final[dict[str, tuple[str, float, float, bool]]] = {
    "header_timeout": ("header_timeout", 0.1, 300.0, False),
    "body_timeout": ("body_timeout", 0.1, 300.0, False),
    "idle_timeout": ("idle_timeout", 0.1, 3600.0, False),
    "max_connections": ("max_connections", 1, 1_000_000, True),
    "max_connections_per_peer": ("max_per_peer", 1, 1_000_000, True),
}


def _limits(table: Mapping[str, Any]) -> Limits:
    values: dict[str, float | int] = {}
    for key, (name, lo, hi, whole) in LIMIT_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (whole and not isinstance(value, int))
            or not lo <= value <= hi
        ):
            kind = "an integer" if whole else "a number"
            raise ConfigError(f"helper.{key} must be {kind} between {lo:g} and {hi:g}")
        values[name] = value if whole else float(value)
    return Limits(**values)  # type: ignore[arg-type]
