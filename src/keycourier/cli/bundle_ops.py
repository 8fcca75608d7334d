"""What ``keycourier inspect`` does, without click.

The click command in ``bundle_cmd`` and the console script's fast path
(``keycourier.cli.entry``) both call ``show_inspection``, so the two ways in
share one implementation. Inspecting a bundle is mostly start-up: keep click,
the age engine (cryptography), the handover policy and keycourier.cli.common
(which imports click) off this module's import path.
"""

from __future__ import annotations

import json
import sys

from keycourier.bundle.parsing import MAX_BUNDLE_BYTES, Inspection, inspect
from keycourier.cli.outcome import say
from keycourier.errors import IntegrityError
from keycourier.files import read_limited


def _echo(line: str, *, err: bool = False) -> None:
    """As click.echo: the line, then a flush (so stdout and stderr keep their order)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def read_bundle(source: str) -> bytes:
    """Read at most the size limit (+1 byte, so that the parser sees an oversized bundle).

    An oversized bundle is a step-1 failure of docs/bundle-format.md section 6,
    so it gets the one integrity error (exit 4) from the parser, not a usage error.
    """
    stream_or_path = sys.stdin.buffer if source == "-" else source
    return read_limited(stream_or_path, f"bundle {source}", MAX_BUNDLE_BYTES, refuse_larger=False)


def _rows(result: Inspection) -> list[tuple[str, str]]:
    m = result.manifest
    rows = [
        ("bundle", m.bundle_id),
        ("platform", m.platform),
        ("environment", m.environment),
        ("partner", m.partner or "-"),
        ("client id", m.client_id_masked),
        ("fingerprint", m.fingerprint),
        (
            "created",
            m.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            + (" (IN THE FUTURE)" if result.created_in_future else ""),
        ),
        (
            "expires",
            m.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            + (" (EXPIRED)" if result.expired else ""),
        ),
        (
            "attested by",
            f"{m.attestation.by}: {m.attestation.statement}" if m.attestation else "-",
        ),
        ("sender", f"{m.sender_fingerprint} ({m.sender_key})"),
        ("signature", "valid" if result.signature_valid else "INVALID"),
        ("payload", "digest matches" if result.payload_digest_valid else "DIGEST MISMATCH"),
        (
            "policy",
            f"{m.policy.verdict} ({m.policy.digest[:19]}…)"
            + (f" warnings: {', '.join(m.policy.warnings)}" if m.policy.warnings else ""),
        ),
    ]
    rows += [("recipient", r if len(r) < 80 else r[:40] + "…") for r in m.recipients]
    return rows


def show_inspection(bundle_file: str, *, as_json: bool) -> None:
    """``keycourier inspect``: print the public manifest and the checks that need no key;
    IntegrityError (exit 4) when the signature or the payload digest does not verify."""
    result = inspect(read_bundle(bundle_file))
    if as_json:
        _echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        for k, v in _rows(result):
            _echo(f"{k + ':':<13} {v}")
        _echo("(the signature proves who sealed it only if you trust that sender key)", err=True)
    if result.created_in_future:
        say(
            "warning",
            f"the bundle was created at {result.manifest.to_dict()['created_at']}, in the "
            "future: open and ingest refuse it until then (check the sender's clock)",
        )
    failed = [
        what
        for what, ok in (
            ("the bundle's signature does not verify", result.signature_valid),
            ("the payload digest does not match the manifest", result.payload_digest_valid),
        )
        if not ok
    ]
    if failed:
        raise IntegrityError(
            "; ".join(failed),
            hints=["the bundle was altered after it was sealed: ask the sender for a fresh one"],
        )
