"""``keycourier audit show``: reopens, every kind of ID, lines that fit (real subprocesses,
real ledger files, the platform stand-in, OpenBao where Vault is part of the story)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.connections_standin import RunningPlatform, start_platform
from tests.support.openbao import BaoServer
from tests.support.provenance_cli import (
    make_identities,
    new_client_id,
    run,
    seal_args,
    seal_handover,
    vault_env,
)

ENTITY = str(uuid.uuid4())
ORG = str(uuid.uuid4())
CLIENT_ID = str(uuid.UUID(int=0xA0D17))
CLIENT_SECRET = "audit-secret-" + "z" * 24
ROOT = Path(__file__).resolve().parents[2]


def no_columns(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` plus an empty COLUMNS: stdout is a pipe, so the width is the fallback (100)."""
    return {**(env or {}), "COLUMNS": ""}


def exported(tmp_path: Path, ledger: str = "ledger.db") -> list[dict[str, Any]]:
    out = run("audit", "export", cwd=tmp_path, env={"KEYCOURIER_LEDGER": str(tmp_path / ledger)})
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def sealed_locally(tmp_path: Path) -> dict[str, str]:
    """partner.kcid seals handover.kcb for platform.kcid (sender's ledger: sender.db)."""
    pub = make_identities(tmp_path, "partner", "platform")
    out = run(
        *seal_args(tmp_path, new_client_id(), pub["platform"]["recipient"], out="handover.kcb"),
        cwd=tmp_path,
        env={"KEYCOURIER_LEDGER": str(tmp_path / "sender.db")},
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    return {
        "bundle_id": summary["bundle_id"],
        "fingerprint": summary["fingerprint"],
        "partner_fpr": pub["partner"]["signing_fingerprint"],
    }


def event_lines(stdout: str) -> list[str]:
    """The unindented lines after the heading and the column titles: one per event."""
    return [line for line in stdout.splitlines()[2:] if not line.startswith(" ")]


def test_a_reopen_is_recorded_and_shown_as_reopened(tmp_path: Path) -> None:
    h = sealed_locally(tmp_path)
    args = ("open", "handover.kcb", "--identity", "platform.kcid", "--trust", h["partner_fpr"])
    first = run(*args, "-o", "creds.env", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(*args, "-o", "creds2.env", "--allow-reopen", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    opens = [e for e in exported(tmp_path) if e["type"] == "opened"]
    assert len(opens) == 2
    assert "reopen" not in opens[0]["data"]
    assert "previous_opens" not in opens[0]["data"]
    assert opens[1]["data"]["reopen"] is True
    assert opens[1]["data"]["previous_opens"] == 1
    show = run("audit", "show", h["bundle_id"], cwd=tmp_path, env=no_columns())
    assert show.returncode == 0, show.stderr
    rows = event_lines(show.stdout)
    assert [line.split()[1] for line in rows] == ["opened", "reopened"]
    assert "previous_opens=1, reopen=true" in show.stdout
    as_json = json.loads(run("audit", "show", h["bundle_id"], "--json", cwd=tmp_path).stdout)
    assert [(r["type"], r["shown_as"]) for r in as_json] == [
        ("opened", "opened"),
        ("opened", "reopened"),
    ]
    # a third open counts both earlier ones
    third = run(*args, "-o", "creds3.env", "--allow-reopen", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert exported(tmp_path)[-1]["data"]["previous_opens"] == 2


def test_an_ingest_after_an_open_recorded_only_in_vault_is_a_reopen(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    """The earlier open is another ledger's record in Vault, signed by this receiver's own
    key: it counts, so the ingest's `opened` event is a reopen."""
    h = seal_handover(tmp_path, bao_dev, "platform")
    env = vault_env(bao_dev)
    args = ("--identity", "platform.kcid", "--trust", h["partner_fpr"])
    laptop = {**env, "KEYCOURIER_LEDGER": str(tmp_path / "laptop.db")}
    opened = run("open", "handover.kcb", *args, "-o", "creds.env", cwd=tmp_path, env=laptop)
    assert opened.returncode == 0, opened.stderr
    vpath = f"handed-over/acme-{uuid.uuid4().hex[:8]}/quickbooks"
    ingest = ("ingest", "handover.kcb", *args, "--vault-path", vpath)
    refused = run(*ingest, cwd=tmp_path, env=env)
    assert refused.returncode == 7, refused.stderr
    ok = run(*ingest, "--allow-reopen", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    (mine,) = [e for e in exported(tmp_path) if e["type"] == "opened"]
    assert mine["data"]["reopen"] is True
    assert mine["data"]["previous_opens"] == 1
    show = run("audit", "show", h["bundle_id"], cwd=tmp_path, env=no_columns(env))
    assert show.returncode == 0, show.stderr
    rows = event_lines(show.stdout)
    assert [line.split()[1] for line in rows] == ["sealed", "opened", "reopened", "ingested"]
    text = show.stdout
    assert text.count("from: from Vault: recorded by another ledger") == 2  # seal, laptop open
    assert text.count("from: this ledger; also recorded in Vault") == 2


@pytest.fixture
def platform() -> Iterator[RunningPlatform]:
    running = start_platform({CLIENT_ID: CLIENT_SECRET})
    try:
        yield running
    finally:
        running.stop()


def connection_env(tmp_path: Path, platform: RunningPlatform) -> dict[str, str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[profiles.m]
dialect = "monite"
base_url = "{platform.monite_base}"
environment = "sandbox"
version = "2024-05-25"
client_id_env = "KC_TEST_CLIENT_ID"
client_secret_env = "KC_TEST_CLIENT_SECRET"

[profiles.t]
dialect = "tesouro"
base_url = "{platform.root}"
environment = "sandbox"
version = "2025-06-23"
version_header = "x-finops-version"
client_id_env = "KC_TEST_CLIENT_ID"
client_secret_env = "KC_TEST_CLIENT_SECRET"
"""
    )
    return {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / ".config"),
        "XDG_DATA_HOME": str(tmp_path / ".local"),
        "XDG_CACHE_HOME": str(tmp_path / ".cache"),
        "XDG_RUNTIME_DIR": "",
        "KEYCOURIER_CONFIG": str(cfg),
        "KC_TEST_CLIENT_ID": CLIENT_ID,
        "KC_TEST_CLIENT_SECRET": CLIENT_SECRET,
        "PYTHONPATH": str(ROOT / "src"),
    }


def test_show_by_bundle_fingerprint_connection_entity_and_organization(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    env = connection_env(tmp_path, platform)
    created = run(
        "connection",
        "create",
        "--profile",
        "m",
        "--entity",
        ENTITY,
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    cid = json.loads(created.stdout)["connection"]["id"]
    gone = run(
        "connection", "disconnect", cid, "--profile", "m", "--entity", ENTITY, cwd=tmp_path, env=env
    )
    assert gone.returncode == 0, gone.stderr
    second = run(
        "connection", "create", "--profile", "m", "--entity", ENTITY, cwd=tmp_path, env=env
    )
    assert second.returncode == 0, second.stderr
    org = run(
        "connection", "create", "--profile", "t", "--organization", ORG, cwd=tmp_path, env=env
    )
    assert org.returncode == 0, org.stderr
    h = sealed_locally(tmp_path)
    opened = run(
        *("open", "handover.kcb", "--identity", "platform.kcid", "--trust", h["partner_fpr"]),
        *("-o", "creds.env"),
        cwd=tmp_path,
        env=env,
    )
    assert opened.returncode == 0, opened.stderr
    env = no_columns(env)

    def show(key: str) -> tuple[str, list[str], list[dict[str, Any]]]:
        out = run("audit", "show", key, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        js = run("audit", "show", key, "--json", cwd=tmp_path, env=env)
        assert js.returncode == 0, js.stderr
        return out.stdout.splitlines()[0], event_lines(out.stdout), json.loads(js.stdout)

    heading, rows, data = show(cid)
    assert heading == f"Timeline of connection {cid} (2 events)"
    assert [r.split()[1] for r in rows] == ["connection_created", "connection_disconnected"]
    assert {d["data"]["connection_id"] for d in data} == {cid}
    assert {d["origin"] for d in data} == {"this-ledger"}

    heading, rows, data = show(ENTITY)
    assert heading == f"Timeline of entity {ENTITY} (3 events)"
    assert [r.split()[1] for r in rows] == [
        "connection_created",
        "connection_disconnected",
        "connection_created",
    ]
    assert {d["data"]["entity_id"] for d in data} == {ENTITY}

    heading, rows, data = show(ORG)
    assert heading == f"Timeline of organization {ORG} (1 event)"
    assert [d["data"]["scope"] for d in data] == ["organization"]

    heading, rows, _ = show(h["bundle_id"])
    assert heading == f"Timeline of bundle {h['bundle_id']} (1 event)"
    assert [r.split()[1] for r in rows] == ["opened"]

    heading, rows, _ = show(h["fingerprint"])
    assert heading == f"Timeline of credential fingerprint {h['fingerprint']} (1 event)"

    # nothing matches: exit 2 (usage), saying what the ID may be
    missing = run("audit", "show", str(uuid.uuid4()), cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert "keycourier: error: nothing recorded for" in missing.stderr
    assert "a connection ID or an entity/organization ID" in missing.stderr
    assert CLIENT_SECRET not in run("audit", "export", cwd=tmp_path, env=env).stdout


def test_lines_fit_the_terminal_and_nothing_is_cut(tmp_path: Path) -> None:
    h = sealed_locally(tmp_path)
    long_reason = "sent to the wrong address; " * 12 + "END-OF-REASON"
    for _ in range(2):
        out = run("revoke", h["bundle_id"], "--reason", long_reason, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    sealed = exported(tmp_path, "sender.db")[0]
    signature = sealed["data"]["signature"]
    for columns, width in (("", 100), ("70", 70), ("250", 100), ("20", 60)):
        out = run(
            "audit",
            "show",
            h["bundle_id"],
            "--ledger",
            str(tmp_path / "sender.db"),
            cwd=tmp_path,
            env={"COLUMNS": columns},
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert max(len(line) for line in lines) <= width, (columns, lines)
        # wrapped, never cut: every value is there once the lines are joined again
        joined = "".join(line.strip() for line in lines)
        for value in (signature, h["fingerprint"], sealed["actor"], "recipients="):
            assert value in joined, (columns, value)
    mine = run("audit", "show", h["bundle_id"], cwd=tmp_path, env={"COLUMNS": "80"})
    assert max(len(line) for line in mine.stdout.splitlines()) <= 80
    joined = " ".join(line.strip() for line in mine.stdout.splitlines())
    assert "END-OF-REASON" in joined
    assert joined.count("sent to the wrong address;") == 24
    assert mine.stdout.count("from: this ledger; no Vault configured") == 2


def test_show_width_follows_a_real_terminal(tmp_path: Path) -> None:
    """On a terminal (a pty of 72 columns, COLUMNS unset) the lines fit its width."""
    import fcntl
    import pty
    import struct
    import termios

    h = sealed_locally(tmp_path)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"KEYCOURIER_LEDGER": str(tmp_path / "sender.db"), "PYTHONPATH": str(ROOT / "src")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", "audit", "show", h["bundle_id"]],
        stdout=secondary,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(primary)
    lines = b"".join(chunks).decode().splitlines()
    assert lines[0].startswith("Timeline of bundle")
    assert max(len(line) for line in lines) <= 72
    assert max(len(line) for line in lines) > 60  # the details use the width they have


def test_a_vault_record_missing_from_this_ledger_says_so(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    env = vault_env(bao_dev)
    bids = [f"kcb-{uuid.uuid4().hex}" for _ in range(2)]
    for bid in bids:
        out = run("revoke", bid, "--reason", "wrong address", cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DROP TRIGGER checkpoints_no_delete")
    for table in ("events", "delivery", "checkpoints"):
        conn.execute(f"DELETE FROM {table} WHERE seq >= 2")  # noqa: S608 - fixed names
    conn.close()
    show = run("audit", "show", bids[1], cwd=tmp_path, env=no_columns(env))
    assert show.returncode == 0, show.stderr
    assert event_lines(show.stdout)[0].split()[1] == "revoked"
    assert "from: in Vault but missing from this ledger (or different in it)" in show.stdout
    (row,) = json.loads(run("audit", "show", bids[1], "--json", cwd=tmp_path, env=env).stdout)
    assert (row["source"], row["origin"], row["vault_status"]) == (
        "vault",
        "vault-not-in-this-ledger",
        "unmatched",
    )
