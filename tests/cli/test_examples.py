"""Every example in ``--help``, README.md and docs/*.md runs as printed and does what it says.

Examples are found, not listed, so a new one is picked up by itself:

* ``--help``: in every command's help and epilog, the lines after ``Example:`` or
  ``Examples:`` (up to the next blank line), ``\\`` continuations joined;
* Markdown: every fenced block tagged ``sh``, ``bash``, ``shell``, ``console`` or
  untagged; each logical line (continuations joined, ``$ `` prompt dropped) that
  runs ``keycourier``. A line in synopsis grammar (``[--opt]``, ``(-a | -b)``,
  ``<32 hex>``) describes a command rather than showing one and is not run.

Each example runs with ``bash -c`` in its own directory, a copy of a prepared one
holding the files examples name (identities, ``secret.txt``, ``pass.txt``, a sealed
``handover.kcb`` and the platform's ``receipt.kcr`` of it, age keys ...), with
``keycourier`` on ``PATH``, a real OpenBao
(a KV v2 mount of its own per example) and the example's own ledger. Files an example
writes (``-o``, ``--output``, ``--key-file``, ``>``) are removed first, as on a
first run. It must exit 0 unless ``EXPECTED`` says otherwise.

Placeholders are substituted from the prepared identities (``SUBSTITUTIONS``):

=================================  ==============================================
``age1...``                        the receiver's (platform.kcid) age recipient
``--trust kc1:...``, ``kc1:0123...`` the sender's (partner.kcid) signing fingerprint; in
                                   ``receipt verify``, the receiver's (platform.kcid)
``policy deny kc1:0123...``         the credential fingerprint of handover.kcb
``ABxxxx...``, ``AB...``, ``ABc...Z`` a well-formed production QuickBooks client ID
``01J9Z8...``                      the bundle ID of handover.kcb
``KEYCOURIER_PASSPHRASE=...``       the passphrase of the prepared identities
=================================  ==============================================

Beyond the exit code, files an example writes must exist afterwards, and a trailing
``# prints WORD`` comment must hold: WORD is on its stdout.

``creds.age`` is encrypted to ``key.txt``, or with ``pass.txt`` for an example that
decrypts it with ``--passphrase-file``.

Profiles ``ci``, ``prod`` and ``demo`` point at the platform stand-in (started per
example), ``$ENTITY`` is a fresh UUID, the connection the --help examples name by ID is
seeded (connected to Xero), ``./deploy.sh``, ``./needs-vault-too.sh`` and ``make smoke``
check that they got the token, and ``$GITHUB_ENV`` names a file. An example that follows
other lines in the docs gets them first (``SETUP``). ``keycourier serve`` examples are
started, seen listening and stopped with SIGTERM (exit 0).

Examples not run are listed in ``NOT_RUN`` by their exact text, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import hvac
import pytest

from keycourier.cli.main import COMMANDS, cli
from tests.support import cli as support_cli
from tests.support.connections_standin import RunningPlatform, StandinConnection, start_platform
from tests.support.openbao import BaoServer
from tests.support.random_text import ALNUM

ROOT = Path(__file__).resolve().parents[2]
PASS = "example passphrase 42"

BIN = Path(sys.executable).parent

_RUNS_KEYCOURIER = re.compile(r"(?:^|[\s;(|&]|\$\()keycourier\s")
_SYNOPSIS = re.compile(r"\[-|\(-|\s\|\s-|<[a-z0-9 ]+>|\[[A-Z]+\]")
_FENCE = re.compile(r"\s*```([A-Za-z]*)\s*")
_SHELL_FENCES = {"", "sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Example:
    where: str  # "keycourier seal --help" or "README.md:44"
    command: str

    @property
    def id(self) -> str:
        return f"{self.where}: {self.command[:60]}"


def _logical(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    parts: list[str] = []
    first = 0
    for number, raw in lines:
        line = raw.strip()
        if not parts:
            first = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        yield first, " ".join(p for p in parts if p)
        parts = []


def _is_example(command: str) -> bool:
    if command.startswith("$ "):
        command = command[2:]
    if not command or command.startswith(("#", "keycourier:")):  # a comment, or output shown
        return False
    return bool(_RUNS_KEYCOURIER.search(" " + command)) and not _SYNOPSIS.search(command)


def markdown_examples(path: Path) -> list[Example]:
    found: list[Example] = []
    block: list[tuple[int, str]] | None = None
    lang = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = _FENCE.fullmatch(line)
        if fence and block is None:
            block, lang = [], fence.group(1)
            continue
        if fence and block is not None:
            if lang in _SHELL_FENCES:
                for first, command in _logical(block):
                    text = command[2:] if command.startswith("$ ") else command
                    if _is_example(text):
                        found.append(Example(f"{path.relative_to(ROOT)}:{first}", text))
            block = None
            continue
        if block is not None:
            block.append((number, line))
    return found


def _walk(prefix: str, cmd: click.Command) -> Iterator[tuple[str, click.Command]]:
    yield prefix, cmd
    if isinstance(cmd, click.Group):
        for sub, child in cmd.commands.items():
            yield from _walk(f"{prefix} {sub}", child)


def help_examples() -> list[Example]:
    ctx = click.Context(cli)
    commands: list[tuple[str, click.Command]] = [("keycourier", cli)]
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        commands.extend(_walk(f"keycourier {name}", command))
    found: list[Example] = []
    for path, cmd in commands:
        for text in (cmd.help or "", cmd.epilog or ""):
            lines: list[tuple[int, str]] = []
            taking = False
            for number, line in enumerate(text.splitlines()):
                head = re.match(r"\s*Examples?:\s*(.*)", line)
                if head:
                    taking = True
                    if head.group(1):
                        lines.append((number, head.group(1)))
                    continue
                if taking and not line.strip():
                    taking = False
                elif taking:
                    lines.append((number, line))
            found.extend(
                Example(f"{path} --help", command)
                for _, command in _logical(lines)
                if _is_example(command)
            )
    return found


def all_examples() -> list[Example]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return help_examples() + [e for path in docs for e in markdown_examples(path)]


# Examples that exit non-zero on purpose: exact text -> exit code.
EXPECTED: dict[str, int] = {}

# Examples not run, by exact text, and why.
NOT_RUN: dict[str, str] = {
    "VAULT_ADDR=https://vault:8200 keycourier doctor --role receiver": (
        "names the remote Vault host vault:8200"
    ),
}
NOT_RUN["keycourier serve --socket /run/user/1000/keycourier.sock      # 0600 Unix socket"] = (
    "names /run/user/1000, the runtime directory of user 1000, which this machine lacks"
)
# Examples that run until stopped: started, seen listening, stopped with SIGTERM (exit 0).
_RUNS_UNTIL_STOPPED = re.compile(r"keycourier serve\b")

# docs/rotation.md: the first bundle ingested, then its rotation sealed (placeholders are
# substituted in set-up scripts too; the one ledger plays both sides)
_ROTATION = (
    "keycourier ingest handover.kcb --identity platform.kcid --trust kc1:... "
    "--vault-path handed-over/acme/quickbooks\n"
    "keycourier rotate handover.kcb --client-id ABxxxx... --client-secret-file new-secret.txt "
    "--attested-by 'Jane Doe, CTO' --identity partner.kcid -o rotation.kcb\n"
)

# Shell run before an example, in its directory, for what the lines before it in the
# docs did (exact text -> script).
SETUP: dict[str, str] = {
    'keycourier audit verify-pack evidence.zip --key "$(cat ledger.vkey)"': (
        "keycourier audit pack -o evidence.zip\nkeycourier audit key > ledger.vkey\n"
    ),
    "keycourier audit verify --since ledger-checkpoint.txt": (
        "keycourier audit checkpoint -o ledger-checkpoint.txt\n"
    ),
    "KEYCOURIER_HELPER_URL=http://127.0.0.1:8377 KEYCOURIER_HELPER_KEY_FILE=ci.key "
    "keycourier token --profile ci": (
        "keycourier helper client add ci-runner --profile ci --key-file ci.key\n"
        "keycourier serve --listen 127.0.0.1:8377 2>serve.log &\n"
        "trap 'kill %1; wait' EXIT\n"
        "for _ in $(seq 600); do grep -q 'listening on' serve.log && break; sleep 0.1; done\n"
    ),
    "keycourier helper client revoke ci-runner": (
        "keycourier helper client add ci-runner --profile ci --key-file ci-runner.key\n"
    ),
    'keycourier connection wait "$(jq -r .connection.id created.json)" --profile demo '
    "--entity $ENTITY --timeout 30s --poll-interval 200ms   # prints xero": (
        "keycourier connection create --profile demo --entity $ENTITY --json > created.json\n"
        'curl -sf "$(jq -r .connection.connection_url created.json)" >/dev/null\n'
    ),
    "keycourier ingest rotation.kcb --identity platform.kcid --trust kc1:... "
    "--vault-path handed-over/acme/quickbooks --receipt rotation-receipt.kcr": _ROTATION,
    "keycourier receipt get --vault-path handed-over/acme/quickbooks -o receipt.kcr": (
        "keycourier ingest handover.kcb --identity platform.kcid --trust kc1:... "
        "--vault-path handed-over/acme/quickbooks\n"
    ),
    "keycourier receipt verify rotation-receipt.kcr --bundle rotation.kcb --trust kc1:...": (
        _ROTATION + "keycourier ingest rotation.kcb --identity platform.kcid --trust kc1:... "
        "--vault-path handed-over/acme/quickbooks --receipt rotation-receipt.kcr\n"
    ),
}

# The connection the --help examples name by ID: seeded in the platform stand-in,
# connected to Xero, for the entity they name.
SEEDED_CONNECTION = "9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10"
SEEDED_ENTITY = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
PLATFORM_CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"
PLATFORM_CLIENT_SECRET = "example-client-secret-" + "k" * 20


def not_run_reason(command: str) -> str | None:
    return NOT_RUN.get(command)


# --------------------------------------------------------------------------- the prepared directory


def kc(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return support_cli.kc(*args, env=env, cwd=cwd, timeout=120, program=[str(BIN / "keycourier")])


def base_env(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KEYCOURIER_", "VAULT_", "GITHUB_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(workdir / "home")
    env["XDG_CONFIG_HOME"] = str(workdir / "home" / ".config")
    env["XDG_DATA_HOME"] = str(workdir / "home" / ".local" / "share")
    env["KEYCOURIER_PASSPHRASE"] = PASS
    env["KEYCOURIER_LEDGER"] = str(workdir / "ledger.db")
    return env


@dataclass(frozen=True)
class Prepared:
    dir: Path
    values: dict[str, str]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Identities, keys, a sealed bundle and the input files examples name."""
    d = tmp_path_factory.mktemp("examples-template")
    (d / "home").mkdir()
    env = base_env(d)

    def ok(*args: str) -> str:
        out = kc(*args, cwd=d, env=env)
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    (d / "pass.txt").write_text(PASS + "\n")
    for name in ("partner", "platform"):
        ok("identity", "new", "-o", f"{name}.kcid", "--work-factor", "10")
    shutil.copy(d / "partner.kcid", d / "me.kcid")
    pub = {
        n: json.loads(ok("identity", "show", f"{n}.kcid", "--json"))
        for n in ("partner", "platform")
    }
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    (d / "secret.txt").write_text("".join(secrets.choice(ALNUM) for _ in range(40)) + "\n")
    (d / "new-secret.txt").write_text("".join(secrets.choice(ALNUM) for _ in range(40)) + "\n")
    summary = json.loads(
        ok(
            *("seal", "--platform", "quickbooks", "--client-id", client_id),
            *("--client-secret-file", "secret.txt", "--environment", "production"),
            *("--attested-by", "Test Lead", "--identity", "partner.kcid"),
            *("-r", pub["platform"]["recipient"], "-o", "handover.kcb", "--json"),
        )
    )
    # the platform's receipt of handover.kcb, made on the platform's own ledger
    platform_env = {**env, "KEYCOURIER_LEDGER": str(d / "home" / "platform-ledger.db")}
    made = kc(
        *("open", "handover.kcb", "--identity", "platform.kcid"),
        *("--trust", pub["partner"]["signing_fingerprint"], "-o", "opened.json"),
        *("--receipt", "receipt.kcr"),
        cwd=d,
        env=platform_env,
    )
    assert made.returncode == 0, made.stderr
    (d / "opened.json").unlink()
    ok("identity", "export-age", "platform.kcid", "-o", "platform.agekey")
    ok("age", "keygen", "-o", "key.txt")
    recipient = next(
        line.split(": ", 1)[1]
        for line in (d / "key.txt").read_text().splitlines()
        if line.startswith("# public key: ")
    )
    (d / "team.txt").write_text(recipient + "\n")
    (d / "creds.json").write_text('{"client_id": "example"}\n')
    ok("age", "encrypt", "-r", recipient, "-o", "secret.age", "secret.txt")
    ok("age", "encrypt", "-r", recipient, "-o", "creds.age", "creds.json")
    ok(
        "age",
        "encrypt",
        "--passphrase-file",
        "pass.txt",
        "--work-factor",
        "10",
        "-o",
        "creds-pass.age",
        "creds.json",
    )
    shutil.copy(ROOT / "src" / "keycourier" / "policy" / "handover.toml", d / "strict.toml")
    # what the exec examples run: each fails unless it got what the example says
    scripts = {
        "deploy.sh": 'test -n "${MONITE_TOKEN:-}" && test "$1 $2" = "--stage prod"',
        "needs-vault-too.sh": 'test -n "${VAULT_TOKEN:-}" && test -n "${MONITE_TOKEN:-}"',
    }
    for name, body in scripts.items():
        (d / name).write_text(f"#!/bin/sh\nset -eu\n{body}\n")
        (d / name).chmod(0o755)
    write_self_signed(d / "cert.pem", d / "key.pem")
    (d / "Makefile").write_text('smoke:\n\ttest -n "$$MONITE_TOKEN"\n')
    values = {
        "recipient": pub["platform"]["recipient"],
        "sender_fpr": pub["partner"]["signing_fingerprint"],
        "receiver_fpr": pub["platform"]["signing_fingerprint"],
        "fingerprint": summary["fingerprint"],
        "bundle_id": summary["bundle_id"],
        "client_id": "AB" + "".join(secrets.choice(ALNUM) for _ in range(48)),
    }
    return Prepared(d, values)


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (the TLS example of serve)."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keycourier example")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def substitute(command: str, values: dict[str, str]) -> str:
    """The documented placeholders (module docstring) replaced by real values."""
    out = command
    out = re.sub(r"(policy deny )kc1:0123\.\.\.", rf"\g<1>{values['fingerprint']}", out)
    pinned = values["receiver_fpr"] if "receipt verify" in out else values["sender_fpr"]
    out = re.sub(r"kc1:(?:0123)?\.\.\.", pinned, out)
    out = out.replace("age1...", values["recipient"])
    for placeholder in ("ABxxxx...", "ABc...Z", "AB..."):
        out = out.replace(placeholder, values["client_id"])
    out = out.replace("01J9Z8...", values["bundle_id"])
    return out.replace("KEYCOURIER_PASSPHRASE=...", f"KEYCOURIER_PASSPHRASE={shlex.quote(PASS)}")


def outputs(command: str) -> list[str]:
    """Files the command writes: the values of -o/--output/--key-file and > targets."""
    words = shlex.split(command, comments=True)
    found = []
    for i, word in enumerate(words[:-1]):
        if word in {"-o", "--output", "--key-file", ">"}:
            found.append(words[i + 1])
    found += re.findall(r">\s*([\w.-]+)", command)
    return found


def run_until_stopped(command: str, work: Path, env: dict[str, str], example: Example) -> None:
    """Start it, wait until it says it listens, stop it with SIGTERM: it must exit 0."""
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + command],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "keycourier: token helper listening on ..."
        assert "listening on" in first, f"{example.where}: {command}\n{first}"
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{example.where}: {command}\nexit {proc.returncode}\n{rest}"


def write_config(work: Path, platform: RunningPlatform) -> None:
    """The profiles examples name (ci, prod, demo), at the config file's default place,
    all pointing at the platform stand-in."""
    path = work / "home" / ".config" / "keycourier" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"""
[profiles.{name}]
dialect = "monite"
base_url = "{platform.monite_base}"
environment = "sandbox"
version = "2024-05-25"
client_id_env = "KC_CLIENT_ID"
client_secret_env = "KC_CLIENT_SECRET"
env_name = "MONITE_TOKEN"
"""
            for name in ("ci", "prod", "demo")
        )
    )


def seed_connection(platform: RunningPlatform) -> None:
    now = datetime.now(UTC)
    state = platform.connections
    with state._lock:
        state.connections[SEEDED_CONNECTION] = StandinConnection(
            id=SEEDED_CONNECTION,
            dialect="monite",
            scope_id=SEEDED_ENTITY,
            created_at=now,
            updated_at=now,
            nonce=secrets.token_urlsafe(16),
            status="connected",
            platform="xero",
        )


EXAMPLES = all_examples()


def test_examples_are_found() -> None:
    where = {e.where.split(":")[0].split(" --help")[0] for e in EXAMPLES}
    assert "README.md" in where
    assert "keycourier seal" in where
    assert len(EXAMPLES) > 40


def test_every_not_run_entry_names_an_existing_example() -> None:
    commands = {e.command for e in EXAMPLES}
    assert sorted(set(NOT_RUN) - commands) == []
    assert sorted(set(EXPECTED) - commands) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs_as_printed(
    example: Example,
    prepared: Prepared,
    bao_dev: BaoServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    reason = not_run_reason(example.command)
    if reason is not None:
        pytest.skip(f"not run: {reason}")
    if "| age " in example.command and shutil.which("age") is None:
        pytest.skip("needs the stock age tool on PATH")
    work = tmp_path / "work"
    shutil.copytree(prepared.dir, work)
    command = substitute(example.command, prepared.values)
    for name in outputs(command):
        (work / name).unlink(missing_ok=True)
    if re.search(r"age decrypt --passphrase-file \S+ creds\.age", command):
        shutil.copy(work / "creds-pass.age", work / "creds.age")  # a passphrase file
    platform = start_platform({PLATFORM_CLIENT_ID: PLATFORM_CLIENT_SECRET})
    request.addfinalizer(platform.stop)
    if SEEDED_CONNECTION in command:
        seed_connection(platform)
    write_config(work, platform)
    mount = "ex-" + secrets.token_hex(6)
    hvac.Client(url=bao_dev.addr, token=bao_dev.token).sys.enable_secrets_engine(
        "kv", path=mount, options={"version": "2"}
    )
    env = base_env(work)
    env.update(VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token, KEYCOURIER_VAULT_MOUNT=mount)
    env.update(
        KC_CLIENT_ID=PLATFORM_CLIENT_ID,
        KC_CLIENT_SECRET=PLATFORM_CLIENT_SECRET,
        GITHUB_ENV=str(work / "github.env"),  # an example marked "in GitHub Actions"
        ENTITY=str(uuid.uuid4()),
    )
    if _RUNS_UNTIL_STOPPED.match(command):
        run_until_stopped(command, work, env, example)
        return
    setup = substitute(SETUP.get(example.command, ""), prepared.values)
    out = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + setup + command],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    want = EXPECTED.get(example.command, 0)
    assert out.returncode == want, (
        f"{example.where}: {command}\nexit {out.returncode}\n{out.stdout[-2000:]}\n"
        f"{out.stderr[-2000:]}"
    )
    for name in outputs(command):
        assert (work / name).exists(), f"{example.where}: {name} was not written"
    for printed in re.findall(r"#\s*prints (\S+)", command):  # "... # prints xero"
        assert printed in out.stdout, f"{example.where}: {command}\n{out.stdout}"
