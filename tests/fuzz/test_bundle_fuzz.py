"""Parsers under attack: the bundle parser, inspect, extract-age and open_verified.

Properties: only keycourier errors escape; a mutated bundle never opens unless
the mutation is one of the transport no-ops of docs/bundle-format.md section 1.1
(it then carries the sample's signed content); no manifest string of a fixed
shape is accepted with a trailing newline or other suffix; bounded time and
memory at the size limits.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycourier import bundle
from keycourier.bundle import text as bundle_text
from keycourier.bundle.canonical import canonical_json
from keycourier.bundle.core import MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES
from keycourier.errors import Error, IntegrityError, PolicyError
from tests.fuzz.bounds import measure
from tests.fuzz.mutate import mutated
from tests.fuzz.samples import NOW, bundle_content, bundle_sample
from tests.support.fuzz import FUZZ_EXAMPLES

SAMPLE = bundle_sample()
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LINES = SAMPLE.text.split(b"\n")
AGE_AT = LINES.index(b"-----BEGIN AGE ENCRYPTED FILE-----")
PARSED = bundle.parse(SAMPLE.text)


def with_manifest(manifest: bytes) -> bytes:
    """The sample with another manifest (the signature no longer matches it)."""
    return bundle_text.write(manifest, PARSED.signature, PARSED.payload)


def _open(text: bytes) -> bundle.OpenedBundle:
    return bundle.open_verified(text, identity=SAMPLE.receiver, trusted=SAMPLE.trusted, now=NOW)


def test_sample_opens() -> None:
    opened = _open(SAMPLE.text)
    assert opened.credentials.client_secret.reveal() == SAMPLE.client_secret
    assert _open(b"\r\n \t\n" + SAMPLE.text.replace(b"\n", b"\r\n") + b" \n\t").manifest


@FUZZ
@given(text=mutated(SAMPLE.text))
@example(text=SAMPLE.text.replace(LINES[3], LINES[3][:10] + b"x" + LINES[3][11:]))
@example(text=SAMPLE.text.replace(b"\n", b"\n\n", 1))
@example(text=SAMPLE.text.replace(b"\n", b"\n> ", 3))
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
    assert bundle_content(text) == bundle_content(SAMPLE.text), "altered bundle opened"
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
MANIFEST = json.loads(PARSED.manifest_bytes)


@FUZZ
@given(
    field=st.sampled_from(sorted(MANIFEST)),
    value=json_values,
    sub=st.booleans(),
)
def test_manifest_fields_of_any_type(field: str, value: object, sub: bool) -> None:
    doc = json.loads(PARSED.manifest_bytes)
    target = doc[field] if sub and isinstance(doc[field], dict) else doc
    key = sorted(target)[hash(json.dumps(value, default=str)) % len(target)] if sub else field
    target[key] = value
    line = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if line == PARSED.manifest_bytes:
        return  # the drawn value equals the original: a no-op, not a mutation
    text = with_manifest(line)
    try:
        bundle.inspect(text)
    except Error:
        return
    # parsed: only possible if the new manifest is still well-formed; it must not open
    with pytest.raises(IntegrityError):
        _open(text)


def test_regression_unhashable_platform() -> None:
    """Found by test_manifest_fields_of_any_type: ``"platform": []`` raised TypeError."""
    doc = json.loads(PARSED.manifest_bytes)
    values: tuple[object, ...] = ([], {}, [["quickbooks"]])
    for value in values:
        doc["platform"] = value
        line = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(IntegrityError):
            bundle.parse(with_manifest(line))


# Every manifest string with a fixed shape, as (path, its value in the sample).
SHAPED = [
    ("bundle_id",),
    ("created_at",),
    ("expires_at",),
    ("fingerprint",),
    ("recipients", 0),
    ("sender", "signing_key"),
    ("sender", "fingerprint"),
    ("policy", "digest"),
    ("payload", "sha256"),
]


@FUZZ
@given(
    path=st.sampled_from(SHAPED),
    suffix=st.sampled_from(["\n", "\r\n", "\n\n", " ", "\t", "\x00", "\u2028", "!"]),
)
@example(path=("recipients", 0), suffix="\n")
@example(path=("sender", "signing_key"), suffix="\n")
@example(path=("policy", "digest"), suffix="\n")
def test_a_shaped_string_with_a_suffix_is_refused(path: tuple[str | int, ...], suffix: str) -> None:
    """``$`` matches before a final newline: every shape is matched in full (\\Z)."""
    doc = json.loads(PARSED.manifest_bytes)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] += suffix
    with pytest.raises(IntegrityError):
        bundle.parse(with_manifest(canonical_json(doc)))


def _bounded(text: bytes) -> None:
    for check in (bundle.inspect, bundle.extract_age, _open):
        seconds, peak, _ = measure(lambda check=check: check(text))  # type: ignore[misc]
        assert seconds < 5.0, f"{check.__name__} took {seconds:.1f}s"
        assert peak < 24 * MAX_BUNDLE_BYTES, f"{check.__name__} peak {peak} bytes"


HUGE = MAX_BUNDLE_BYTES * 7 // 10  # bytes whose base64 still fits in the 1 MiB input


@pytest.mark.parametrize(
    "text",
    [
        with_manifest(b"{" + b"a" * HUGE + b"}"),
        with_manifest(b'{"x":"' + b"a" * MAX_MANIFEST_BYTES + b'"}'),
        with_manifest(b"[" * 100_000),
        b"\n".join([*LINES[: AGE_AT + 1], *([b"A" * 64] * 15000), *LINES[-2:]]),
        b"\n".join([*LINES[: AGE_AT + 1], *([b"A" * 64] * 2040), *LINES[-2:]]),
        b" " * (MAX_BUNDLE_BYTES - len(SAMPLE.text)) + SAMPLE.text,
        b"\n" * (MAX_BUNDLE_BYTES - len(SAMPLE.text)) + SAMPLE.text,
        b"A " * ((MAX_BUNDLE_BYTES - len(SAMPLE.text)) // 2),
        b"keycourier-bundle/v2\n" + b"A " * (MAX_BUNDLE_BYTES // 2 - 20),
        b"keycourier-bundle/v2\n" + b"A\n" * (MAX_BUNDLE_BYTES // 2 - 20),
        b"keycourier-bundle/v2\n" + b"A\r" * (MAX_BUNDLE_BYTES // 2 - 20),
        b"> keycourier-bundle/v2\n" + b">\n" * (MAX_BUNDLE_BYTES // 2 - 20),
        b"> " * ((MAX_BUNDLE_BYTES - len(SAMPLE.text)) // 2) + SAMPLE.text,
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
        "max-leading-lines",
        "max-words",
        "max-words-in-a-bundle",
        "max-lines-in-a-bundle",
        "max-cr-lines-in-a-bundle",
        "max-empty-quoted-lines",
        "max-prefix",
        "over-limit",
        "trailing-over-limit",
    ],
)
def test_max_size_inputs_are_bounded(text: bytes) -> None:
    _bounded(text)
