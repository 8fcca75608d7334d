"""Bundles through ordinary transports, made by the real tools.

Each transform is what a real program does to text: coreutils ``fold`` and
``fmt``, ``sed`` quoting, indenting and trailing spaces, ``unix2dos`` (or
``sed`` when it is not installed), a BOM, a ``format=flowed`` mail body and a
whole message rendered and parsed back by Python's ``email`` package. After
each, ``keycourier inspect`` and ``keycourier open`` (real subprocesses) must
give exactly what they give on the original. The property test then mixes
the transforms with one altered character inside the bundle: ``open`` must
always say exit 4 (never 0, never 1).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycourier import age, bundle
from keycourier.bundle import text as bundle_text
from keycourier.bundle.canonical import canonical_json
from keycourier.bundle.core import SIGNATURE_CONTEXT
from keycourier.bundle.model import INTEGRITY_MESSAGE
from keycourier.cli.main import main
from keycourier.redact import Secret
from tests.support.bundles import encrypt_for, with_payload
from tests.support.fuzz import FUZZ_EXAMPLES
from tests.support.openbao import BaoServer

PASS = "test passphrase 123"
CLIENT_ID = "AB" + "Kq7Rr2mZ0pX8wVt3Lb6Nc1Yd9Fh4Gs5Jk0Qa2We7Ru3Ty8Ui1Op6As4Df9Gh2Jk5Lz"[:48]
SECRET = "Zr8Xw2Qp5Lm9Tn3Vb7Kc1Hd6Jf4Gs0Ya2Ue8Io5Pa"[:40]


@dataclass(frozen=True, slots=True)
class Handover:
    dir: Path
    env: dict[str, str]
    text: bytes
    trust: str
    inspected: dict[str, object]
    opened: dict[str, object]


def _run(
    h_env: dict[str, str], cwd: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "keycourier", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=h_env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def handover(tmp_path_factory: pytest.TempPathFactory) -> Handover:
    d = tmp_path_factory.mktemp("transport")
    home = d / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "KEYCOURIER_PASSPHRASE": PASS,
    }
    env.pop("VAULT_ADDR", None)
    for name in ("partner", "platform"):
        out = _run(env, d, "identity", "new", "-o", f"{name}.kcid", "--work-factor", "10")
        assert out.returncode == 0, out.stderr
    pub = {
        n: json.loads(_run(env, d, "identity", "show", f"{n}.kcid", "--json").stdout)
        for n in ("partner", "platform")
    }
    (d / "secret.txt").write_text(SECRET + "\n")
    (d / "pass.txt").write_text(PASS + "\n")
    sealed = _run(
        env,
        d,
        "seal",
        "--platform",
        "quickbooks",
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        "secret.txt",
        "--environment",
        "production",
        "--attested-by",
        "Test Lead",
        "--identity",
        "partner.kcid",
        "-r",
        pub["platform"]["recipient"],
        "--partner",
        "Acme Ltd, a partner whose name is long enough to matter",
        "-o",
        "handover.kcb",
    )
    assert sealed.returncode == 0, sealed.stderr
    text = (d / "handover.kcb").read_bytes()
    h = Handover(d, env, text, pub["partner"]["signing_fingerprint"], {}, {})
    inspected, opened = _inspect_and_open(h, "original", text)
    assert inspected[0] == 0, inspected
    assert opened[0] == 0, opened
    return Handover(d, env, text, h.trust, inspected[1], opened[1])


def _inspect_and_open(
    h: Handover, name: str, text: bytes
) -> tuple[tuple[int, dict[str, object], bytes], tuple[int, dict[str, object], bytes]]:
    path = h.dir / f"{name}.kcb"
    path.write_bytes(text)
    inspected = _run(h.env, h.dir, "inspect", path.name, "--json")
    creds = h.dir / f"{name}.creds.json"
    opened = _run(
        h.env,
        h.dir,
        "open",
        path.name,
        "--identity",
        "platform.kcid",
        "--trust",
        h.trust,
        "-o",
        creds.name,
        "--json",
        "--allow-reopen",
    )
    return (
        (
            inspected.returncode,
            json.loads(inspected.stdout) if inspected.returncode == 0 else {},
            inspected.stderr,
        ),
        (
            opened.returncode,
            json.loads(creds.read_text()) if opened.returncode == 0 else {},
            opened.stderr,
        ),
    )


# -- the transforms ------------------------------------------------------------------


def tool(*argv: str) -> Callable[[bytes], bytes]:
    def run(text: bytes) -> bytes:
        return subprocess.run(argv, input=text, capture_output=True, check=True).stdout

    run.__name__ = " ".join(argv)
    return run


def crlf(text: bytes) -> bytes:
    if shutil.which("unix2dos"):
        return tool("unix2dos")(text)
    return tool("sed", "s/$/\r/")(text)


def bom(text: bytes) -> bytes:
    return b"\xef\xbb\xbf" + text


def flowed_lines(text: str, width: int) -> list[str]:
    """RFC 3676 with DelSp=yes: a long line is cut, each piece but the last ends in a space."""
    out: list[str] = []
    for line in text.split("\n"):
        pieces = textwrap.wrap(line, width - 1, break_long_words=True, drop_whitespace=False)
        out.extend(p + " " for p in pieces[:-1])
        out.append(pieces[-1] if pieces else "")
    return out


def flowed_mail(text: bytes) -> bytes:
    """A format=flowed message body as a client that does not decode flowed shows it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = "handover"
    body = "\n".join(flowed_lines(text.decode("utf-8"), 40))
    cte = "7bit" if body.isascii() else "8bit"  # a BOM pasted in first is not ASCII
    msg.set_content(body, cte=cte, params={"format": "flowed", "delsp": "yes"})
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Content-Type"].params["format"] == "flowed"
    return str(parsed.get_content()).encode("utf-8")


def flowed_joined(text: bytes) -> bytes:
    """A flowed body decoded by a client that joins soft breaks but keeps the space."""
    lines = flowed_mail(text).decode("utf-8").split("\n")
    joined: list[str] = []
    carry = ""
    for line in lines:
        if line.endswith(" "):
            carry += line
        else:
            joined.append(carry + line)
            carry = ""
    return "\n".join(joined).encode("utf-8")


def email_roundtrip(text: bytes) -> bytes:
    """A whole message with the bundle in prose, rendered (SMTP policy) and parsed back."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "partner@example.com"
    msg["To"] = "platform@example.com"
    msg["Subject"] = "QuickBooks production keys"
    body = "Hello,\n\nhere is the handover bundle:\n\n" + text.decode("utf-8") + "\n-- \nJane\n"
    msg.set_content(body)
    raw = msg.as_bytes()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return str(parsed.get_content()).encode("utf-8")


def chain(*steps: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def run(text: bytes) -> bytes:
        for step in steps:
            text = step(text)
        return text

    return run


TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "fold-76": tool("fold", "-w", "76"),
    "fold-40": tool("fold", "-w", "40"),
    "fmt": tool("fmt"),
    "quote": tool("sed", "s/^/> /"),
    "quote-tight": tool("sed", "s/^/>/"),
    "quote-nested": chain(tool("sed", "s/^/> /"), tool("sed", "s/^/> /")),
    "indent-4": tool("sed", "s/^/    /"),
    "trailing-spaces": tool("sed", "s/$/  /"),
    "crlf": crlf,
    "bom": bom,
    "flowed": flowed_mail,
    "flowed-joined": flowed_joined,
    "email": email_roundtrip,
    "fold-40+quote": chain(tool("fold", "-w", "40"), tool("sed", "s/^/> /")),
    "fmt+indent": chain(tool("fmt"), tool("sed", "s/^/    /")),
    "flowed+quote+crlf": chain(flowed_mail, tool("sed", "s/^/> /"), crlf),
    "bom+crlf+trailing": chain(bom, tool("sed", "s/$/  /"), crlf),
    "email+quote-nested+fold-76": chain(
        email_roundtrip, tool("sed", "s/^/> > /"), tool("fold", "-w", "76")
    ),
}


def test_the_original_has_no_line_over_64(handover: Handover) -> None:
    lines = handover.text.split(b"\n")
    assert max(len(line) for line in lines) == 64
    assert lines[0] == b"keycourier-bundle/v2"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_a_transported_bundle_inspects_and_opens_the_same(handover: Handover, name: str) -> None:
    text = TRANSFORMS[name](handover.text)
    # fold -w 76 leaves version 2 as it is: no line is longer than 64
    assert (text == handover.text) == (name == "fold-76")
    inspected, opened = _inspect_and_open(handover, name, text)
    assert inspected[0] == 0, inspected[2]
    assert inspected[1] == handover.inspected
    assert opened[0] == 0, opened[2]
    assert opened[1] == handover.opened
    assert opened[1]["client_secret"] == SECRET


def test_the_old_format_fails_where_the_new_one_survives(handover: Handover) -> None:
    """What transport did to a version-1 bundle (one 1,000-character manifest line)."""
    v1 = Path(__file__).resolve().parents[1] / "vectors" / "bundle-v1" / "handover-v1.kcb"
    folded = tool("fold", "-w", "76")(v1.read_bytes())
    out = _run(handover.env, handover.dir, "inspect", "-", stdin=folded)
    assert out.returncode == 4
    assert b"keycourier: error: the bundle is damaged at line 4: expected" in out.stderr


def test_the_v1_fixture_inspects_and_opens_through_the_cli(handover: Handover) -> None:
    """A bundle of format version 1, as the version-1 writer sealed it, quoted in a reply."""
    v1 = Path(__file__).resolve().parents[1] / "vectors" / "bundle-v1"
    expected = json.loads((v1 / "expected.json").read_text())
    ident = handover.dir / "v1-receiver.kcid"
    ident.write_bytes((v1 / "receiver.kcid").read_bytes())
    ident.chmod(0o600)
    shipped = Path(__file__).resolve().parents[2] / "policies" / "handover.toml"
    policy = handover.dir / "long-lifetime.toml"  # the fixture is valid for 100 years
    policy.write_text(shipped.read_text().replace('max = "14d"', 'max = "40000d"'))
    assert 'max = "40000d"' in policy.read_text()
    quoted = TRANSFORMS["quote"]((v1 / "handover-v1.kcb").read_bytes())
    (handover.dir / "v1.kcb").write_bytes(quoted)
    inspected = _run(handover.env, handover.dir, "inspect", "v1.kcb", "--json")
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["manifest"]["format"] == "keycourier-bundle/v1"
    assert info["manifest"]["bundle_id"] == expected["bundle_id"]
    env = {**handover.env, "KEYCOURIER_PASSPHRASE": expected["passphrase"]}
    opened = _run(
        env,
        handover.dir,
        "open",
        "v1.kcb",
        "--identity",
        ident.name,
        "--trust",
        expected["sender_fingerprint"],
        "--policy",
        policy.name,
        "-o",
        "v1.creds.json",
        "--json",
    )
    assert opened.returncode == 0, opened.stderr
    creds = json.loads((handover.dir / "v1.creds.json").read_text())
    assert creds["client_id"] == expected["client_id"]
    assert creds["client_secret"] == expected["client_secret"]


# -- one altered character, whatever the transport ------------------------------------

CHEAP = ["quote", "indent-4", "trailing-spaces", "crlf", "bom", "fold-40", "fmt", "flowed"]
ALPHABET = [chr(c) for c in range(0x21, 0x7F)]


def _bundle_span(text: bytes) -> tuple[int, int]:
    start = text.index(b"keycourier-bundle/")
    start = text.rfind(b"\n", 0, start) + 1  # the whole first line, prefix included
    end = text.rindex(b"FILE-----") + len(b"FILE-----")
    return start, end


@settings(
    max_examples=min(FUZZ_EXAMPLES, 120),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(st.sampled_from(CHEAP), min_size=0, max_size=2),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    new=st.sampled_from(ALPHABET),
)
@example(names=["quote"], where=0.0, new="x")  # the prefix of the first line
@example(names=[], where=0.0, new="K")  # the version line
@example(names=["fold-40"], where=0.999, new="-")  # the END line
def test_one_altered_character_is_always_exit_4(
    handover: Handover, tmp_path: Path, names: list[str], where: float, new: str
) -> None:
    text = chain(*(TRANSFORMS[n] for n in names))(handover.text)
    start, end = _bundle_span(text)
    visible = [i for i in range(start, end) if text[i] not in b" \t\r\n"]
    i = visible[int(where * len(visible))]
    if chr(text[i]) == new:
        new = "A" if new != "A" else "B"
    altered = text[:i] + new.encode("ascii") + text[i + 1 :]
    assert _open_in_process(handover, tmp_path, altered) == 4
    assert not (tmp_path / "creds.json").exists()


def _open_in_process(handover: Handover, tmp_path: Path, text: bytes) -> object:
    """``keycourier open`` through ``main()`` (the CLI's one error handler); its exit code."""
    path = tmp_path / "altered.kcb"
    path.write_bytes(text)
    (tmp_path / "pass.txt").write_text(PASS + "\n")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "open",
                str(path),
                "--identity",
                str(handover.dir / "platform.kcid"),
                "--passphrase-file",
                str(tmp_path / "pass.txt"),
                "--trust",
                handover.trust,
                "-o",
                str(tmp_path / "creds.json"),
                "--json",
                "--allow-reopen",
            ]
        )
    return done.value.code


@pytest.mark.parametrize("names", [[], ["fmt", "quote"], ["flowed", "crlf"]])
def test_the_in_process_open_opens_an_unaltered_bundle(
    handover: Handover, tmp_path: Path, names: list[str]
) -> None:
    """The property above is not vacuous: the same harness opens the bundle unaltered."""
    text = chain(*(TRANSFORMS[n] for n in names))(handover.text)
    assert _open_in_process(handover, tmp_path, text) == 0
    assert json.loads((tmp_path / "creds.json").read_text())["client_id"] == CLIENT_ID


# -- what inspect, open and ingest say -------------------------------------------------


def _sender(h: Handover) -> bundle.KeycourierIdentity:
    return bundle.read_identity(h.dir / "partner.kcid", Secret(PASS))


def _platform_recipient(h: Handover) -> str:
    return str(
        json.loads(_run(h.env, h.dir, "identity", "show", "platform.kcid", "--json").stdout)[
            "recipient"
        ]
    )


def _with_hidden_recipient(h: Handover) -> bytes:
    """A bundle whose payload has a second stanza the signed manifest does not list."""
    sealed = bundle.parse(h.text)
    creds = bundle.Credentials("quickbooks", CLIENT_ID, Secret(SECRET))
    extra = age.X25519Identity.generate().recipient()
    receiver = age.parse_recipient(_platform_recipient(h))
    binary = encrypt_for(sealed.manifest, creds, [receiver, extra])
    manifest = canonical_json(with_payload(sealed.manifest.to_dict(), binary))
    signature = _sender(h).sign(SIGNATURE_CONTEXT + manifest)
    return bundle_text.write(manifest, signature, binary)


def _dated_in_the_future(h: Handover) -> bytes:
    return bundle.seal(
        bundle.Credentials("quickbooks", CLIENT_ID, Secret(SECRET)),
        sender=_sender(h),
        recipients=[_platform_recipient(h)],
        policy=bundle.parse(h.text).manifest.policy,
        lifetime=timedelta(days=7),
        environment="production",
        attestation=bundle.Attestation("Test Lead", "production keys"),
        now=datetime.now(UTC) + timedelta(days=2),
    ).text


def _other_signature(h: Handover) -> bytes:
    parsed = bundle.parse(h.text)
    return bundle_text.write(parsed.manifest_bytes, bytes(64), parsed.payload)


def _other_payload_byte(h: Handover) -> bytes:
    at = h.text.index(b"\n-----END AGE") - 10
    return h.text[:at] + (b"B" if h.text[at : at + 1] == b"A" else b"A") + h.text[at + 1 :]


def _damaged_line_10(h: Handover) -> bytes:
    lines = h.text.split(b"\n")
    lines[9] = lines[9][:5] + b"!" + lines[9][6:]
    return b"> quoted\n" + b"\n".join(b"> " + line for line in lines)


def _unreadable_manifest(h: Handover) -> bytes:
    parsed = bundle.parse(h.text)
    return bundle_text.write(b'{"format":"keycourier-bundle/v2"}', parsed.signature, parsed.payload)


def _file(name: str) -> Callable[[Handover], bytes]:
    return lambda h: (h.dir / name).read_bytes()


def _age_file(h: Handover) -> bytes:
    out = _run(h.env, h.dir, "bundle", "extract-age", "handover.kcb")
    assert out.returncode == 0, out.stderr
    return out.stdout


def _age_identity(h: Handover) -> bytes:
    out = _run(h.env, h.dir, "identity", "export-age", "platform.kcid", "-o", "p.agekey")
    assert out.returncode == 0, out.stderr
    return (h.dir / "p.agekey").read_bytes()


STRUCTURAL: dict[str, tuple[Callable[[Handover], bytes], str]] = {
    "identity": (
        _file("platform.kcid"),
        "not a keycourier bundle: this is a keycourier identity file",
    ),
    "age-file": (
        _age_file,
        "not a keycourier bundle: this is an age file (use `keycourier age decrypt`)",
    ),
    "age-identity": (_age_identity, "not a keycourier bundle: this is an age identity"),
    "receipt": (
        lambda h: b"keycourier-receipt/v1\n",
        "not a keycourier bundle: this is a keycourier receipt",
    ),
    "prose": (lambda h: b"Dear partner,\nthanks!\n", "not a keycourier bundle"),
    "version": (
        lambda h: h.text.replace(b"keycourier-bundle/v2", b"keycourier-bundle/v9"),
        "unsupported bundle format version 'keycourier-bundle/v9'",
    ),
    "damaged": (
        _damaged_line_10,
        "the bundle is damaged at line 11: a character that is not base64 in the manifest block",
    ),
    "manifest": (
        _unreadable_manifest,
        "the bundle's manifest is not readable: missing field(s) attestation, bundle_id",
    ),
    "hidden-recipient": (
        _with_hidden_recipient,
        "the age payload's recipients do not match the manifest: the payload has 2 recipient "
        "stanza(s) (X25519, X25519), the manifest lists 1 (X25519)",
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_structural_faults_are_named_by_inspect_and_open(handover: Handover, case: str) -> None:
    make, message = STRUCTURAL[case]
    (inspected, _, inspect_err), (opened, _, open_err) = _inspect_and_open(
        handover, f"bad-{case}", make(handover)
    )
    assert inspected == 4
    assert opened == 4
    for err in (inspect_err, open_err):
        assert err.startswith(b"keycourier: error: " + message.encode()), err
        assert b"Traceback" not in err
    assert not (handover.dir / f"bad-{case}.creds.json").exists()


@pytest.mark.parametrize(
    ("case", "make", "message"),
    [
        ("signature", _other_signature, "the bundle's signature does not verify"),
        ("digest", _other_payload_byte, "the payload digest does not match the manifest"),
    ],
)
def test_cryptographic_faults_are_named_by_inspect_only(
    handover: Handover, case: str, make: Callable[[Handover], bytes], message: str
) -> None:
    (inspected, _, inspect_err), (opened, _, open_err) = _inspect_and_open(
        handover, f"bad-{case}", make(handover)
    )
    assert inspected == 4
    assert f"keycourier: error: {message}\n".encode() in inspect_err
    assert opened == 4
    assert open_err.startswith(b"keycourier: error: " + INTEGRITY_MESSAGE.encode())


def test_a_bundle_dated_in_the_future_warns_in_inspect_and_is_refused_by_open(
    handover: Handover,
) -> None:
    (inspected, info, inspect_err), (opened, _, open_err) = _inspect_and_open(
        handover, "future", _dated_in_the_future(handover)
    )
    assert inspected == 0
    assert info["created_in_future"] is True
    assert b"keycourier: warning: the bundle was created at " in inspect_err
    assert b"in the future" in inspect_err
    assert opened == 7
    assert b"in the future (more than 5 minutes after this machine's" in open_err


def test_ingest_reads_transported_bundles_and_names_structural_faults(
    handover: Handover, bao_dev: BaoServer
) -> None:
    env = {**handover.env, "VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": bao_dev.token}
    env["KEYCOURIER_LEDGER"] = str(handover.dir / "ingest-ledger.db")

    def ingest(name: str, text: bytes) -> subprocess.CompletedProcess[bytes]:
        (handover.dir / name).write_bytes(text)
        args = ["ingest", name, "--identity", "platform.kcid", "--trust", handover.trust]
        path = f"handed-over/transport-{secrets.token_hex(4)}/quickbooks"
        return subprocess.run(
            [sys.executable, "-m", "keycourier", *args, "--vault-path", path, "--json"],
            cwd=handover.dir,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )

    damaged = ingest("i-damaged.kcb", _damaged_line_10(handover))
    assert damaged.returncode == 4
    assert damaged.stderr.startswith(b"keycourier: error: the bundle is damaged at line 11:")
    tampered = ingest("i-tampered.kcb", _other_payload_byte(handover))
    assert tampered.returncode == 4
    assert tampered.stderr.startswith(b"keycourier: error: " + INTEGRITY_MESSAGE.encode())
    hidden = ingest("i-hidden.kcb", _with_hidden_recipient(handover))
    assert hidden.returncode == 4
    assert b"recipients do not match the manifest" in hidden.stderr
    quoted = ingest("i-quoted.kcb", TRANSFORMS["flowed+quote+crlf"](handover.text))
    assert quoted.returncode == 0, quoted.stderr
    assert json.loads(quoted.stdout)["kv_version"] == 1
