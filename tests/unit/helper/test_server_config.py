"""serve refuses non-loopback addresses without --allow-remote and TLS; [helper] is validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from keycourier import config
from keycourier.errors import ConfigError, UsageError
from keycourier.helper.server_config import parse_listen, server_config


def _settings(tmp_path: Path, helper: str = "") -> config.Settings:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[helper]\n{helper}\n")
    return config.load(config_path=cfg, env={"HOME": str(tmp_path)})


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8377") == ("127.0.0.1", 8377)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("127.0.0.1", "host:port", ":80", "1.2.3.4:99999"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_loopback_default_and_remote_rules(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cfg = server_config(
        s, listen=None, socket_path=None, allow_remote=False, tls_cert=None, tls_key=None
    )
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8377)
    with pytest.raises(UsageError, match="non-loopback"):
        server_config(
            s,
            listen="10.0.0.5:80",
            socket_path=None,
            allow_remote=False,
            tls_cert=None,
            tls_key=None,
        )
    with pytest.raises(UsageError, match="--tls-cert"):
        server_config(
            s, listen="0.0.0.0:80", socket_path=None, allow_remote=True, tls_cert=None, tls_key=None
        )
    ok = server_config(
        s, listen="0.0.0.0:80", socket_path=None, allow_remote=True, tls_cert="c", tls_key="k"
    )
    assert ok.tls_cert == Path("c")
    with pytest.raises(UsageError):
        server_config(
            s,
            listen="127.0.0.1:1",
            socket_path="/x",
            allow_remote=False,
            tls_cert=None,
            tls_key=None,
        )


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("bogus = 1", "helper.bogus"),
        ("max_body = 10", "helper.max_body"),
        ('vault_profiles = "ci"', "helper.vault_profiles"),
        ("vault_rate = -1", "helper.vault_rate"),
    ],
)
def test_helper_table_errors_name_the_key(tmp_path: Path, table: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        server_config(_settings(tmp_path, table), listen=None, socket_path=None, allow_remote=False,
                      tls_cert=None, tls_key=None)  # fmt: skip


def test_connection_limits_defaults_and_bounds(tmp_path: Path) -> None:
    args = {"listen": None, "allow_remote": False, "tls_cert": None, "tls_key": None}
    default = server_config(_settings(tmp_path), socket_path=None, **args)  # type: ignore[arg-type]
    assert (default.limits.header_timeout, default.limits.body_timeout) == (5.0, 10.0)
    assert (default.limits.idle_timeout, default.limits.max_connections) == (15.0, 1024)
    assert default.limits.max_per_peer == 256
    cfg = server_config(
        _settings(
            tmp_path,
            "header_timeout = 2\nbody_timeout = 3.5\nidle_timeout = 30\n"
            "max_connections = 100\nmax_connections_per_peer = 10",
        ),
        socket_path=str(tmp_path / "s.sock"),
        **args,  # type: ignore[arg-type]
    )
    assert cfg.limits.header_timeout == 2.0
    assert cfg.limits.body_timeout == 3.5
    assert (cfg.limits.idle_timeout, cfg.limits.max_connections) == (30.0, 100)
    assert cfg.limits.max_per_peer == 10
    for bad in (
        "header_timeout = 0",
        "body_timeout = 301",
        'idle_timeout = "5"',
        "max_connections = 1.5",
        "max_connections = 0",
        "max_connections_per_peer = true",
    ):
        with pytest.raises(ConfigError, match="helper"):
            server_config(_settings(tmp_path, bad), socket_path=None, **args)  # type: ignore[arg-type]
