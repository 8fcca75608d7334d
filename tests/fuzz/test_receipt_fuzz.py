"""The receipt parser and verifier under attack (docs/receipts.md).

Properties: only keycourier errors escape (exit 4 or 7, never 0 or 1 by accident); a
mutated receipt verifies only when the mutation is a transport no-op (it then carries
the sample's signed body and signature); truncations and single-character changes
never verify.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycourier import receipt
from keycourier.errors import Error, IntegrityError, PolicyError
from tests.fuzz.mutate import mutated
from tests.fuzz.samples import receipt_sample
from tests.support.fuzz import FUZZ_EXAMPLES

SAMPLE = receipt_sample()
PARSED = receipt.parse(SAMPLE.text)
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _verify(text: bytes) -> receipt.VerifiedReceipt:
    return receipt.verify(text, SAMPLE.bundle, SAMPLE.trusted)


def test_sample_verifies_and_survives_transport() -> None:
    assert _verify(SAMPLE.text).receipt.action == "ingested"
    crlf = b"> " + SAMPLE.text.replace(b"\n", b"\r\n> ")
    assert _verify(crlf).receipt == PARSED.receipt


@FUZZ
@given(text=mutated(SAMPLE.text))
@example(text=SAMPLE.text[:-40])
@example(text=SAMPLE.text.replace(b"\n", b"\n\n", 1))
@example(text=SAMPLE.text + SAMPLE.text)
def test_mutated_receipts_verify_only_unchanged(text: bytes) -> None:
    try:
        verified = _verify(text)
    except (IntegrityError, PolicyError):
        with contextlib.suppress(Error):
            receipt.inspect(text)
        return
    again = receipt.parse(text)
    assert again.body == PARSED.body
    assert again.signature == PARSED.signature
    assert verified.receipt == PARSED.receipt


@FUZZ
@given(position=st.integers(min_value=0), replacement=st.sampled_from(b"AZaz09+/=-x"))
def test_one_changed_character_never_verifies(position: int, replacement: int) -> None:
    """Any one printable character of the receipt changed (not to whitespace): exit 4/7."""
    lines = SAMPLE.text.split(b"\n")
    spots = [(i, j) for i, line in enumerate(lines) for j in range(len(line))]
    i, j = spots[position % len(spots)]
    line = bytearray(lines[i])
    if line[j] == replacement:
        return
    line[j] = replacement
    lines[i] = bytes(line)
    try:
        _verify(b"\n".join(lines))
    except (IntegrityError, PolicyError):
        return
    raise AssertionError(f"a receipt with line {i + 1} column {j + 1} changed verified")


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_input_only_raises_keycourier_errors(data: bytes) -> None:
    for check in (receipt.parse, receipt.inspect, _verify):
        with contextlib.suppress(Error):
            check(data)
