"""Keys, Bech32, key files, usage errors and reprs."""

from __future__ import annotations

import pytest

from keycourier import age
from keycourier.age._encoding import b64decode, bech32_decode, bech32_encode
from keycourier.errors import ExitCode, IntegrityError, UsageError
from keycourier.redact import Secret

# The examples printed in the C2SP age spec (age.md).
SPEC_X25519_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_X25519_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_PQ_RECIPIENT_HEAD = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrqtzd"
SPEC_PQ_RECIPIENT_TAIL = "mkg5yncz7jm5wv2qjk5w5kvcpqsry2yqffh2la52dxfjkjq5rzhjzeyn6dupn0qwtyv7s4lwg3xdarsdlwe2y3tujy480y7z39q259fzx6jhd2j0f5hagqpcpees7hzc2yrk5cy788uk3s7qvp5cpepx24gvws3m2g433exgwppnkjscec8qu4y9z9r7vccexjcjaen42245lmgmxmuavg9alej92322gvvyy2t6267v09ch64y0m53jff0vjj96s0ypk60hr3jw4myd6m5hpn3xjstx7tl2szhpr5qe8jj08ydjc4wy2rch2fhuy3pdfjax5awe9j99ly5hkntzz9fe5zatgjvzdd0kgtxs25njnajyf6ssekp7gelxquusn4pt25czh3scj68kq79wdn5tgm6yvm9nzavrg043x3msnygf8dweknw5jmqd0uvny6ttsn09508k0c55zfnegrm9efhxpfqdkmhh6gjtqmwze9pyyzk3tlhl53k2ykx3qheyty7saeq0d3fzv49zc0k"  # noqa: E501


def test_spec_x25519_example_pair() -> None:
    ident = age.X25519Identity.parse(SPEC_X25519_IDENTITY)
    assert ident.recipient().to_string() == SPEC_X25519_RECIPIENT
    assert ident.to_string() == SPEC_X25519_IDENTITY
    assert age.parse_recipient(SPEC_X25519_RECIPIENT) == ident.recipient()


def test_spec_hybrid_example_pair() -> None:
    ident = age.HybridIdentity.parse(SPEC_PQ_IDENTITY)
    text = ident.recipient().to_string()
    assert len(text) == 1959
    assert text.startswith(SPEC_PQ_RECIPIENT_HEAD)
    assert text.endswith(SPEC_PQ_RECIPIENT_TAIL)
    assert ident.to_string() == SPEC_PQ_IDENTITY
    parsed = age.parse_recipient(text)
    assert isinstance(parsed, age.HybridRecipient)
    assert parsed.to_string() == text


def test_generated_keys_round_trip_through_text() -> None:
    for ident in (age.X25519Identity.generate(), age.HybridIdentity.generate()):
        again = age.parse_identity(ident.to_string())
        assert again.recipient().to_string() == ident.recipient().to_string()
        assert type(age.parse_recipient(ident.recipient().to_string())) is type(ident.recipient())


def test_bech32_has_no_length_limit_and_rejects_mixed_case() -> None:
    data = bytes(range(256)) * 5
    text = bech32_encode("age1pq", data)
    assert len(text) > 90
    assert bech32_decode(text) == ("age1pq", data)
    assert bech32_decode(text.upper()) == ("AGE1PQ", data)
    with pytest.raises(ValueError, match="mixed-case"):
        bech32_decode(text[:10] + text[10:].upper())
    broken = text[:-1] + ("q" if text[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        bech32_decode(broken)


def test_canonical_base64_only() -> None:
    assert b64decode(b"AA") == b"\x00"
    for bad in (b"AB", b"AA==", b"A", b"AA\n", b"A A", b"AA=A"):
        with pytest.raises(ValueError, match="base64"):
            b64decode(bad)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "age1",
        "AGE1ZVKYG2LQZRAA2LNJVQEJ32NKUU0UES2S82HZRYE869XEEXVN73EQUNUJWJ",  # recipient upper-cased
        SPEC_X25519_RECIPIENT[:-1] + "q",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG",
        "age1tag1qt8lw0ual6avlwmwatk888yqnmdamm7xfd0wak53ut6elz5c4swx2yqdj4e",
        SPEC_X25519_IDENTITY,
    ],
)
def test_bad_recipients_are_usage_errors(text: str) -> None:
    with pytest.raises(age.InvalidKeyError) as info:
        age.parse_recipient(text)
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    "text",
    [
        SPEC_X25519_IDENTITY.lower(),
        SPEC_X25519_IDENTITY[:-1] + "Q",
        SPEC_X25519_RECIPIENT,
        "AGE-PLUGIN-YUBIKEY-1QQQQQQ",
        "AGE-SECRET-KEY-1",
    ],
)
def test_bad_identities_are_usage_errors_without_echo(text: str) -> None:
    with pytest.raises(age.InvalidKeyError) as info:
        age.parse_identity(text)
    assert text not in str(info.value)
    assert "GFPYYSJZ" not in str(info.value)


def test_key_files_skip_comments_and_blank_lines() -> None:
    ident = age.X25519Identity.generate()
    pq = age.HybridIdentity.generate()
    text = (
        "# created: 2026-11-23T00:00:00Z\n# public key: age1...\n\n"
        f"{ident.to_string()}\r\n  {pq.to_string()}  \n"
    )
    parsed = age.parse_identities_file(text)
    assert [p.to_string() for p in parsed] == [ident.to_string(), pq.to_string()]
    recips = age.parse_recipients_file(
        f"# team\n{ident.recipient().to_string()}\n\n{pq.recipient().to_string()}\n"
    )
    assert [r.to_string() for r in recips] == [
        ident.recipient().to_string(),
        pq.recipient().to_string(),
    ]
    with pytest.raises(age.InvalidKeyError, match="line 2"):
        age.parse_identities_file(f"{ident.to_string()}\nAGE-SECRET-KEY-1BROKEN\n")
    with pytest.raises(age.AgeUsageError, match="no identities"):
        age.parse_identities_file("# only a comment\n\n")


def test_reprs_never_show_secrets() -> None:
    ident = age.X25519Identity.parse(SPEC_X25519_IDENTITY)
    pq = age.HybridIdentity.parse(SPEC_PQ_IDENTITY)
    for obj, secret in ((ident, SPEC_X25519_IDENTITY), (pq, SPEC_PQ_IDENTITY)):
        assert secret not in repr(obj)
        assert secret[20:40] not in repr(obj)
    assert "hunter2" not in repr(age.ScryptRecipient(Secret("hunter2"), 2))
    assert "hunter2" not in repr(age.ScryptIdentity(Secret("hunter2")))


def test_error_classes_map_to_exit_codes() -> None:
    for cls in (age.HeaderError, age.ArmorError, age.PayloadError, age.NoMatchError, age.HmacError):
        assert issubclass(cls, age.AgeError)
        assert issubclass(cls, IntegrityError)
        assert cls("x").exit_code == ExitCode.INTEGRITY
    assert age.AgeUsageError("x").exit_code == ExitCode.USAGE


def test_encrypt_usage_rules() -> None:
    x = age.X25519Identity.generate().recipient()
    pq = age.HybridIdentity.generate().recipient()
    pw = age.ScryptRecipient(Secret("pw"), 2)
    with pytest.raises(age.AgeUsageError):
        age.encrypt([], b"x")
    with pytest.raises(age.AgeUsageError, match="passphrase"):
        age.encrypt([pw, x], b"x")
    with pytest.raises(age.AgeUsageError, match="post-quantum"):
        age.encrypt([x, pq], b"x")
    with pytest.raises(age.AgeUsageError):
        age.decrypt([], b"age-encryption.org/v1\n")
    for bad in (0, 23, True):
        with pytest.raises(age.AgeUsageError):
            age.ScryptRecipient(Secret("pw"), bad)
    with pytest.raises(age.AgeUsageError):
        age.ScryptRecipient(Secret(""))
    assert age.ScryptRecipient(Secret("pw")).work_factor == 18


def test_scrypt_files_refuse_other_stanzas_and_large_work_factors() -> None:
    from keycourier.age.recipients import ScryptRecipient

    x = age.X25519Identity.generate()
    pw = ScryptRecipient(Secret("pw"), 2)
    file_key = bytes(16)
    stanzas = [*pw.wrap(file_key), *x.recipient().wrap(file_key)]
    import io

    out = io.BytesIO()
    age.encrypt_stream_from_parts(stanzas, file_key, bytes(16), io.BytesIO(b"hi"), out)
    for idents in ([x], [age.ScryptIdentity(Secret("pw"))]):
        with pytest.raises(age.HeaderError, match="only stanza"):
            age.decrypt(idents, out.getvalue())


def test_hybrid_identity_is_deterministic_from_seed() -> None:
    seed = bytes(range(32))
    assert age.HybridIdentity(seed).recipient() == age.HybridIdentity(seed).recipient()


def test_low_order_recipients_are_usage_errors_when_encrypting() -> None:
    """An all-zero X25519 key (a low-order point) parses, but wrapping to it would give
    an all-zero shared secret: refused as a key error (exit 2), not an internal error."""
    zero = bech32_encode("age", bytes(32))
    with pytest.raises(age.InvalidKeyError, match="low-order point") as info:
        age.encrypt([age.parse_recipient(zero)], b"data")
    assert info.value.exit_code == ExitCode.USAGE
    _, hybrid = bech32_decode(age.HybridIdentity.generate().recipient().to_string())
    bad = bech32_encode("age1pq", hybrid[:-32] + bytes(32))
    with pytest.raises(age.InvalidKeyError, match="low-order point"):
        age.encrypt([age.parse_recipient(bad)], b"data")


# Curve25519 points of small order, as 32-byte little-endian u-coordinates: 0, 1, the
# two of order 8, p - 1, and the non-canonical p and p + 1 (RFC 7748 section 5 masks
# bit 255, so each is also tried with that bit set).
_LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 20).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 18).to_bytes(32, "little"),
]


def test_ephemeral_exchange_is_the_same_through_libsodium_and_openssl() -> None:
    """The seal path uses libsodium's X25519 when PyNaCl is loaded, the age CLI OpenSSL's:
    for the same scalar both give the same share and shared secret, and both refuse
    every low-order point."""
    import os

    import nacl.bindings

    from keycourier.age import _x25519

    for _ in range(64):
        scalar, peer = os.urandom(32), age.X25519Identity.generate().recipient().public_bytes()
        via_openssl = _x25519.exchange_with(scalar, peer, None)
        assert _x25519.exchange_with(scalar, peer, nacl.bindings) == via_openssl
        assert via_openssl[0] == _x25519.private_from_bytes(scalar).public_key().public_bytes_raw()
    high_bit = [p[:31] + bytes([p[31] | 0x80]) for p in _LOW_ORDER]
    for point in _LOW_ORDER + high_bit:
        for sodium in (None, nacl.bindings):
            with pytest.raises(ValueError, match="all zeros"):
                _x25519.exchange_with(os.urandom(32), point, sodium)


def test_x25519_recipients_wrap_for_their_identity_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    import nacl.bindings

    from keycourier.age import _x25519

    ident = age.X25519Identity.generate()
    for loaded in (True, False):
        if loaded:
            monkeypatch.setitem(sys.modules, "nacl.bindings", nacl.bindings)
        else:
            monkeypatch.delitem(sys.modules, "nacl.bindings", raising=False)
        # the seal path takes libsodium exactly when PyNaCl is loaded (its speed-up)
        assert _x25519._loaded_sodium() is (nacl.bindings if loaded else None)
        blob = age.encrypt([ident.recipient()], b"payload")
        assert age.decrypt([ident], blob) == b"payload"


def test_wrapping_while_another_thread_imports_pynacl_never_fails() -> None:
    """sys.modules holds nacl.bindings before its import has finished: a wrap on another
    thread at that moment must use OpenSSL, not a half-initialised module.
    The race is re-run 40 times in a fresh interpreter (PyNaCl's modules dropped each time)."""
    import subprocess
    import sys

    program = """
import os, sys, threading
from keycourier import age
recipient = age.X25519Identity.generate().recipient()
errors = []
for _ in range(40):
    for name in [m for m in sys.modules if m == "nacl" or m.startswith("nacl.")]:
        del sys.modules[name]
    done = threading.Event()
    def spin():
        while not done.is_set():
            try:
                recipient.wrap(os.urandom(16))
            except Exception as exc:
                errors.append(repr(exc))
                return
    thread = threading.Thread(target=spin)
    thread.start()
    import nacl.signing
    done.set()
    thread.join()
print(errors[:1])
"""
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == "[]"


def test_exchange_with_refuses_other_lengths_before_reaching_libsodium() -> None:
    import nacl.bindings

    from keycourier.age import _x25519

    for scalar, peer in ((bytes(31), bytes(32)), (bytes(32), bytes(33)), (b"", b"")):
        for sodium in (None, nacl.bindings):
            with pytest.raises(TypeError, match="32 bytes"):
                _x25519.exchange_with(scalar, peer, sodium)
