"""keycourier demo: the whole handover, end to end, on this machine only.

Everything happens in a temporary directory with its own HOME, so your real
config, ledger and keys are never touched. Servers it starts (OpenBao dev
server, the platform stand-in) listen on free 127.0.0.1 ports and are
stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
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


def show_cmd(side: str, args: Sequence[str]) -> None:
    """Print the command as it can be pasted into a shell (shell-quoted), after a prompt
    naming the side; run it in the demo's directory with that side's HOME."""
    print(f"  [{side}]$ " + shlex.join(["keycourier", *args]), flush=True)


class Side:
    """One machine: its own HOME (config, ledger, caches), sharing the work directory."""

    def __init__(self, name: str, work: Path, passphrase: str) -> None:
        self.name = name
        self.work = work
        home = work / f"home-{name}"
        home.mkdir()
        self.home = home
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "KEYCOURIER_PASSPHRASE": passphrase,
        }
        for var in (
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "KEYCOURIER_CONFIG",
            "KEYCOURIER_HELPER_URL",
            "KEYCOURIER_LEDGER",
            "KEYCOURIER_POLICY",
        ):
            self.env.pop(var, None)

    def twin(self, name: str) -> Side:
        """Another machine of the same team: same passphrase and Vault, its own (empty) HOME
        and ledger."""
        other = Side(name, self.work, self.env["KEYCOURIER_PASSPHRASE"])
        for var in ("VAULT_ADDR", "VAULT_TOKEN"):
            if var in self.env:
                other.env[var] = self.env[var]
        return other

    def kc(
        self, *args: str, expect: int = 0, stdin: bytes | None = None, quiet: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        show_cmd(self.name, args)
        out = subprocess.run(
            [KC, *args],
            input=stdin,
            capture_output=True,
            env=self.env,
            cwd=self.work,
            check=False,
            timeout=120,
        )
        if not quiet:
            for stream in (out.stdout, out.stderr):
                text = stream.decode(errors="replace").rstrip()
                if text:
                    print(textwrap.indent(text, "    "), flush=True)
        if out.returncode != expect:
            raise SystemExit(f"demo: step failed: expected exit {expect}, got {out.returncode}")
        return out


def random_qbo_key() -> tuple[str, str]:
    alnum = string.ascii_letters + string.digits
    return (
        "AB" + "".join(secrets.choice(alnum) for _ in range(48)),
        "".join(secrets.choice(alnum) for _ in range(40)),
    )


def main() -> int:

    from tests.support.openbao import start_dev_server

    with tempfile.TemporaryDirectory(prefix="keycourier-demo-") as tmp:
        work = Path(tmp)
        say(
            "0. The partner and the platform are two organisations: each gets its own OpenBao "
            "dev server (in memory, 127.0.0.1, a free port), its own HOME with its own ledger "
            "and identity, and they share nothing but the files they hand each other. Both "
            "servers are stopped, by their PIDs, when the demo ends."
        )
        servers: list[object] = []
        try:
            partner_bao = start_dev_server(work / "bao-partner")
            servers.append(partner_bao)
            platform_bao = start_dev_server(work / "bao-platform")
            servers.append(platform_bao)
            print(f"    partner's OpenBao at {partner_bao.addr} (pid {partner_bao.pid})")
            print(f"    platform's OpenBao at {platform_bao.addr} (pid {platform_bao.pid})")
            for bao in (partner_bao, platform_bao):
                # the documented setting: every write to the mount must use check-and-set
                bao.bao("write", "secret/config", "cas_required=true")
            print(
                f"    Commands run in {work} with HOME={work}/home-SIDE, each side's own "
                "VAULT_ADDR and VAULT_TOKEN, and its identity's passphrase in "
                "KEYCOURIER_PASSPHRASE."
            )
            partner = Side("partner", work, "partner passphrase " + secrets.token_hex(4))
            platform = Side("platform", work, "platform passphrase " + secrets.token_hex(4))
            for side, bao in ((partner, partner_bao), (platform, platform_bao)):
                side.env["VAULT_ADDR"] = bao.addr
                side.env["VAULT_TOKEN"] = bao.token  # the dev root token: demo only
            run_handover(work, partner, platform)
            run_token_and_connection(work, partner, partner_bao.addr, partner_bao.token, servers)
            run_auditor(platform)
        finally:
            for server in reversed(servers):
                server.stop()  # type: ignore[attr-defined]
        say(
            "Done. Every step above ran for real on this machine: real age v1 encryption, "
            "Ed25519 signatures, a real SQLite ledger and a real OpenBao per side, real HTTP on "
            "127.0.0.1. Only the platform API (token and accounting-connection endpoints) was a "
            "local stand-in, because the real one is not reachable from here."
        )
    return 0


def run_handover(work: Path, partner: Side, platform: Side) -> None:

    say(
        "1. The partner and the platform team each make an identity: an age key for "
        "encryption and an Ed25519 key for signing, stored 0600 and encrypted with a "
        "passphrase (here from KEYCOURIER_PASSPHRASE; work factor lowered to 15 for speed)."
    )
    partner.kc("identity", "new", "-o", "partner.kcid", "--work-factor", "15")
    platform.kc("identity", "new", "-o", "platform.kcid", "--work-factor", "15")
    platform_pub = json.loads(
        platform.kc("identity", "show", "platform.kcid", "--json", quiet=True).stdout
    )
    partner_pub = json.loads(
        partner.kc("identity", "show", "partner.kcid", "--json", quiet=True).stdout
    )
    print(f"    platform recipient: {platform_pub['recipient']}")
    print(
        f"    partner signing fingerprint (pinned by the platform out of band): "
        f"{partner_pub['signing_fingerprint']}"
    )

    client_id, client_secret = random_qbo_key()
    secret_file = work / "qbo-secret.txt"
    secret_file.write_text(client_secret + "\n")
    secret_file.chmod(0o600)
    common = [
        "--platform",
        "quickbooks",
        "--client-id",
        client_id,
        "--client-secret-file",
        "qbo-secret.txt",
        "--environment",
        "production",
        "--attested-by",
        "Jane Doe, CTO of Acme",
    ]
    say(
        "2. The partner checks its production QuickBooks key against the handover policy "
        "(the secret is read from a 0600 file, never from the command line)."
    )
    checked = json.loads(partner.kc("check", *common, "--json", quiet=True).stdout)
    print(
        f"    verdict: {checked['verdict']} ({len(checked['findings'])} rules; "
        "see 'keycourier check --json' for the full report)"
    )

    say(
        "3. A sandbox key is refused: the partner's context says its API base is Intuit's "
        "sandbox host. Exit code 7 (policy); only the rejected rule and its hint are shown here."
    )
    out = partner.kc(
        "check",
        *common,
        "--api-base",
        "https://sandbox-quickbooks.api.intuit.com",
        "--json",
        expect=7,
        quiet=True,
    )
    report = json.loads(out.stdout)
    for f in report["findings"]:
        if f["effect"] == "reject":
            print(f"    REJECT {f['rule']}: {f['message']}\n      hint: {f['hint']}")

    say(
        "4. The partner seals the key for the platform: a signed, encrypted text bundle that "
        "can travel through a password manager or e-mail. The event goes to the partner's "
        "ledger and to Vault (write-once record)."
    )
    partner.kc(
        "seal",
        *common,
        "--partner",
        "Acme Ltd",
        "--identity",
        "partner.kcid",
        "-r",
        platform_pub["recipient"],
        "--expires-in",
        "7d",
        "-o",
        "handover.kcb",
    )
    text = (work / "handover.kcb").read_text()
    if client_secret in text:
        raise SystemExit("demo: step failed: the secret appears in the bundle text")
    bundle_id = json.loads(partner.kc("inspect", "handover.kcb", "--json", quiet=True).stdout)[
        "manifest"
    ]["bundle_id"]
    print(f"    handover.kcb: {len(text)} bytes of ASCII; the secret does not appear in it")

    say("5. Anyone can inspect the public manifest without a key.")
    platform.kc("inspect", "handover.kcb")

    say(
        "6. A tampered copy and an untrusted sender are refused with the same integrity error "
        "(exit 4); nothing is released."
    )
    lines = text.split("\n")
    at = lines.index("-----BEGIN AGE ENCRYPTED FILE-----") + 2  # a line of the ciphertext
    flipped = "B" if lines[at][10] != "B" else "C"
    lines[at] = lines[at][:10] + flipped + lines[at][11:]
    (work / "tampered.kcb").write_text("\n".join(lines))  # one character of the payload
    trust = ["--trust", partner_pub["signing_fingerprint"]]
    platform.kc(
        "open", "tampered.kcb", "--identity", "platform.kcid", *trust, "-o", "creds.json", expect=4
    )
    platform.kc(
        "open",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        platform_pub["signing_fingerprint"],
        "-o",
        "creds.json",
        expect=4,
    )
    if (work / "creds.json").exists():
        raise SystemExit("demo: step failed: a refused bundle left creds.json behind")

    say(
        "7. The platform opens the genuine QuickBooks bundle from the pinned partner key with "
        "'open': signature, payload digest, decryption, inner binding, expiry and its own "
        "policy all pass, and only then are the credentials written, to a 0600 file; 'opened' "
        "is recorded in its ledger and in Vault."
    )
    platform.kc(
        "open", "handover.kcb", "--identity", "platform.kcid", *trust,
        "-o", "qbo-creds.json", "--json",
    )  # fmt: skip
    opened = json.loads((work / "qbo-creds.json").read_text())
    if opened.get("client_secret") != client_secret or opened.get("client_id") != client_id:
        raise SystemExit("demo: step failed: the opened QuickBooks credentials do not match")
    if (work / "qbo-creds.json").stat().st_mode & 0o077:
        raise SystemExit("demo: step failed: the opened credentials file is not 0600")
    print("    qbo-creds.json (0600): the client ID and secret the partner sealed")

    say(
        "8. The partner also hands over its production Xero app, sealed the same way; the "
        "platform ingests that bundle: the same checks as 'open', then the credentials go "
        "straight into Vault KV with provenance metadata (no file), and 'opened' and "
        "'ingested' are recorded."
    )
    xero_id = secrets.token_hex(16).upper()
    xero_secret = secrets.token_urlsafe(36)
    xero_file = work / "xero-secret.txt"
    xero_file.write_text(xero_secret + "\n")
    xero_file.chmod(0o600)
    partner.kc(
        "seal", "--platform", "xero", "--client-id", xero_id,
        "--client-secret-file", "xero-secret.txt", "--environment", "production",
        "--attested-by", "Jane Doe, CTO of Acme", "--partner", "Acme Ltd",
        "--identity", "partner.kcid", "-r", platform_pub["recipient"], "--expires-in", "7d",
        "-o", "xero-handover.kcb",
    )  # fmt: skip
    platform.kc(
        "ingest", "xero-handover.kcb", "--identity", "platform.kcid", *trust,
        "--vault-path", "handed-over/acme/xero", "--receipt", "xero-receipt.kcr",
    )  # fmt: skip

    say(
        "9. The platform sends back the signed receipt it wrote (it holds no secret, and names "
        "the Vault path only as a keyed digest). The partner, who shares no Vault with the "
        "platform, verifies it against the bundle it sent and the platform's pinned "
        "fingerprint, and records it; its timeline now ends with the receipt."
    )
    partner.kc("receipt", "inspect", "xero-receipt.kcr")
    partner.kc(
        "receipt", "verify", "xero-receipt.kcr", "--bundle", "xero-handover.kcb",
        "--trust", platform_pub["signing_fingerprint"],
    )  # fmt: skip
    xero_id_bundle = json.loads(
        partner.kc("inspect", "xero-handover.kcb", "--json", quiet=True).stdout
    )["manifest"]["bundle_id"]
    story = partner.kc("audit", "show", xero_id_bundle).stdout.decode()
    if "Received and stored by " + platform_pub["signing_fingerprint"] not in story:
        raise SystemExit("demo: step failed: the partner's timeline does not show the receipt")
    partner.kc("audit", "unconfirmed", "--older-than", "0m")

    say(
        "10. Rotation: the partner generates a new Xero client secret and seals it as the "
        "replacement of the bundle the platform stored (platform, partner and recipients come "
        "from the old manifest; the platform's receipt of it is checked first). The platform "
        "ingests it to the same path as version 2 and marks the old bundle superseded; its "
        "receipt says which version replaced which, and the partner verifies it. Only now "
        "would the partner retire the old secret in the Xero developer portal."
    )
    new_secret_file = work / "xero-new-secret.txt"
    new_secret_file.write_text(secrets.token_urlsafe(36) + "\n")
    new_secret_file.chmod(0o600)
    pin_platform = ["--trust", platform_pub["signing_fingerprint"]]
    partner.kc(
        "rotate", "xero-handover.kcb", "--client-id", xero_id,
        "--client-secret-file", "xero-new-secret.txt", "--attested-by", "Jane Doe, CTO of Acme",
        "--identity", "partner.kcid", "--receipt", "xero-receipt.kcr", *pin_platform,
        "-o", "xero-rotation.kcb",
    )  # fmt: skip
    platform.kc(
        "ingest", "xero-rotation.kcb", "--identity", "platform.kcid", *trust,
        "--vault-path", "handed-over/acme/xero", "--receipt", "xero-rotation-receipt.kcr",
    )  # fmt: skip
    partner.kc(
        "receipt", "verify", "xero-rotation-receipt.kcr", "--bundle", "xero-rotation.kcb",
        *pin_platform,
    )  # fmt: skip
    platform.kc(
        "open", "xero-handover.kcb", "--identity", "platform.kcid", *trust,
        "-o", "old-xero.json", expect=7,
    )  # fmt: skip
    rotation_id = json.loads(
        partner.kc("inspect", "xero-rotation.kcb", "--json", quiet=True).stdout
    )["manifest"]["bundle_id"]
    say("    The same rotation, as each side's ledger tells it:")
    partner.kc("audit", "show", rotation_id)
    platform.kc("audit", "show", xero_id_bundle)
    platform.kc("audit", "stale", "--older-than", "0m")

    say(
        "11. A second open, from another platform machine whose local ledger is empty, is "
        "refused: Vault shows the bundle was already opened (by the same identity, so there is "
        "no interception warning)."
    )
    spare = platform.twin("platform-2")
    again = spare.kc(
        "open", "handover.kcb", "--identity", "platform.kcid", *trust, "-o", "creds.json", expect=7
    )
    if b"already opened" not in again.stderr or (work / "creds.json").exists():
        raise SystemExit("demo: step failed: the second open was not refused as already opened")

    say(
        "12. Audit: each side verifies its hash chain and signed checkpoints, and cross-checks "
        "its events with Vault; then the bundle's timeline."
    )
    partner.kc("audit", "verify", "--vault")
    platform.kc("audit", "verify", "--vault")
    platform.kc("audit", "show", bundle_id)


def run_token_and_connection(
    work: Path, partner: Side, vault_addr: str, vault_token: str, servers: list[object]
) -> None:
    import urllib.request
    import uuid

    import hvac
    from tests.support.connections_standin import start_platform

    say(
        "13. The partner's own platform credentials (for POST /auth/token) live in Vault. The "
        "platform API is not reachable from here, so a LOCAL STAND-IN that follows the "
        "documented Monite contract plays it on 127.0.0.1."
    )
    monite_id, monite_secret = str(uuid.uuid4()), secrets.token_urlsafe(32)
    client = hvac.Client(url=vault_addr, token=vault_token)
    client.secrets.kv.v2.create_or_update_secret(
        path="platform/acme/monite",
        secret={"client_id": monite_id, "client_secret": monite_secret},
        cas=0,
    )
    platform_api = start_platform({monite_id: monite_secret})
    servers.append(platform_api)
    print(f"    stand-in platform API at {platform_api.monite_base} (local, test/demo code)")
    cfg = partner.home / ".config" / "keycourier" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        "[profiles.demo]\n"
        'dialect = "monite"\n'
        f'base_url = "{platform_api.monite_base}"\n'
        'environment = "sandbox"\n'
        'version = "2024-05-25"\n'
        'vault_path = "platform/acme/monite"\n'
    )

    say(
        "14. A partner access token for CI, in the AWS credential_process shape (cached 0600, "
        "refreshed at 80% of its lifetime). The token itself is elided here."
    )
    out = partner.kc("token", "--profile", "demo", "--format", "credential-process", quiet=True)
    doc = json.loads(out.stdout)
    print(
        f"    Version={doc['Version']} Expiration={doc['Expiration']} "
        f"token=<{len(str(doc.get('SessionToken') or doc.get('AccessToken') or ''))} chars>"
    )

    say("15. 'exec' injects the token into a child process and masks it in the child's output.")
    partner.kc(
        "exec",
        "--profile",
        "demo",
        "--env-name",
        "MONITE_TOKEN",
        "--",
        "sh",
        "-c",
        'echo "the child sees: $MONITE_TOKEN"',
    )

    entity = str(uuid.uuid4())
    say(
        "16. The partner creates the entity's accounting connection and hands the "
        "connection_url to the entity's user."
    )
    out = partner.kc("connection", "create", "--profile", "demo", "--entity", entity, "--json")
    conn = json.loads(out.stdout)["connection"]
    say(
        "17. The entity's user authorizes (simulated: the demo opens the connection_url on the "
        "stand-in), and the partner waits for 'connected'."
    )
    with urllib.request.urlopen(conn["connection_url"], timeout=10) as resp:  # noqa: S310
        resp.read()
    partner.kc(
        "connection",
        "wait",
        conn["id"],
        "--profile",
        "demo",
        "--entity",
        entity,
        "--timeout",
        "30s",
    )
    partner.kc("audit", "verify", "--vault")


def run_auditor(platform: Side) -> None:
    say(
        "18. An auditor's evidence: the platform exports its latest signed checkpoint (a C2SP "
        "signed note over the ledger's RFC 6962 Merkle tree) and its verifier key, proves one "
        "event, and packs every event for an auditor who has nothing but that key."
    )
    platform.kc("audit", "checkpoint", "-o", "platform.checkpoint")
    vkey = platform.kc("audit", "key").stdout.decode().strip()
    platform.kc("audit", "prove", "--seq", "1")
    platform.kc("audit", "pack", "-o", "evidence.zip")
    say("19. The auditor verifies the pack offline with the pinned key, and reads the report.")
    platform.kc("audit", "verify-pack", "evidence.zip", "--key", vkey)
    platform.kc("audit", "report", "-o", "report.html")
    page = (platform.work / "report.html").read_text()
    if "Verified" not in page:
        raise SystemExit("demo: step failed: the report does not say the ledger verified")
    platform.kc("audit", "verify", "--since", "platform.checkpoint")


if __name__ == "__main__":
    raise SystemExit(main())
