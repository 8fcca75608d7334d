"""keycourier demo: the whole handover, end to end, on this machine only.

Everything happens in a temporary directory with its own HOME, so your real
config, ledger and keys are never touched. Servers it starts (OpenBao dev
server, the platform stand-in) listen on free 127.0.0.1 ports and are
stopped by PID at the end.
"""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KC = str(Path(sys.executable).parent / "keycourier")
sys.path.insert(0, str(ROOT))  # for tests.support (local stand-ins, OpenBao launcher)


def say(text: str) -> None:
    print("\n" + textwrap.fill(text, 100), flush=True)


def show_cmd(args: Sequence[str]) -> None:
    print("  $ keycourier " + " ".join(args), flush=True)


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        home = work / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "KEYCOURIER_PASSPHRASE": "demo passphrase " + secrets.token_hex(4),
        }
        for var in ("VAULT_ADDR", "VAULT_TOKEN", "KEYCOURIER_CONFIG", "KEYCOURIER_HELPER_URL"):
            self.env.pop(var, None)

    def kc(
        self, *args: str, expect: int = 0, stdin: bytes | None = None, quiet: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        show_cmd(args)
        out = subprocess.run(
            [KC, *args], input=stdin, capture_output=True, env=self.env, cwd=self.work,
            check=False, timeout=120,
        )
        if not quiet:
            for stream in (out.stdout, out.stderr):
                text = stream.decode(errors="replace").rstrip()
                if text:
                    print(textwrap.indent(text, "    "), flush=True)
        if out.returncode != expect:
            raise SystemExit(
                f"demo: step failed: expected exit {expect}, got {out.returncode}"
            )
        return out


def random_qbo_key() -> tuple[str, str]:
    alnum = string.ascii_letters + string.digits
    return (
        "AB" + "".join(secrets.choice(alnum) for _ in range(48)),
        "".join(secrets.choice(alnum) for _ in range(40)),
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keycourier-demo-") as tmp:
        work = Path(tmp)
        d = Demo(work)
        say("1. The partner (sender) and the platform team (receiver) each make an identity: an "
            "age key for encryption and an Ed25519 key for signing, stored 0600 and encrypted "
            "with a passphrase (here from KEYCOURIER_PASSPHRASE).")
        d.kc("identity", "new", "-o", "partner.kcid", "--work-factor", "15")
        d.kc("identity", "new", "-o", "platform.kcid", "--work-factor", "15")
        platform = d.kc("identity", "show", "platform.kcid", "--json", quiet=True)
        partner = d.kc("identity", "show", "partner.kcid", "--json", quiet=True)
        import json

        platform_pub = json.loads(platform.stdout)
        partner_pub = json.loads(partner.stdout)
        print(f"    platform recipient: {platform_pub['recipient']}")
        print(f"    partner signing fingerprint: {partner_pub['signing_fingerprint']}")

        client_id, client_secret = random_qbo_key()
        secret_file = work / "qbo-secret.txt"
        secret_file.write_text(client_secret + "\n")
        secret_file.chmod(0o600)
        say("2. The partner checks its production QuickBooks key against the handover policy "
            "(the secret is read from a 0600 file, never from the command line).")
        d.kc("check", "--platform", "quickbooks", "--client-id", client_id,
             "--client-secret-file", "qbo-secret.txt", "--environment", "production",
             "--attested-by", "Jane Doe, CTO of Acme")

        say("3. A sandbox key is refused: here the partner's context says its API base is "
            "Intuit's sandbox host. Exit code 7 (policy), no secret printed.")
        d.kc("check", "--platform", "quickbooks", "--client-id", client_id,
             "--client-secret-file", "qbo-secret.txt", "--environment", "production",
             "--attested-by", "Jane Doe, CTO of Acme",
             "--api-base", "https://sandbox-quickbooks.api.intuit.com", expect=7)

        say("4. The partner seals the key for the platform: a signed, encrypted text bundle "
            "that can travel through a password manager or e-mail.")
        d.kc("seal", "--platform", "quickbooks", "--client-id", client_id,
             "--client-secret-file", "qbo-secret.txt", "--environment", "production",
             "--attested-by", "Jane Doe, CTO of Acme", "--partner", "Acme Ltd",
             "--identity", "partner.kcid", "-r", platform_pub["recipient"],
             "--expires-in", "7d", "-o", "handover.kcb")
        text = (work / "handover.kcb").read_text()
        assert client_secret not in text, "the secret must not appear in the bundle text"
        print(f"    handover.kcb: {len(text)} bytes of ASCII; the secret does not appear in it")

        say("5. Anyone can inspect the public manifest without a key.")
        d.kc("inspect", "handover.kcb")

        say("6. A tampered copy and an untrusted sender are refused with the same integrity "
            "error (exit 4); nothing is released.")
        tampered = text.replace('"partner":"Acme Ltd"', '"partner":"Evil Ltd"')
        (work / "tampered.kcb").write_text(tampered)
        d.kc("open", "tampered.kcb", "--identity", "platform.kcid",
             "--trust", partner_pub["signing_fingerprint"], "-o", "creds.json", expect=4)
        d.kc("open", "handover.kcb", "--identity", "platform.kcid",
             "--trust", platform_pub["signing_fingerprint"], "-o", "creds.json", expect=4)
        assert not (work / "creds.json").exists()

        say("7. The platform opens the genuine bundle from the pinned partner key: signature, "
            "payload digest, decryption, inner binding, expiry and its own policy all pass; "
            "the credentials land in a 0600 file.")
        d.kc("open", "handover.kcb", "--identity", "platform.kcid",
             "--trust", partner_pub["signing_fingerprint"], "-o", "creds.json", "--json")
        creds = json.loads((work / "creds.json").read_text())
        assert creds["client_secret"] == client_secret
        mode = oct((work / "creds.json").stat().st_mode & 0o777)
        print(f"    creds.json mode {mode}; client secret matches what the partner sealed")

        say("8. Opening it a second time is refused (single use), unless --allow-reopen.")
        d.kc("open", "handover.kcb", "--identity", "platform.kcid",
             "--trust", partner_pub["signing_fingerprint"], "-o", "creds2.json", expect=7)

        say("Done. Every step above ran for real on this machine; the bundle is a standard age "
            "v1 payload under a signed manifest (docs/bundle-format.md).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
