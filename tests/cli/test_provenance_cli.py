"""ingest / revoke / sync / audit / doctor through real subprocesses (exit codes, stdout/stderr)."""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import certifi
import hvac
import pytest
from click.testing import CliRunner

from keycourier.cli.main import cli
from tests.support.ledger_attacks import cut_tail
from tests.support.openbao import BaoServer, free_port, start_dev_tls_server
from tests.support.provenance_cli import (
    make_identities,
    new_client_id,
    run,
    seal_args,
    seal_handover,
    vault_env,
)

DEAD = {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t"}


@pytest.mark.parametrize(
    "args",
    [
        ["ingest"],
        ["revoke"],
        ["sync"],
        ["audit"],
        ["audit", "verify"],
        ["audit", "show"],
        ["audit", "export"],
        ["doctor"],
    ],
)
def test_help_has_an_example(args: list[str]) -> None:
    out = CliRunner().invoke(cli, [*args, "--help"])
    assert out.exit_code == 0
    assert "Example" in out.output
    assert "keycourier " in out.output


def test_revoke_show_export_without_vault(tmp_path: Path) -> None:
    out = run("revoke", "kcb-1", "--reason", "sent to the wrong person", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no Vault configured" in out.stderr
    assert "the revocation is not signed" in out.stderr  # other machines would ignore it
    assert "in Vault" not in out.stderr
    show = run("audit", "show", "kcb-1", "--json", cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    rows = json.loads(show.stdout)
    assert rows[0]["type"] == "revoked"
    assert rows[0]["data"] == {"reason": "sent to the wrong person"}
    jsonl = run("audit", "export", "--format", "jsonl", cwd=tmp_path)
    assert jsonl.returncode == 0
    assert json.loads(jsonl.stdout.splitlines()[0])["vault_status"] == "disabled"
    csv_out = run("audit", "export", "--format", "csv", "--since", "2999-01-01", cwd=tmp_path)
    assert csv_out.stdout.splitlines() == [
        "time,seq,type,actor,partner,platform,environment,bundle_id,fingerprint,"
        "vault_path,vault_version,policy_digest,detail,vault_status"
    ]
    bad = run("audit", "export", "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2
    verify = run("audit", "verify", "--json", cwd=tmp_path)
    assert verify.returncode == 0
    report = json.loads(verify.stdout)
    assert report["ok"] is True
    assert report["events"] == 1
    assert report["checkpoints"] == 1


TAMPER = {
    "edit": ["UPDATE events SET body = replace(body, '\"r\"', '\"x\"') WHERE seq = 2"],
    "delete": ["DELETE FROM events WHERE seq = 2"],
    "reorder": [
        "UPDATE events SET seq = -1 WHERE seq = 2",
        "UPDATE events SET seq = 2 WHERE seq = 3",
        "UPDATE events SET seq = 3 WHERE seq = -1",
    ],
}


@pytest.mark.parametrize("kind", sorted(TAMPER))
def test_audit_verify_exit_4_names_the_sequence(tmp_path: Path, kind: str) -> None:
    for i in range(4):
        assert run("revoke", f"kcb-{i}", "--reason", "r", cwd=tmp_path).returncode == 0
    assert run("audit", "verify", cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    for stmt in TAMPER[kind]:
        conn.execute(stmt)
    conn.close()
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #2" in out.stdout
    assert "broken at event #2" in out.stderr


def test_pending_require_vault_and_sync(bao_dev: BaoServer, tmp_path: Path) -> None:
    out = run("revoke", "kcb-p", "--reason", "r", cwd=tmp_path, env=DEAD)
    assert out.returncode == 0
    assert "pending" in out.stderr
    assert "recorded in the local ledger only" in out.stderr
    strict = run("revoke", "kcb-p", "--reason", "again", "--require-vault", cwd=tmp_path, env=DEAD)
    assert strict.returncode == 6
    assert "pending" in strict.stderr
    assert run("sync", cwd=tmp_path, env=DEAD).returncode == 6
    ok = run("sync", "--json", cwd=tmp_path, env=vault_env(bao_dev))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["delivered"] == 2
    verify = run("audit", "verify", "--vault", "--json", cwd=tmp_path, env=vault_env(bao_dev))
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["vault_records_checked"] == 2


def test_sync_conflict_exit_4_names_the_bundle(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + secrets.token_hex(8)
    assert run("revoke", bid, "--reason", "r", cwd=tmp_path, env=DEAD).returncode == 0
    client = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    conn = sqlite3.connect(tmp_path / "ledger.db")
    ledger_id = conn.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]
    (path,) = conn.execute("SELECT path FROM delivery WHERE seq = 1").fetchone()
    conn.close()
    assert path.startswith(f"keycourier/handovers/{bid}/events/{ledger_id}-0000000001-")
    client.secrets.kv.v2.create_or_update_secret(
        path=path,
        secret={"ledger": ledger_id, "seq": 1, "body": "forged"},
        cas=0,
        mount_point="secret",
    )
    out = run("sync", cwd=tmp_path, env=vault_env(bao_dev))
    assert out.returncode == 4
    assert bid in out.stderr
    assert "integrity alarm" in out.stderr


def test_doctor_exit_codes(bao_dev: BaoServer, tmp_path: Path) -> None:
    none = run("doctor", cwd=tmp_path)
    assert none.returncode == 0
    assert "no Vault configured" in none.stdout
    dead = run(
        "doctor",
        cwd=tmp_path,
        env={"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "t"},
    )
    assert dead.returncode == 6
    good = run("doctor", "--role", "sender", "--json", cwd=tmp_path, env=vault_env(bao_dev))
    assert good.returncode == 0, good.stdout
    checks = {c["name"]: c["status"] for c in json.loads(good.stdout)["checks"]}
    assert checks["reachable"] == "ok"
    assert checks["sealed"] == "ok"
    assert checks["kv mount"] == "ok"
    assert checks["audit device"] == "warn"  # dev server: none enabled, and we do not try
    assert checks["role sender"] == "ok"
    bad = run("doctor", cwd=tmp_path, env={"VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": "wrong"})
    assert bad.returncode == 5
    assert "wrong" not in bad.stdout + bad.stderr


@pytest.fixture
def handover(tmp_path: Path, bao_dev: BaoServer) -> dict[str, str]:
    """Two identities and a sealed bundle (sealed event recorded in Vault)."""
    return seal_handover(tmp_path, bao_dev, "platform")


def test_ingest_writes_credentials_with_provenance(
    handover: dict[str, str], bao_dev: BaoServer, tmp_path: Path
) -> None:
    vpath = f"handed-over/acme-{secrets.token_hex(4)}/quickbooks"
    env = vault_env(bao_dev)
    args = (
        "ingest",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        handover["partner_fpr"],
    )
    out = run(*args, "--vault-path", vpath, "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["kv_version"] == 1
    assert summary["vault_status"] == "recorded"
    secret = (tmp_path / "secret.txt").read_text().strip()
    assert secret not in out.stdout + out.stderr
    client = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    stored = client.secrets.kv.v2.read_secret_version(
        path=vpath, mount_point="secret", raise_on_deleted_version=True
    )
    assert stored["data"]["data"]["client_secret"] == secret
    assert stored["data"]["data"]["client_id"] == handover["client_id"]
    meta = client.secrets.kv.v2.read_secret_metadata(path=vpath, mount_point="secret")["data"][
        "custom_metadata"
    ]
    assert meta["bundle_id"] == handover["bundle_id"]
    assert meta["fingerprint"] == handover["fingerprint"]
    assert meta["sealed_by"] == handover["partner_fpr"]
    assert meta["sealed_at"]
    # the ledger never holds the secret
    assert secret.encode() not in (tmp_path / "ledger.db").read_bytes()
    show = run("audit", "show", handover["bundle_id"], "--json", cwd=tmp_path, env=env)
    kinds = [(r["source"], r["type"]) for r in json.loads(show.stdout)]
    assert kinds == [("vault", "sealed"), ("ledger", "opened"), ("ledger", "ingested")]
    # a second ingest is refused (already opened) ...
    again = run(*args, "--vault-path", vpath, cwd=tmp_path, env=env)
    assert again.returncode == 7
    assert "already opened" in again.stderr
    # ... and once revoked, even --allow-reopen is refused
    assert (
        run("revoke", handover["bundle_id"], "--reason", "leak", cwd=tmp_path, env=env).returncode
        == 0
    )
    revoked = run(*args, "--vault-path", vpath, "--allow-reopen", cwd=tmp_path, env=env)
    assert revoked.returncode == 7
    assert "revoked" in revoked.stderr


def test_ingest_needs_vault(handover: dict[str, str], tmp_path: Path) -> None:
    args = (
        "ingest",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        handover["partner_fpr"],
    )
    assert run(*args, "--vault-path", "handed-over/x/y", cwd=tmp_path).returncode == 3
    assert run(*args, "--vault-path", "../etc", cwd=tmp_path, env=DEAD).returncode == 2
    assert run(*args, "--vault-path", "handed-over/x/y", cwd=tmp_path, env=DEAD).returncode == 6
    # nothing was opened: the bundle is still unopened in the ledger
    assert "opened" not in run("audit", "export", cwd=tmp_path).stdout


def test_audit_verify_vault_exit_4_on_a_removed_tail(bao_dev: BaoServer, tmp_path: Path) -> None:
    env = vault_env(bao_dev)
    for i in range(3):
        out = run(
            "revoke", f"kcb-{secrets.token_hex(6)}-{i}", "--reason", "r", cwd=tmp_path, env=env
        )
        assert out.returncode == 0, out.stderr
    ok = run("audit", "verify", "--vault", "--json", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    ledger_id = json.loads(ok.stdout)["ledger_id"]
    cut_tail(tmp_path / "ledger.db", 2)
    assert run("audit", "verify", cwd=tmp_path).returncode == 0  # locally a clean cut
    out = run("audit", "verify", "--vault", cwd=tmp_path, env=env)
    assert out.returncode == 4
    assert "BROKEN at event #2" in out.stdout
    assert ledger_id in out.stdout
    assert "tail is missing" in out.stderr
    assert "event #3" in out.stderr


def test_audit_show_prints_foreign_records_escaped(bao_dev: BaoServer, tmp_path: Path) -> None:
    env = vault_env(bao_dev)
    bid = f"kcb-{secrets.token_hex(8)}"
    assert run("revoke", bid, "--reason", "r", cwd=tmp_path, env=env).returncode == 0
    forged = {**env, "KEYCOURIER_LEDGER": str(tmp_path / "forger.db")}
    actor = "kc1:x\x1b[2J\x1b]0;pwned\x07\u202e"
    out = run("revoke", bid, "--reason", "\x1b[31mred", "--actor", actor, cwd=tmp_path, env=forged)
    assert out.returncode == 0, out.stderr
    show = run("audit", "show", bid, cwd=tmp_path, env=env)
    assert show.returncode == 0, show.stderr
    assert "\x1b" not in show.stdout
    assert "\x07" not in show.stdout
    assert "\u202e" not in show.stdout
    text = show.stdout
    assert [line.split()[1] for line in text.splitlines()[2:] if not line.startswith(" ")] == [
        "revoked",
        "revoked",
    ]
    ours, theirs = text.split("revoked", 2)[1:]
    assert "from: this ledger; also recorded in Vault" in ours
    assert "from: from Vault: recorded by another ledger" in theirs
    assert "kc1:x\\x1b[2J\\x1b]0;pwned\\x07\\u202e" in theirs
    assert "reason=\\x1b[31mred" in theirs
    origins = [
        r["origin"]
        for r in json.loads(run("audit", "show", bid, "--json", cwd=tmp_path, env=env).stdout)
    ]
    assert origins == ["this-ledger", "vault-other-ledger"]


def vault_bundle_events(
    server: BaoServer, bundle_id: str
) -> list[tuple[str, int, dict[str, object]]]:
    """(ledger, seq, event body) of every event record of the bundle in Vault, in time order."""
    client = hvac.Client(url=server.addr, token=server.token)
    folder = f"keycourier/handovers/{bundle_id}/events"
    names = client.secrets.kv.v2.list_secrets(path=folder, mount_point="secret")["data"]["keys"]
    out = []
    for name in names:
        data = client.secrets.kv.v2.read_secret_version(
            path=f"{folder}/{name}", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]
        out.append((data["ledger"], data["seq"], json.loads(data["body"])))
    return sorted(out, key=lambda item: (str(item[2]["at"]), item[0], item[1]))


def real_opens(events: list[tuple[str, int, dict[str, object]]]) -> list[str]:
    """Actors of the `opened` events that no `release_aborted` event of their ledger voids."""
    voided = {
        (ledger, body["data"]["aborts_seq"])  # type: ignore[index]
        for ledger, _, body in events
        if body["type"] == "release_aborted"
    }
    return [
        str(body["actor"])
        for ledger, seq, body in events
        if body["type"] == "opened" and (ledger, seq) not in voided
    ]


def test_open_require_vault_releases_nothing_and_a_retry_succeeds(
    handover: dict[str, str], bao_dev: BaoServer, tmp_path: Path
) -> None:
    dead = {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "t"}
    args: tuple[str, ...] = ("open", "handover.kcb", "--identity", "platform.kcid", "--trust")
    args += (handover["partner_fpr"], "--require-vault", "-o", "creds.env")
    failed = run(*args, cwd=tmp_path, env=dead)
    assert failed.returncode == 6, failed.stderr
    assert "nothing was released" in failed.stderr
    assert not (tmp_path / "creds.env").exists()
    # the ledger keeps the attempt, voided: bundle state does not count it as opened
    rows = [json.loads(line) for line in run("audit", "export", cwd=tmp_path).stdout.splitlines()]
    assert [r["type"] for r in rows] == ["opened", "release_aborted"]
    assert rows[1]["data"]["aborts_seq"] == rows[0]["seq"]
    assert rows[1]["data"]["released"] is False
    retry = run(*args, cwd=tmp_path, env=vault_env(bao_dev))
    assert retry.returncode == 0, retry.stderr
    assert (tmp_path / "creds.env").exists()
    events = vault_bundle_events(bao_dev, handover["bundle_id"])
    assert [body["type"] for _, _, body in events] == [
        "sealed",
        "opened",
        "release_aborted",
        "opened",
    ]
    assert real_opens(events) == [handover["platform_fpr"]]
    # a third open is refused: the real open counts
    (tmp_path / "creds.env").unlink()
    again = run(*args, cwd=tmp_path, env=vault_env(bao_dev))
    assert again.returncode == 7
    assert "already opened" in again.stderr
    verify = run("audit", "verify", "--vault", cwd=tmp_path, env=vault_env(bao_dev))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_seal_require_vault_writes_no_bundle_and_a_retry_succeeds(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    pub = make_identities(tmp_path, "partner", "platform")
    dead = {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "t"}
    args = [*seal_args(tmp_path, new_client_id(), pub["platform"]["recipient"], out="b.kcb")]
    args.append("--require-vault")
    failed = run(*args, cwd=tmp_path, env=dead)
    assert failed.returncode == 6, failed.stderr
    assert not (tmp_path / "b.kcb").exists()
    assert failed.stdout == ""
    rows = [json.loads(line) for line in run("audit", "export", cwd=tmp_path).stdout.splitlines()]
    assert [r["type"] for r in rows] == ["sealed", "release_aborted"]
    assert rows[1]["data"]["aborts_seq"] == rows[0]["seq"]
    assert rows[1]["data"]["aborted_type"] == "sealed"
    aborted_bundle = rows[0]["bundle_id"]
    retry = run(*args, cwd=tmp_path, env=vault_env(bao_dev))
    assert retry.returncode == 0, retry.stderr
    assert (tmp_path / "b.kcb").exists()
    bundle_id = json.loads(retry.stdout)["bundle_id"]
    assert bundle_id != aborted_bundle
    synced = run("sync", "--json", cwd=tmp_path, env=vault_env(bao_dev))
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["delivered"] == 2
    # the aborted seal reaches Vault with its void; the real one alone
    aborted = vault_bundle_events(bao_dev, aborted_bundle)
    assert [body["type"] for _, _, body in aborted] == ["sealed", "release_aborted"]
    assert [body["type"] for _, _, body in vault_bundle_events(bao_dev, bundle_id)] == ["sealed"]


def test_open_to_an_unwritable_file_releases_nothing_and_a_retry_succeeds(
    handover: dict[str, str], bao_dev: BaoServer, tmp_path: Path
) -> None:
    """`opened` is recorded before the credentials are written; when the (atomic) -o write
    fails, nothing was released: exit 2, a `release_aborted` in the ledger and in Vault, and
    the same machine can open again without --allow-reopen (before: exit 1 and the bundle
    stayed 'already opened')."""
    args: tuple[str, ...] = ("open", "handover.kcb", "--identity", "platform.kcid", "--trust")
    args += (handover["partner_fpr"], "-o")
    failed = run(*args, "no-such-dir/creds.env", cwd=tmp_path, env=vault_env(bao_dev))
    assert failed.returncode == 2, failed.stderr
    assert "cannot write no-such-dir/creds.env: No such file or directory" in failed.stderr
    assert "nothing was released (event #1 is voided by event #2)" in failed.stderr
    assert "Traceback" not in failed.stderr
    events = vault_bundle_events(bao_dev, handover["bundle_id"])
    assert [body["type"] for _, _, body in events] == ["sealed", "opened", "release_aborted"]
    assert real_opens(events) == []
    retry = run(*args, "creds.env", cwd=tmp_path, env=vault_env(bao_dev))
    assert retry.returncode == 0, retry.stderr
    assert f"client_id={handover['client_id']}" in (tmp_path / "creds.env").read_text()
    assert real_opens(vault_bundle_events(bao_dev, handover["bundle_id"])) == [
        handover["platform_fpr"]
    ]
    verify = run("audit", "verify", "--vault", cwd=tmp_path, env=vault_env(bao_dev))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_seal_to_an_unwritable_file_releases_nothing(tmp_path: Path) -> None:
    pub = make_identities(tmp_path, "partner", "platform")
    args = seal_args(tmp_path, new_client_id(), pub["platform"]["recipient"], out="no/b.kcb")
    failed = run(*args, cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr
    assert "cannot write no/b.kcb: No such file or directory; nothing was released" in (
        failed.stderr
    )
    assert failed.stdout == ""
    rows = [json.loads(line) for line in run("audit", "export", cwd=tmp_path).stdout.splitlines()]
    assert [r["type"] for r in rows] == ["sealed", "release_aborted"]
    assert rows[1]["data"] == {
        "aborts_seq": rows[0]["seq"],
        "aborted_type": "sealed",
        "released": False,
        "reason": "cannot write no/b.kcb: No such file or directory",
    }
    assert rows[1]["bundle_id"] == rows[0]["bundle_id"]
    assert run("audit", "verify", cwd=tmp_path).returncode == 0


def test_open_rejected_by_the_receivers_policy_is_recorded(
    handover: dict[str, str], bao_dev: BaoServer, tmp_path: Path
) -> None:
    (tmp_path / "strict.toml").write_text('[rules.lifetime]\nmax = "3d"\n')
    env = vault_env(bao_dev)
    args: tuple[str, ...] = ("open", "handover.kcb", "--identity", "platform.kcid", "--trust")
    args += (handover["partner_fpr"], "--policy", "strict.toml", "-o", "creds.env")
    out = run(*args, cwd=tmp_path, env=env)
    assert out.returncode == 7, out.stderr
    assert "lifetime" in out.stderr
    assert not (tmp_path / "creds.env").exists()
    secret = (tmp_path / "secret.txt").read_text().strip()
    assert secret not in out.stdout + out.stderr
    assert secret.encode() not in (tmp_path / "ledger.db").read_bytes()
    show = run("audit", "show", handover["bundle_id"], "--json", cwd=tmp_path, env=env)
    assert show.returncode == 0, show.stderr
    rows = json.loads(show.stdout)
    assert [(r["source"], r["type"]) for r in rows] == [("vault", "sealed"), ("ledger", "rejected")]
    export = run("audit", "export", cwd=tmp_path)
    (row,) = [json.loads(line) for line in export.stdout.splitlines()]
    assert row["type"] == "rejected"
    assert row["bundle_id"] == handover["bundle_id"]
    assert row["fingerprint"] == handover["fingerprint"]
    assert row["actor"] == handover["platform_fpr"]
    assert row["data"]["rules"] == ["lifetime"]
    assert row["data"]["stage"] == "open"
    assert row["vault_status"] == "recorded"
    assert row["policy_digest"].startswith("sha256:")
    assert handover["client_id"] not in export.stdout
    # the refusal released nothing: the default policy still opens it
    ok = run(*args[:-4], "-o", "creds.env", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr


def test_open_refused_when_vault_shows_another_identity_opened_it(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    h = seal_handover(tmp_path, bao_dev, "platform", "mallory")
    env = vault_env(bao_dev)
    trust = ("--trust", h["partner_fpr"])
    mallory = run(
        "open",
        "handover.kcb",
        "--identity",
        "mallory.kcid",
        *trust,
        "-o",
        "stolen.env",
        cwd=tmp_path,
        env={**env, "KEYCOURIER_LEDGER": str(tmp_path / "mallory.db")},
    )
    assert mallory.returncode == 0, mallory.stderr
    # the platform's ledger is fresh: only Vault knows of mallory's open
    assert not (tmp_path / "ledger.db").exists()
    # an open in Vault counts when signed by a key the receiver trusts ...
    args = ("open", "handover.kcb", "--identity", "platform.kcid", *trust, "-o", "creds.env")
    refused = run(*args, "--trust", h["mallory_fpr"], cwd=tmp_path, env=env)
    assert refused.returncode == 7, refused.stderr
    assert "possible interception" in refused.stderr
    assert h["mallory_fpr"] in refused.stderr
    assert "already opened" in refused.stderr
    assert not (tmp_path / "creds.env").exists()
    # ... any other is reported, never acted on (a sender-role token can create one)
    warned = run(*args, cwd=tmp_path, env=env)
    assert warned.returncode == 0, warned.stderr
    assert "possible interception" in warned.stderr
    assert h["mallory_fpr"] in warned.stderr
    assert "not acted on" in warned.stderr
    assert (tmp_path / "creds.env").exists()


@contextmanager
def hanging_vault() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers.

    Yields its http address and the accepted sockets (held open until the end).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def timed(
    *args: str, cwd: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    out = run(*args, cwd=cwd, env=env)
    return out, time.monotonic() - start


def test_a_hanging_vault_times_out_after_keycourier_vault_timeout(tmp_path: Path) -> None:
    """KEYCOURIER_VAULT_TIMEOUT=1 bounds every Vault request: a server that accepts and never
    answers leaves the event pending (exit 0), doctor exits 6, --require-vault exits 6 and
    releases nothing; each in a few seconds, not the default 10 s per request."""
    # What a run takes here and now without Vault (interpreter, imports, the ledger): a
    # loaded machine stretches it; the bound below is that plus 8 s, still less than the
    # 10 s a single request would take with the default timeout.
    startup = timed("audit", "export", cwd=tmp_path, env={})[1]
    with hanging_vault() as (addr, held):
        env = {"VAULT_ADDR": addr, "VAULT_TOKEN": "t", "KEYCOURIER_VAULT_TIMEOUT": "1"}
        revoked, took = timed("revoke", "kcb-hang", "--reason", "r", cwd=tmp_path, env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert took < startup + 8, (took, startup)
        assert held, "the command never reached the hanging Vault"
        assert "recorded in the local ledger only" in revoked.stderr
        assert "ReadTimeout" in revoked.stderr  # a timeout, not a refused connection
        assert "Traceback" not in revoked.stderr
        rows = [json.loads(x) for x in run("audit", "export", cwd=tmp_path).stdout.splitlines()]
        assert [(r["type"], r["vault_status"]) for r in rows] == [("revoked", "pending")]

        reached = len(held)
        doctor, took = timed("doctor", cwd=tmp_path, env=env)
        assert doctor.returncode == 6, doctor.stdout + doctor.stderr
        assert took < startup + 8, (took, startup)
        assert len(held) > reached
        assert "unreachable" in doctor.stderr
        assert "Traceback" not in doctor.stderr

        pub = make_identities(tmp_path, "partner", "platform")
        seal = seal_args(tmp_path, new_client_id(), pub["platform"]["recipient"], out="b.kcb")
        strict, took = timed(*seal, "--require-vault", cwd=tmp_path, env=env)
        assert strict.returncode == 6, strict.stderr
        assert took < startup + 8, (took, startup)
        assert "nothing was released" in strict.stderr
        assert not (tmp_path / "b.kcb").exists()
        assert strict.stdout == ""


def test_vault_cacert_trusts_a_tls_vault_and_a_wrong_ca_is_exit_3(tmp_path: Path) -> None:
    """An https OpenBao dev server (-dev-tls): with VAULT_CACERT naming its CA a recording
    command reaches Vault; without it (or with a CA bundle that did not sign the server's
    certificate) the event stays pending, --require-vault is exit 3 with the VAULT_CACERT hint,
    and doctor is exit 3, never a traceback."""
    server = start_dev_tls_server(tmp_path / "bao-tls")
    try:
        cacert = str(server.extra["cacert"])
        base = {"VAULT_ADDR": server.addr, "VAULT_TOKEN": server.token}
        trusted = {**base, "VAULT_CACERT": cacert}
        ok = run("revoke", "kcb-tls-ok", "--reason", "r", cwd=tmp_path, env=trusted)
        assert ok.returncode == 0, ok.stderr
        assert "in the local ledger and in Vault" in ok.stderr
        client = hvac.Client(url=server.addr, token=server.token, verify=cacert)
        folder = "keycourier/handovers/kcb-tls-ok/events"
        (name,) = client.secrets.kv.v2.list_secrets(path=folder, mount_point="secret")["data"][
            "keys"
        ]
        record = client.secrets.kv.v2.read_secret_version(
            path=f"{folder}/{name}", mount_point="secret", raise_on_deleted_version=True
        )
        assert "revoked" in json.dumps(record["data"]["data"])

        def handover_records() -> list[str]:
            listed = client.secrets.kv.v2.list_secrets(
                path="keycourier/handovers", mount_point="secret"
            )
            return [str(k) for k in listed["data"]["keys"]]

        assert handover_records() == ["kcb-tls-ok/"]
        doctor = run("doctor", cwd=tmp_path, env=trusted)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr

        # the system CA store (REQUESTS_CA_BUNDLE, SSL_CERT_FILE...) or certifi's bundle
        # does not know bao's generated CA
        for label, env in (
            ("no VAULT_CACERT", base),
            ("wrong CA", {**base, "VAULT_CACERT": certifi.where()}),
        ):
            bid = "kcb-tls-" + label.replace(" ", "-")
            soft = run("revoke", bid, "--reason", "r", cwd=tmp_path, env=env)
            assert soft.returncode == 0, (label, soft.stderr)
            assert "TLS verification failed" in soft.stderr, label
            assert "recorded in the local ledger only" in soft.stderr, label
            strict = run(
                "revoke", bid, "--reason", "again", "--require-vault", cwd=tmp_path, env=env
            )
            assert strict.returncode == 3, (label, strict.stderr)
            assert "TLS verification failed" in strict.stderr, label
            assert "VAULT_CACERT" in strict.stderr, label
            doc = run("doctor", cwd=tmp_path, env=env)
            assert doc.returncode == 3, (label, doc.stdout + doc.stderr)
            assert "TLS verification failed" in doc.stderr, label
            for out in (soft, strict, doc):
                assert "Traceback" not in out.stderr, label
                assert server.token not in out.stdout + out.stderr
            assert bid not in handover_records(), label  # nothing reached Vault
    finally:
        server.stop()


def test_doctor_on_a_kv_v1_mount_is_exit_3(bao_dev: BaoServer, tmp_path: Path) -> None:
    """The configured mount is KV version 1 (or not KV at all): doctor says so, exit 3."""
    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    v1 = "kv1-" + secrets.token_hex(4)
    other = "transit-" + secrets.token_hex(4)
    admin.sys.enable_secrets_engine("kv", path=v1, options={"version": "1"})
    admin.sys.enable_secrets_engine("transit", path=other)
    try:
        env = {**vault_env(bao_dev), "KEYCOURIER_VAULT_MOUNT": v1}
        out = run("doctor", cwd=tmp_path, env=env)
        assert out.returncode == 3, out.stdout + out.stderr
        assert f"{v1}/ is KV version 1; keycourier needs 2" in out.stdout
        assert f"doctor: kv mount: {v1}/ is KV version 1" in out.stderr
        report = run("doctor", "--json", cwd=tmp_path, env=env)
        assert report.returncode == 3
        doc = json.loads(report.stdout)
        assert doc["exit_code"] == 3
        checks = {c["name"]: c["status"] for c in doc["checks"]}
        assert checks["reachable"] == checks["sealed"] == checks["token"] == "ok"
        assert checks["kv mount"] == "fail"
        not_kv = run("doctor", cwd=tmp_path, env={**env, "KEYCOURIER_VAULT_MOUNT": other})
        assert not_kv.returncode == 3, not_kv.stdout + not_kv.stderr
        assert f"{other}/ is not a KV mount (transit)" in not_kv.stdout
        for r in (out, report, not_kv):
            assert "Traceback" not in r.stderr
    finally:
        admin.sys.disable_secrets_engine(v1)
        admin.sys.disable_secrets_engine(other)


def test_ingest_of_a_bundle_sealed_without_a_partner_name(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    """--partner is optional: Vault refuses an empty metadata value, so none is written."""
    pub = make_identities(tmp_path, "partner", "platform")
    args = seal_args(tmp_path, new_client_id(), pub["platform"]["recipient"], out="h.kcb")
    i = args.index("--partner")
    del args[i : i + 2]
    sealed = run(*args, cwd=tmp_path, env={"KEYCOURIER_LEDGER": str(tmp_path / "sender.db")})
    assert sealed.returncode == 0, sealed.stderr
    vpath = f"handed-over/anon-{secrets.token_hex(4)}/quickbooks"
    out = run(
        "ingest", "h.kcb", "--identity", "platform.kcid",
        "--trust", pub["partner"]["signing_fingerprint"], "--vault-path", vpath,
        cwd=tmp_path, env=vault_env(bao_dev),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    client = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    meta = client.secrets.kv.v2.read_secret_metadata(path=vpath, mount_point="secret")["data"]
    assert "partner" not in meta["custom_metadata"]
    assert meta["custom_metadata"]["sealed_by"] == pub["partner"]["signing_fingerprint"]
