"""Parsers under attack: the age header, armor and STREAM parsers via ``age.decrypt``.

Properties: only keycourier errors escape; a mutated file never decrypts unless
the mutation is an allowed no-op (armor: CRLF and outer whitespace); bounded
time and memory at the header-size limit and on oversized armor.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keycourier import age
from keycourier.age._format import MAX_HEADER_BYTES, Reader, read_header
from keycourier.errors import Error
from tests.fuzz.bounds import measure
from tests.fuzz.mutate import mutated
from tests.fuzz.samples import AgeSample, age_samples, normalise_armor, plaintext_of
from tests.support.fuzz import FUZZ_EXAMPLES

SAMPLES = {s.name: s for s in age_samples()}
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check(sample: AgeSample, data: bytes) -> None:
    try:
        got = age.decrypt(sample.identities, data)
    except Error:
        return
    assert got == plaintext_of(sample), "a mutated file decrypted to other plaintext"
    if sample.name.endswith("-armor"):
        assert normalise_armor(data) == normalise_armor(sample.data), "altered armor accepted"
    else:
        assert data == sample.data, "an altered binary age file decrypted"


def test_samples_decrypt() -> None:
    for sample in SAMPLES.values():
        assert age.decrypt(sample.identities, sample.data) == plaintext_of(sample)


SMALL = sorted(n for n, smp in SAMPLES.items() if len(smp.data) < 4096)


@FUZZ
@given(data=st.data(), name=st.sampled_from(SMALL))
def test_mutated_age_file_never_decrypts(data: st.DataObject, name: str) -> None:
    """One test over the small samples (binary, armored, X25519, hybrid, scrypt)."""
    sample = SAMPLES[name]
    _check(sample, data.draw(mutated(sample.data), label="mutated"))


@settings(FUZZ, max_examples=max(FUZZ_EXAMPLES // 20, 50))
@given(data=mutated(SAMPLES["x25519-two-chunks"].data))
def test_mutated_two_chunk_file_never_decrypts(data: bytes) -> None:
    """The 72 KiB sample (chunk boundary): fewer examples, each one costs a 72 KiB decrypt."""
    _check(SAMPLES["x25519-two-chunks"], data)


@FUZZ
@given(data=st.binary(max_size=2048), armored=st.booleans())
def test_arbitrary_bytes(data: bytes, armored: bool) -> None:
    sample = SAMPLES["x25519"]
    if armored:
        data = b"-----BEGIN AGE ENCRYPTED FILE-----\n" + data
    with pytest.raises(Error):
        age.decrypt(sample.identities, data)


stanza_arg = st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b)


@FUZZ
@given(
    stanzas=st.lists(
        st.tuples(st.lists(stanza_arg, min_size=0, max_size=4), st.binary(max_size=100)),
        min_size=0,
        max_size=4,
    ),
    mac=st.binary(max_size=50),
    name=st.sampled_from(["x25519", "scrypt", "hybrid"]),
)
def test_generated_headers(stanzas: list[tuple[list[bytes], bytes]], mac: bytes, name: str) -> None:
    """Header-shaped inputs: stanzas with arbitrary args and bodies, any MAC line."""
    import base64

    head = b"age-encryption.org/v1\n"
    for args, body in stanzas:
        b64 = base64.b64encode(body).rstrip(b"=")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append(b"")
        head += b"-> " + b" ".join(args) + b"\n" + b"\n".join(lines) + b"\n"
    head += b"--- " + base64.b64encode(mac).rstrip(b"=") + b"\n" + b"\x00" * 32
    with pytest.raises(Error):
        age.decrypt(SAMPLES[name].identities, head)
    with contextlib.suppress(Error):
        read_header(Reader(io.BytesIO(head)))


def _bounded(
    data: bytes, identities: tuple[age.Identity, ...], *, memory: bool = True
) -> BaseException | None:
    seconds, peak, caught = measure(lambda: age.decrypt(identities, data), memory=memory)
    assert seconds < 15.0, f"took {seconds:.1f}s"
    # 16 bytes of Python objects per input byte at most (many tiny stanzas
    # measured 13x), plus the 64 KiB STREAM buffers.
    assert peak < 16 * len(data) + 8 * 1024 * 1024, f"peak {peak} bytes"
    return caught


def _many_stanzas(size: int) -> bytes:
    head = b"age-encryption.org/v1\n" + b"-> x\nAAAA\n" * (size // 10 - 10)
    return head + b"--- " + b"A" * 43 + b"\n"


def test_header_at_size_limit_is_bounded() -> None:
    ids = SAMPLES["x25519"].identities
    body = (b"A" * 64 + b"\n") * (MAX_HEADER_BYTES // 65)
    over = b"age-encryption.org/v1\n-> X25519 " + b"A" * 43 + b"\n" + body
    assert isinstance(_bounded(over, ids), Error)
    long_line = b"age-encryption.org/v1\n-> " + b"a" * MAX_HEADER_BYTES
    assert isinstance(_bounded(long_line, ids), Error)
    # many tiny stanzas: a quarter of the limit here (memory is traced), the
    # whole limit in the slow test below
    assert isinstance(_bounded(_many_stanzas(MAX_HEADER_BYTES // 4), ids), Error)


@pytest.mark.slow
def test_max_stanza_count_header_is_bounded() -> None:
    ids = SAMPLES["x25519"].identities
    assert isinstance(_bounded(_many_stanzas(MAX_HEADER_BYTES), ids), Error)


def test_huge_armor_is_bounded() -> None:
    sample = SAMPLES["x25519-armor"]
    lines = sample.data.split(b"\n")
    junk = b"\n".join([lines[0], *([b"A" * 64] * 200_000), lines[-2], b""])
    assert isinstance(_bounded(junk, sample.identities), Error)
    ws = b" " * 1024 + sample.data + b"\n" * 1024
    assert _bounded(ws, sample.identities) is None
    assert isinstance(_bounded(b" " * 1025 + sample.data, sample.identities), Error)


def test_huge_payload_garbage_is_bounded() -> None:
    sample = SAMPLES["x25519"]
    data = sample.data + b"\x00" * (8 * 1024 * 1024)
    assert isinstance(_bounded(data, sample.identities), Error)


def test_scrypt_work_factor_is_capped() -> None:
    sample = SAMPLES["scrypt"]
    text = sample.data.replace(b" 2\n", b" 22\n", 1)
    seconds, _, caught = measure(lambda: age.decrypt(sample.identities, text))
    assert isinstance(caught, Error)
    assert seconds < 1.0
