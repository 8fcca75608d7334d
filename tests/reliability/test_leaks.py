"""Leak tests: a random sentinel secret must not escape through any channel.

Every command runs as a real subprocess (most with ``--debug``; the failing
ones also without) against a temp HOME, a real ledger and the ``bao_dev``
OpenBao. After each one: the sentinel is not in stdout (unless asked for) or
stderr; afterwards not in the ledger's bytes (db, -wal, -shm) nor in any
Vault record except the credential store itself; every file under HOME and
the work dir that holds a sentinel is mode 0600; no command line of
keycourier (or of a child started by ``exec``) holds a secret.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.world import ALNUM, World, kc, make_world
from tests.support.openbao import BaoServer
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

MONITE_ID = "5b1d7c9e-2a4f-4c6b-8e0d-1f3a5c7e9b2d"


@dataclass
class Leaks:
    world: World
    sentinels: dict[str, bytes]
    ran: list[str] = field(default_factory=list)

    def check_output(
        self, label: str, r: subprocess.CompletedProcess[bytes], *, stdout_ok: bool = False
    ) -> None:
        self.ran.append(label)
        for name, value in self.sentinels.items():
            assert value not in r.stderr, f"{label}: {name} in stderr"
            if not stdout_ok:
                assert value not in r.stdout, f"{label}: {name} in stdout"
        assert b"Traceback" not in r.stderr or b"--debug" in label.encode(), f"{label}: traceback"
        self.check_files(label)

    def check_files(self, label: str) -> None:
        for base in (self.world.home, self.world.dir):
            for path in base.rglob("*"):
                if not path.is_file() or path.is_symlink():
                    continue
                data = path.read_bytes()
                held = [n for n, v in self.sentinels.items() if v in data]
                mode = path.stat().st_mode & 0o777
                assert not held or mode == 0o600, f"{label}: {path} holds {held} with mode {mode:o}"


def run(
    leaks: Leaks,
    label: str,
    *args: str,
    expect: int | None = 0,
    stdout_ok: bool = False,
    debug: bool = True,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    full = ("--debug", *args) if debug else args
    r = kc(leaks.world, *full, stdin=stdin, env=env)
    want = r.returncode if expect is None and r.returncode != 1 else expect
    assert r.returncode == want, f"{label}: exit {r.returncode}, want {expect}: {r.stderr.decode()}"
    leaks.check_output(label + (" --debug" if debug else ""), r, stdout_ok=stdout_ok)
    if r.returncode != 0 and debug:  # failures: also without --debug
        r2 = kc(leaks.world, *args, stdin=stdin, env=env)
        assert r2.returncode == r.returncode
        leaks.check_output(label, r2, stdout_ok=stdout_ok)
    return r


def _cmdline_while_blocked(world: World, *args: str, stdin: bytes) -> bytes:
    """Start keycourier waiting on stdin for its secret; read its /proc cmdline; then feed it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", *args],
        cwd=world.dir,
        env=world.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.8)  # past start-up: blocked reading stdin
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        out, err = proc.communicate(stdin, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return cmdline + b"\n" + out + b"\n" + err


@pytest.fixture
def standin() -> Iterator[RunningStandin]:
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    with start_standin(StandinState(clients={MONITE_ID: secret})) as running:
        yield running


def _vault_records(bao: BaoServer) -> Iterator[tuple[str, bytes]]:
    import hvac

    client = hvac.Client(url=bao.addr, token=bao.token)

    def walk(prefix: str) -> Iterator[str]:
        try:
            keys = client.secrets.kv.v2.list_secrets(path=prefix, mount_point="secret")["data"][
                "keys"
            ]
        except hvac.exceptions.InvalidPath:
            return
        for key in keys:
            if key.endswith("/"):
                yield from walk(prefix + key)
            else:
                yield prefix + key

    for path in walk(""):
        meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point="secret")["data"]
        for version in range(1, int(meta["current_version"]) + 1):
            try:
                doc = client.secrets.kv.v2.read_secret_version(
                    path=path, version=version, mount_point="secret", raise_on_deleted_version=False
                )
            except hvac.exceptions.InvalidPath:
                continue
            yield path, json.dumps(doc).encode() + json.dumps(meta).encode()


def test_no_command_leaks_the_sentinel(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    world = make_world(tmp_path)
    world.env.update(VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token)
    passphrase = "pp-" + "".join(secrets.choice(ALNUM) for _ in range(30))
    (world.dir / "pass.txt").write_text(passphrase + "\n")
    (world.dir / "pass.txt").chmod(0o600)
    monite_secret = next(iter(standin.state.clients.values()))
    leaks = Leaks(
        world,
        {
            "client secret": world.sentinel,
            "identity passphrase": world.env["KEYCOURIER_PASSPHRASE"].encode(),
            "age passphrase": passphrase.encode(),
            "monite client secret": monite_secret.encode(),
        },
    )

    # identities: new, show, export-age
    run(leaks, "identity new", "identity", "new", "-o", "third.kcid", "--work-factor", "10")
    for name in ("partner.kcid", "platform.kcid"):
        r = run(leaks, "identity show", "identity", "show", name, "--json")
    run(
        leaks,
        "identity export-age",
        "identity",
        "export-age",
        "platform.kcid",
        "-o",
        "platform.age",
    )
    age_key = (world.dir / "platform.age").read_bytes().split(b"\n")[2].strip()
    assert age_key.startswith(b"AGE-SECRET-KEY-1")
    leaks.sentinels["age secret key"] = age_key
    assert "signing_seed" not in r.stdout.decode()

    # check: pass and reject
    common = [
        "--platform",
        "quickbooks",
        "--client-id",
        world.client_id,
        "--client-secret-file",
        "secret.txt",
        "--environment",
        "production",
        "--attested-by",
        "Test Lead",
    ]
    run(leaks, "check pass", "check", *common, "--json")
    run(
        leaks,
        "check reject",
        "check",
        *common,
        "--api-base",
        "https://sandbox-quickbooks.api.intuit.com",
        "--json",
        expect=7,
    )

    # seal: pass (stdin secret, cmdline read while blocked), --json, reject
    args = world.seal_args("handover.kcb", "--json")
    args[args.index("secret.txt")] = "-"
    seen = _cmdline_while_blocked(world, *args, stdin=world.sentinel + b"\n")
    for name, value in leaks.sentinels.items():
        assert value not in seen, f"seal (stdin): {name} in argv or output"
    leaks.check_files("seal (stdin)")
    run(leaks, "seal", *world.seal_args("second.kcb"))
    run(
        leaks, "seal reject", *world.seal_args("rejected.kcb", "--environment", "sandbox"), expect=7
    )
    assert not (world.dir / "rejected.kcb").exists()

    info = json.loads(run(leaks, "inspect", "inspect", "handover.kcb", "--json").stdout)
    bundle_id = info["manifest"]["bundle_id"]
    fingerprint = info["manifest"]["fingerprint"]
    run(leaks, "bundle extract-age", "bundle", "extract-age", "handover.kcb", "-o", "payload.age")

    trust = ["--identity", "platform.kcid", "--trust", world.partner_fpr]
    run(
        leaks,
        "open wrong trust",
        "open",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        "kc1:" + "0" * 64,
        "-o",
        "nope.json",
        expect=4,
    )
    tampered = (world.dir / "handover.kcb").read_bytes().replace(b"Acme", b"Acmf")
    (world.dir / "tampered.kcb").write_bytes(tampered)
    run(leaks, "open tampered", "open", "tampered.kcb", *trust, "-o", "nope.json", expect=4)
    run(leaks, "open file", "open", "handover.kcb", *trust, "-o", "creds.json", "--json")
    assert world.sentinel in (world.dir / "creds.json").read_bytes()
    r = run(
        leaks,
        "open pipe",
        "open",
        "handover.kcb",
        *trust,
        "--json",
        "--allow-reopen",
        stdout_ok=True,
    )
    assert world.sentinel in r.stdout  # asked for: the credentials go to the pipe
    run(leaks, "open again", "open", "handover.kcb", *trust, "-o", "again.json", expect=7)

    run(
        leaks,
        "ingest",
        "ingest",
        "second.kcb",
        *trust,
        "--vault-path",
        f"partners/leaktest-{secrets.token_hex(4)}/quickbooks",
        "--json",
    )
    run(leaks, "revoke", "revoke", bundle_id, "--reason", "leak test")
    run(leaks, "audit show", "audit", "show", bundle_id, "--json")
    run(leaks, "audit show fp", "audit", "show", fingerprint)
    run(leaks, "audit export", "audit", "export", "--format", "csv")
    run(leaks, "audit verify", "audit", "verify", "--vault", "--json")
    run(leaks, "sync", "sync", "--json")
    run(leaks, "doctor", "doctor", "--json", expect=None)
    run(leaks, "policy deny", "policy", "deny", fingerprint, "--reason", "leak test")

    # age with a passphrase file
    run(
        leaks,
        "age encrypt",
        "age",
        "encrypt",
        "--passphrase-file",
        "pass.txt",
        "--work-factor",
        "10",
        "-a",
        "-o",
        "creds.age",
        "creds.json",
    )
    run(
        leaks,
        "age decrypt",
        "age",
        "decrypt",
        "--passphrase-file",
        "pass.txt",
        "-o",
        "creds.out",
        "creds.age",
    )
    assert world.sentinel in (world.dir / "creds.out").read_bytes()
    run(
        leaks,
        "age decrypt wrong",
        "age",
        "decrypt",
        "--passphrase-file",
        "secret.txt",
        "-o",
        "x.out",
        "creds.age",
        expect=4,
    )

    # token helper: token and exec (the stand-in issues the partner token)
    cfg = world.home / ".config" / "keycourier" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        f'[profiles.ci]\ndialect = "monite"\nbase_url = "{standin.url}/v1"\n'
        'environment = "sandbox"\nversion = "2024-05-25"\nclient_id_env = "MONITE_CLIENT_ID"\n'
        'client_secret_env = "MONITE_CLIENT_SECRET"\nenv_name = "MONITE_TOKEN"\n'
    )
    tenv = {"MONITE_CLIENT_ID": MONITE_ID, "MONITE_CLIENT_SECRET": monite_secret}
    r = run(leaks, "token raw", "token", "-p", "ci", "--format", "raw", stdout_ok=True, env=tenv)
    token = r.stdout.strip()
    assert len(token) > 16
    run(leaks, "token json", "token", "-p", "ci", "--format", "json", stdout_ok=True, env=tenv)
    r = run(
        leaks,
        "exec",
        "exec",
        "-p",
        "ci",
        "--",
        "sh",
        "-c",
        'echo "token=$MONITE_TOKEN"; tr "\\0" " " < /proc/$$/cmdline; echo',
        env=tenv,
    )
    assert token not in r.stdout, "exec did not mask the token in the child's stdout"
    assert b"token=" in r.stdout
    leaks.sentinels["partner token"] = token
    run(
        leaks,
        "token wrong secret",
        "token",
        "-p",
        "ci",
        "--no-cache",
        env={**tenv, "MONITE_CLIENT_SECRET": "x" * 40},
        expect=5,
    )

    # the ledger's bytes (db, -wal, -shm) and every Vault record
    for suffix in ("", "-wal", "-shm", ".key"):
        path = Path(str(world.ledger) + suffix)
        if path.exists():
            data = path.read_bytes()
            for name, value in leaks.sentinels.items():
                assert value not in data, f"{name} in {path.name}"
    credential_store = 0
    records = 0
    for vpath, data in _vault_records(bao_dev):
        records += 1
        if world.sentinel in data and vpath.startswith("partners/leaktest-"):
            credential_store += 1  # the one place the secret belongs
            continue
        for name, value in leaks.sentinels.items():
            assert value not in data, f"{name} in Vault record {vpath}"
    assert credential_store == 1
    assert records > 10, "the Vault mirror holds too few records to mean anything"
    assert re.fullmatch(r"[A-Za-z0-9]{40}", world.secret)
    sys.stderr.write(f"leak test: {len(leaks.ran)} command runs checked: {leaks.ran}\n")


def test_the_checks_catch_a_leak(tmp_path: Path) -> None:
    """Negative control: the file walk and the output check do fire."""
    world = make_world(tmp_path, identities=False)
    leaks = Leaks(world, {"client secret": world.sentinel})
    leaks.check_files("clean")
    loose = world.dir / "loose.txt"
    loose.write_bytes(b"x" + world.sentinel)
    loose.chmod(0o644)
    with pytest.raises(AssertionError, match=r"loose\.txt"):
        leaks.check_files("loose")
    loose.unlink()
    fake = subprocess.CompletedProcess[bytes]([], 0, b"", b"err " + world.sentinel)
    with pytest.raises(AssertionError, match="stderr"):
        leaks.check_output("fake", fake)
