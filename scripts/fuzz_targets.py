"""atheris (libFuzzer) targets for the bundle, receipt and age parsers; run through
scripts/fuzz.

    .venv/bin/python scripts/fuzz_targets.py TARGET [libFuzzer flags] [CORPUS_DIR]
    .venv/bin/python scripts/fuzz_targets.py TARGET --seed-corpus DIR
    .venv/bin/python scripts/fuzz_targets.py list

A crash is any exception other than a keycourier error, or an input that
opens/decrypts although it is not in canonical form up to the allowed no-ops:
a bundle that opens must carry the sample's signed content (manifest bytes,
signature, age file) whatever transport normalisation it went through. Each
target opens with the fixed-key samples of tests/fuzz/samples.py, so a saved
corpus stays valid across runs (the ciphertexts differ per process, the keys
do not).
"""

from __future__ import annotations

import base64
import contextlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # type: ignore[import-untyped]  # noqa: E402

with atheris.instrument_imports(include=["keycourier"]):
    from keycourier import age, bundle, receipt
    from keycourier.age._format import ArmorDecoder, Reader, read_header
    from keycourier.errors import Error, IntegrityError

from tests.fuzz.samples import (  # noqa: E402
    NOW,
    PLAINTEXT,
    age_samples,
    bundle_content,
    bundle_sample,
    normalise_armor,
    receipt_sample,
)

BUNDLE = bundle_sample()
RECEIPT = receipt_sample()
RECEIPT_PARSED = receipt.parse(RECEIPT.text)
AGE = {s.name: s for s in age_samples() if s.name != "x25519-two-chunks"}
AGE_NAMES = sorted(AGE)


def bundle_target(data: bytes) -> None:
    for check in (bundle.parse, bundle.inspect, bundle.extract_age):
        with contextlib.suppress(Error):
            check(data)
    try:
        opened = bundle.open_verified(
            data, identity=BUNDLE.receiver, trusted=BUNDLE.trusted, now=NOW
        )
    except IntegrityError:
        return
    if bundle_content(data) != bundle_content(BUNDLE.text):
        raise AssertionError("a bundle with other signed content opened")
    if opened.credentials.client_secret.reveal() != BUNDLE.client_secret:
        raise AssertionError("the bundle opened to other credentials")


def receipt_target(data: bytes) -> None:
    """A receipt verifies only with the sample's signed body and signature (docs/receipts.md):
    every other input is a keycourier error (exit 4 or 7)."""
    for check in (receipt.parse, receipt.inspect):
        with contextlib.suppress(Error):
            check(data)
    try:
        verified = receipt.verify(data, RECEIPT.bundle, RECEIPT.trusted)
    except Error:
        return
    parsed = receipt.parse(data)
    if parsed.body != RECEIPT_PARSED.body or parsed.signature != RECEIPT_PARSED.signature:
        raise AssertionError("a receipt with other signed content verified")
    if verified.receipt != RECEIPT_PARSED.receipt:
        raise AssertionError("a receipt verified to other facts")


def age_target(data: bytes) -> None:
    if not data:
        return
    # The first byte picks the sample whose identities decrypt the rest.
    sample = AGE[AGE_NAMES[data[0] % len(AGE_NAMES)]]
    body = data[1:]
    try:
        got = age.decrypt(sample.identities, body)
    except Error:
        return
    if got != PLAINTEXT:
        raise AssertionError("an altered age file decrypted to other plaintext")
    binary = body
    if not body.startswith(b"age-encryption.org/"):
        binary = ArmorDecoder(Reader(io.BytesIO(body))).read(len(body))
        canonical_armor = b"-----BEGIN AGE ENCRYPTED FILE-----\n" + b"".join(
            base64.encodebytes(binary[i : i + 48]) for i in range(0, len(binary), 48)
        )
        if normalise_armor(body) != canonical_armor + b"-----END AGE ENCRYPTED FILE-----":
            raise AssertionError("non-canonical armor was accepted")
    header = read_header(Reader(io.BytesIO(binary)))
    encoded = header.mac_input + b" " + base64.b64encode(header.mac).rstrip(b"=") + b"\n"
    if not binary.startswith(encoded):
        raise AssertionError("a non-canonical age header was accepted")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bundle": bundle_target,
    "receipt": receipt_target,
    "age": age_target,
}


def seed(target: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if target == "bundle":
        (directory / "seed-bundle").write_bytes(BUNDLE.text)
        return
    if target == "receipt":
        (directory / "seed-receipt").write_bytes(RECEIPT.text)
        return
    for i, name in enumerate(AGE_NAMES):
        (directory / f"seed-{name}").write_bytes(bytes([i]) + AGE[name].data)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in (*TARGETS, "list"):
        sys.stderr.write(f"usage: fuzz_targets.py {{{','.join(TARGETS)}|list}} [flags]\n")
        raise SystemExit(2)
    target = args[0]
    if target == "list":
        sys.stdout.write("\n".join(TARGETS) + "\n")
        return
    if len(args) == 3 and args[1] == "--seed-corpus":
        seed(target, Path(args[2]))
        return
    atheris.Setup([sys.argv[0], *args[1:]], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
