"""Each documented exit code, through a real subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import cli
from tests.support.openbao import BaoServer, free_port


def run(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return cli.kc_bytes(*args, env={**os.environ, **(env or {})}, stdin=stdin, timeout=60)


def test_ok_and_usage() -> None:
    assert run("--help").returncode == 0
    bad = run("no-such-command")
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"keycourier: error:")


def test_config_error_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[vault]\nadress = 'http://127.0.0.1:1'\n")
    out = run("--config", str(cfg), "audit", "verify")
    assert out.returncode == 3
    assert b"vault.adress" in out.stderr


def test_integrity_error_for_a_garbage_bundle(tmp_path: Path) -> None:
    f = tmp_path / "b.kcb"
    f.write_bytes(b"keycourier-bundle/v1\nnot a bundle\n")
    out = run("inspect", str(f))
    assert out.returncode == 4
    assert b"Traceback" not in out.stderr


def test_auth_error_when_vault_refuses_the_token(bao_dev: BaoServer) -> None:
    out = run("doctor", env={"VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": "not-a-valid-token"})
    assert out.returncode == 5
    assert b"not-a-valid-token" not in out.stderr + out.stdout


def test_unavailable_when_vault_cannot_be_reached() -> None:
    out = run("doctor", env={"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "x"})
    assert out.returncode == 6
    assert b"Traceback" not in out.stderr


def test_policy_rejection_is_7(tmp_path: Path) -> None:
    secret = tmp_path / "s.txt"
    secret.write_text("changeme")
    out = run(
        "check",
        "--platform",
        "quickbooks",
        "--client-id",
        "AB" + "c" * 48,
        "--client-secret-file",
        str(secret),
        "--environment",
        "production",
        "--attested-by",
        "T",
    )
    assert out.returncode == 7
    assert b"changeme" not in out.stdout + out.stderr


def test_click_exit_codes_survive_the_main_wrapper() -> None:
    import click

    from keycourier.cli import main as main_mod

    @click.command()
    @click.pass_context
    def quits(ctx: click.Context) -> None:
        ctx.exit(3)

    main_mod.COMMANDS["zz-test-quit"] = (__name__, "_QUITS", "test only")
    globals()["_QUITS"] = quits
    try:
        with pytest.raises(SystemExit) as info:
            main_mod.main(["zz-test-quit"])
        assert info.value.code == 3
    finally:
        del main_mod.COMMANDS["zz-test-quit"]
