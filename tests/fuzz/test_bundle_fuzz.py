"""Parsers under attack: the bundle parser, inspect, extract-age and open_verified.

Properties: only keycourier errors escape; a mutated bundle never opens unless
the mutation is one of the allowed no-ops (CRLF, outer whitespace); bounded
time and memory at the size limits.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycourier import bundle
from keycourier.bundle.core import MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES
from keycourier.errors import Error, IntegrityError, PolicyError
from tests.fuzz.bounds import measure
from tests.fuzz.mutate import mutated
from tests.fuzz.samples import NOW, bundle_sample, normalise_bundle
from tests.support.fuzz import FUZZ_EXAMPLES

SAMPLE = bundle_sample()
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LINES = SAMPLE.text.split(b"\n")


def _open(text: bytes) -> bundle.OpenedBundle:
    return bundle.open_verified(text, identity=SAMPLE.receiver, trusted=SAMPLE.trusted, now=NOW)


def test_sample_opens() -> None:
    opened = _open(SAMPLE.text)
    assert opened.credentials.client_secret.reveal() == SAMPLE.client_secret
    assert _open(b"\r\n \t" + SAMPLE.text.replace(b"\n", b"\r\n") + b" \n\t").manifest


@FUZZ
@given(text=mutated(SAMPLE.text))
@example(text=SAMPLE.text.replace(b'"partner":"Acme Ltd"', b'"partner":"Acme Ltc"'))
@example(text=SAMPLE.text.replace(b"\n", b"\n\n", 1))
@example(text=SAMPLE.text[:-1] + b"=\n")
def test_mutated_bundle_never_opens(text: bytes) -> None:
    for check in (bundle.parse, bundle.inspect, bundle.extract_age):
        with contextlib.suppress(Error):
            check(text)
    try:
        opened = _open(text)
    except IntegrityError:
        return
    except PolicyError:  # expiry is checked last, after everything verified
        pytest.fail("a mutated bundle got past verification to the expiry check")
    assert normalise_bundle(text) == normalise_bundle(SAMPLE.text), "altered bundle opened"
    assert opened.credentials.client_secret.reveal() == SAMPLE.client_secret


@FUZZ
@given(text=st.binary(max_size=4096))
def test_arbitrary_bytes(text: bytes) -> None:
    with pytest.raises(Error):
        bundle.inspect(text)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
# One level of nesting (cheap to generate) reaches every type check of the manifest.
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=12), json_scalars, max_size=3)
)
MANIFEST = json.loads(LINES[2])


@FUZZ
@given(
    field=st.sampled_from(sorted(MANIFEST)),
    value=json_values,
    sub=st.booleans(),
)
def test_manifest_fields_of_any_type(field: str, value: object, sub: bool) -> None:
    doc = json.loads(LINES[2])
    target = doc[field] if sub and isinstance(doc[field], dict) else doc
    key = sorted(target)[hash(json.dumps(value, default=str)) % len(target)] if sub else field
    target[key] = value
    line = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if line == LINES[2]:
        return  # the drawn value equals the original: a no-op, not a mutation
    text = b"\n".join([*LINES[:2], line, *LINES[3:]])
    try:
        bundle.inspect(text)
    except Error:
        return
    # parsed: only possible if the new manifest is still well-formed; it must not open
    with pytest.raises(IntegrityError):
        _open(text)


def test_regression_unhashable_platform() -> None:
    """Found by test_manifest_fields_of_any_type: ``"platform": []`` raised TypeError."""
    doc = json.loads(LINES[2])
    values: tuple[object, ...] = ([], {}, [["quickbooks"]])
    for value in values:
        doc["platform"] = value
        line = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(IntegrityError):
            bundle.parse(b"\n".join([*LINES[:2], line, *LINES[3:]]))


def _bounded(text: bytes) -> None:
    for check in (bundle.inspect, bundle.extract_age, _open):
        seconds, peak, _ = measure(lambda check=check: check(text))  # type: ignore[misc]
        assert seconds < 5.0, f"{check.__name__} took {seconds:.1f}s"
        assert peak < 24 * MAX_BUNDLE_BYTES, f"{check.__name__} peak {peak} bytes"


@pytest.mark.parametrize(
    "text",
    [
        b"\n".join([*LINES[:2], b"{" + b"a" * (MAX_BUNDLE_BYTES - 200) + b"}", *LINES[3:]]),
        b"\n".join([*LINES[:2], b'{"x":"' + b"a" * MAX_MANIFEST_BYTES + b'"}', *LINES[3:]]),
        b"\n".join([*LINES[:2], b"[" * 100_000, *LINES[3:]]),
        b"\n".join([*LINES[:8], *([b"A" * 64] * 15000), *LINES[-2:]]),
        b"\n".join([*LINES[:8], *([b"A" * 64] * 2040), *LINES[-2:]]),
        b" " * (MAX_BUNDLE_BYTES - len(SAMPLE.text)) + SAMPLE.text,
        b"\n" * (MAX_BUNDLE_BYTES + 1),
        SAMPLE.text + b"\n" * MAX_BUNDLE_BYTES,
    ],
    ids=[
        "huge-manifest",
        "manifest-over-limit",
        "deep-nesting",
        "huge-armor",
        "armor-at-limit",
        "max-leading-ws",
        "over-limit",
        "trailing-over-limit",
    ],
)
def test_max_size_inputs_are_bounded(text: bytes) -> None:
    _bounded(text)
