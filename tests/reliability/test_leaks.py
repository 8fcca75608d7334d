"""Leak tests: a random sentinel secret must not escape through any channel.

Every command runs as a real subprocess (most with ``--debug``; the failing
ones also without) against a temp HOME and TMPDIR, a real ledger, the
``bao_dev`` OpenBao and the platform stand-in (tokens and connections). After
each one: no sentinel is in stdout (unless asked for) or stderr; afterwards
not in the ledger's bytes (db, -wal, -shm) nor in any Vault record except the
credential store itself; every file under HOME, the work dir and TMPDIR that
holds a sentinel is mode 0600; no command line of keycourier (or of a child
started by ``exec``) holds a secret. ``serve`` runs for a while with clients
asking it for tokens (also with a wrong key): its stdout, stderr (``--debug``),
command line and ``/metrics`` are checked too. The sentinels: the client
secret, both passphrases, the age secret key, the platform client secret, the
partner tokens (from the first one minted on), the helper client keys, a wrong
client key and a bogus bearer token.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.world import ALNUM, World, kc, make_world
from tests.support.connections_standin import RunningPlatform, start_platform
from tests.support.openbao import BaoServer, free_port

MONITE_ID = "5b1d7c9e-2a4f-4c6b-8e0d-1f3a5c7e9b2d"
ENTITY = "0c6f1e2d-9a8b-4c7d-8e5f-3a2b1c0d9e8f"


@dataclass
class Leaks:
    world: World
    sentinels: dict[str, bytes]
    ran: list[str] = field(default_factory=list)
    tmp: Path | None = None  # the commands' TMPDIR, scanned like HOME and the work dir
    seen: list[tuple[str, subprocess.CompletedProcess[bytes], bool]] = field(default_factory=list)

    def add(self, name: str, value: bytes) -> None:
        """A secret learnt along the way (a token, a key): every output so far is checked too."""
        self.sentinels[name] = value
        for label, r, stdout_ok in self.seen:
            self._scan(label, r, {name: value}, stdout_ok=stdout_ok)
        self.check_files(f"on learning the {name}")

    def check_output(
        self, label: str, r: subprocess.CompletedProcess[bytes], *, stdout_ok: bool = False
    ) -> None:
        self.ran.append(label)
        self.seen.append((label, r, stdout_ok))
        self._scan(label, r, self.sentinels, stdout_ok=stdout_ok)
        assert b"Traceback" not in r.stderr or b"--debug" in label.encode(), f"{label}: traceback"
        self.check_files(label)

    @staticmethod
    def _scan(
        label: str,
        r: subprocess.CompletedProcess[bytes],
        sentinels: dict[str, bytes],
        *,
        stdout_ok: bool,
    ) -> None:
        for name, value in sentinels.items():
            assert value not in r.stderr, f"{label}: {name} in stderr"
            if not stdout_ok:
                assert value not in r.stdout, f"{label}: {name} in stdout"

    def check_files(self, label: str) -> None:
        for base in (self.world.home, self.world.dir, *([self.tmp] if self.tmp else [])):
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
def platform() -> Iterator[RunningPlatform]:
    """The token and connection stand-ins on one port (the Monite profile's base_url)."""
    running = start_platform({MONITE_ID: "".join(secrets.choice(ALNUM) for _ in range(40))})
    try:
        yield running
    finally:
        running.stop()


def _http(url: str, *, key: bytes | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")  # noqa: S310
    if key is not None:
        req.add_header("Authorization", "Bearer " + key.decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _serve_and_ask(leaks: Leaks, key: bytes, env: dict[str, str]) -> None:
    """``keycourier --debug serve`` answering good, wrong and revoked keys; all it says checked."""
    world = leaks.world
    wrong = key[:-6] + (b"AAAAAA" if not key.endswith(b"AAAAAA") else b"BBBBBB")
    leaks.add("wrong client key", wrong)
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", "--debug", "serve", "--listen", listen],
        cwd=world.dir,
        env={**world.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    said = b""
    try:
        while b"listening on" not in said:
            line = proc.stderr.readline()
            assert line, f"serve did not start: {said!r}"
            said += line
        url = said.rsplit(b" ", 1)[1].strip().decode()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        body = b'{"profile": "ci"}'
        status, served = _http(url + "/v1/token", key=key, body=body)
        assert status == 200, served
        leaks.add("served token", json.loads(served)["access_token"].encode())
        assert _http(url + "/v1/token", key=wrong, body=body)[0] == 401
        assert _http(url + "/v1/token", body=body)[0] == 401
        status, metrics = _http(url + "/metrics", key=key)
        assert status == 200
        helper_env = {**env, "KEYCOURIER_HELPER_URL": url, "KEYCOURIER_HELPER_KEY_FILE": "ci.key"}
        r = run(leaks, "token via helper", "token", "-p", "ci", stdout_ok=True, env=helper_env)
        assert r.stdout.strip() in leaks.sentinels.values()
        run(leaks, "helper client revoke", "helper", "client", "revoke", "ci-runner")
        deadline = time.monotonic() + 5
        while _http(url + "/v1/token", key=key, body=body)[0] != 401:  # refused within a second
            assert time.monotonic() < deadline, "the revoked key is still served"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, said + err
    leaks.check_output(
        "serve --debug",
        subprocess.CompletedProcess(proc.args, 0, out + metrics, said + err + cmdline),
    )


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
    tmp_path: Path, bao_dev: BaoServer, platform: RunningPlatform
) -> None:
    world = make_world(tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    world.env.update(VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token, TMPDIR=str(tmpdir))
    passphrase = "pp-" + "".join(secrets.choice(ALNUM) for _ in range(30))
    (world.dir / "pass.txt").write_text(passphrase + "\n")
    (world.dir / "pass.txt").chmod(0o600)
    monite_secret = platform.auth.clients[MONITE_ID]
    leaks = Leaks(
        world,
        {
            "client secret": world.sentinel,
            "identity passphrase": world.env["KEYCOURIER_PASSPHRASE"].encode(),
            "age passphrase": passphrase.encode(),
            "monite client secret": monite_secret.encode(),
        },
        tmp=tmpdir,
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
    leaks.add("age secret key", age_key)
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
        "kc1:" + "0" * 32,  # well formed, but not the sender
        "-o",
        "nope.json",
        expect=4,
    )
    sealed = (world.dir / "handover.kcb").read_bytes()
    at = sealed.index(b"\n-----END AGE") - 10  # one base64 character of the payload
    tampered = sealed[:at] + (b"B" if sealed[at : at + 1] == b"A" else b"A") + sealed[at + 1 :]
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
        f"handed-over/leaktest-{secrets.token_hex(4)}/quickbooks",
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
    run(leaks, "policy show", "policy", "show")
    run(leaks, "policy show json", "policy", "show", "--json")

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
        f'[profiles.ci]\ndialect = "monite"\nbase_url = "{platform.monite_base}"\n'
        'environment = "sandbox"\nversion = "2024-05-25"\nclient_id_env = "MONITE_CLIENT_ID"\n'
        'client_secret_env = "MONITE_CLIENT_SECRET"\nenv_name = "MONITE_TOKEN"\n'
    )
    tenv = {"MONITE_CLIENT_ID": MONITE_ID, "MONITE_CLIENT_SECRET": monite_secret}
    r = run(leaks, "token raw", "token", "-p", "ci", "--format", "raw", stdout_ok=True, env=tenv)
    token = r.stdout.strip()
    assert len(token) > 16
    leaks.add("partner token", token)  # also checks the stderr of the run that minted it
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

    # helper client keys, and serve asked for tokens with them
    r = run(
        leaks,
        "helper client add",
        *("helper", "client", "add", "ci-runner", "--profile", "ci", "--rate", "1000"),
        stdout_ok=True,
    )
    key = r.stdout.strip()
    assert key.startswith(b"kck_")
    leaks.add("helper client key", key)
    run(
        leaks,
        "helper client add --key-file",
        *("helper", "client", "add", "ci-key-file", "-p", "*", "--key-file", "ci.key", "--json"),
    )
    leaks.add("helper file key", (world.dir / "ci.key").read_bytes().strip())
    run(leaks, "helper client list", "helper", "client", "list")
    run(leaks, "helper client list json", "helper", "client", "list", "--json")
    run(leaks, "helper client revoke unknown", "helper", "client", "revoke", "nobody", expect=None)
    _serve_and_ask(leaks, key, tenv)

    # accounting connections: the token from the helper's cache, a file, stdin, a bogus one
    scope = ["--profile", "ci", "--entity", ENTITY]
    run(leaks, "connection list empty", "connection", "list", *scope, env=tenv)
    r = run(leaks, "connection create", "connection", "create", *scope, "--json", env=tenv)
    cid = json.loads(r.stdout)["connection"]["id"]
    run(leaks, "connection create again", "connection", "create", *scope, env=tenv, expect=7)
    platform.connections.authorize(cid, "quickbooks")
    wait = ["--timeout", "10s", "--poll-interval", "100ms"]
    run(leaks, "connection wait", "connection", "wait", cid, *scope, *wait, env=tenv)
    run(leaks, "connection get", "connection", "get", cid, *scope, "--json", env=tenv)
    other = str(uuid.uuid4())
    run(leaks, "connection get unknown", "connection", "get", other, *scope, env=tenv, expect=2)
    (world.dir / "partner.token").write_bytes(token + b"\n")
    (world.dir / "partner.token").chmod(0o600)
    run(
        leaks, "connection list file", "connection", "list", *scope, "--token-file", "partner.token"
    )
    run(leaks, "connection list stdin", "connection", "list", *scope, "--token-file", "-",
        stdin=token + b"\n")  # fmt: skip
    bogus = "".join(secrets.choice(ALNUM) for _ in range(43)).encode()
    leaks.add("bogus bearer token", bogus)
    run(leaks, "connection bogus token", "connection", "list", *scope, "--token-file", "-",
        stdin=bogus + b"\n", expect=None)  # fmt: skip
    run(leaks, "connection disconnect", "connection", "disconnect", cid, *scope, env=tenv)
    run(leaks, "sync final", "sync", "--json")
    run(leaks, "audit verify final", "audit", "verify", "--vault", "--json")

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
        if world.sentinel in data and vpath.startswith("handed-over/leaktest-"):
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
    leaks = Leaks(world, {"client secret": world.sentinel}, tmp=tmp_path / "tmp")
    leaks.check_files("clean")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "spill").write_bytes(world.sentinel)
    (tmp_path / "tmp" / "spill").chmod(0o640)
    with pytest.raises(AssertionError, match="spill"):
        leaks.check_files("tmp")
    (tmp_path / "tmp" / "spill").unlink()
    loose = world.dir / "loose.txt"
    loose.write_bytes(b"x" + world.sentinel)
    loose.chmod(0o644)
    with pytest.raises(AssertionError, match=r"loose\.txt"):
        leaks.check_files("loose")
    loose.unlink()
    fake = subprocess.CompletedProcess[bytes]([], 0, b"", b"err " + world.sentinel)
    with pytest.raises(AssertionError, match="stderr"):
        leaks.check_output("fake", fake)
    early = subprocess.CompletedProcess[bytes]([], 0, b"", b"minted tok-5f3a9c")
    leaks.check_output("early", early)
    with pytest.raises(AssertionError, match="early: late token in stderr"):
        leaks.add("late token", b"tok-5f3a9c")  # learnt later: earlier outputs are rechecked
