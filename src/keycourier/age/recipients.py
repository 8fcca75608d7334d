"""Recipient and identity types: X25519, scrypt (passphrase) and ML-KEM-768+X25519.

``Recipient.wrap`` turns a file key into stanzas; ``Identity.unwrap`` finds
and opens a stanza meant for it. ``unwrap`` returns ``None`` when nothing
matches and raises ``HeaderError`` for stanzas that the spec says must be
rejected. ML-KEM, HPKE and scrypt are imported only when used.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keycourier.age import _x25519
from keycourier.age._encoding import b64decode, b64encode, bech32_decode, bech32_encode
from keycourier.age._format import FILE_KEY_SIZE, hkdf
from keycourier.age._header import HYBRID_TYPE, X25519_TYPE, Stanza
from keycourier.age.errors import AgeUsageError, HeaderError, InvalidKeyError
from keycourier.redact import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.hpke import (
        MLKEM768X25519PrivateKey,
        MLKEM768X25519PublicKey,
        Suite,
    )

X25519_LABEL: Final = b"age-encryption.org/v1/X25519"
SCRYPT_TYPE: Final = "scrypt"
SCRYPT_LABEL: Final = b"age-encryption.org/v1/scrypt"
HYBRID_LABEL: Final = b"age-encryption.org/mlkem768x25519"
HYBRID_ENC_SIZE: Final = 1088 + 32
HYBRID_PUBLIC_SIZE: Final = 1184 + 32
WRAPPED_KEY_SIZE: Final = FILE_KEY_SIZE + 16
DEFAULT_WORK_FACTOR: Final = 18
MAX_WORK_FACTOR: Final = 22
_ZERO_NONCE: Final = b"\x00" * 12
_LOGN_RE: Final = re.compile(r"[1-9][0-9]*")

HRP_RECIPIENT: Final = "age"
HRP_IDENTITY: Final = "AGE-SECRET-KEY-"
HRP_PQ_RECIPIENT: Final = "age1pq"
HRP_PQ_IDENTITY: Final = "AGE-SECRET-KEY-PQ-"
_MAX_KEY_TEXT: Final = 4096


class Recipient(abc.ABC):
    """Something a file key can be encrypted to."""

    __slots__ = ()

    @abc.abstractmethod
    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Wrap ``file_key`` into one or more stanzas (fresh randomness each call)."""

    @abc.abstractmethod
    def to_string(self) -> str:
        """The public text form (``age1...``)."""

    #: Whether files to this recipient resist a future quantum computer.
    post_quantum: bool = False


class Identity(abc.ABC):
    """Something that can unwrap a file key from a header's stanzas."""

    __slots__ = ()

    @abc.abstractmethod
    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """The file key, or None when no stanza is for this identity."""

    @abc.abstractmethod
    def recipient(self) -> Recipient:
        """The recipient that encrypts to this identity."""

    @abc.abstractmethod
    def to_string(self) -> str:
        """The secret text form. Handle the result as a secret."""


def _wrap_key(key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)


def _unwrap_key(key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


def _decode_arg(arg: str, size: int, what: str) -> bytes:
    try:
        value = b64decode(arg.encode("ascii"))
    except ValueError:
        raise HeaderError(f"malformed {what}") from None
    if len(value) != size:
        raise HeaderError(f"malformed {what}: wrong length")
    return value


def check_stanza(stanza: Stanza) -> None:
    """Reject malformed stanzas of the native types, whatever identities are at hand."""
    if stanza.type == X25519_TYPE:
        if len(stanza.args) != 1:
            raise HeaderError("an X25519 stanza has exactly one argument after its type")
        _decode_arg(stanza.args[0], 32, "X25519 share")
    elif stanza.type == HYBRID_TYPE:
        if len(stanza.args) != 1:
            raise HeaderError("an mlkem768x25519 stanza has exactly one argument after its type")
        _decode_arg(stanza.args[0], HYBRID_ENC_SIZE, "mlkem768x25519 encapsulated key")
    elif stanza.type == SCRYPT_TYPE:
        if len(stanza.args) != 2:
            raise HeaderError("an scrypt stanza has exactly two arguments after its type")
        _decode_arg(stanza.args[0], 16, "scrypt salt")
        if not _LOGN_RE.fullmatch(stanza.args[1]) or len(stanza.args[1]) > 2:
            raise HeaderError("malformed scrypt work factor")
    else:
        return
    if len(stanza.body) != WRAPPED_KEY_SIZE:
        raise HeaderError(f"the {stanza.type} stanza body is not {WRAPPED_KEY_SIZE} bytes")


# -- X25519 ------------------------------------------------------------------------


class X25519Recipient(Recipient):
    __slots__ = ("_public",)

    def __init__(self, public: bytes) -> None:
        if len(public) != 32:
            raise InvalidKeyError("an X25519 recipient is 32 bytes")
        self._public = bytes(public)

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        hrp, data = _decode_key(text, "recipient")
        if hrp != HRP_RECIPIENT or len(data) != 32:
            raise InvalidKeyError("malformed X25519 recipient (expected age1...)")
        return cls(data)

    def public_bytes(self) -> bytes:
        return self._public

    def to_string(self) -> str:
        return bech32_encode(HRP_RECIPIENT, self._public)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        try:
            share, shared = _x25519.ephemeral_exchange(self._public)
        except ValueError:  # an all-zero shared secret: the recipient is a low-order point
            raise InvalidKeyError(
                f"the recipient {self.to_string()} is not a usable X25519 public key "
                "(a low-order point)"
            ) from None
        key = hkdf(shared, share + self._public, X25519_LABEL)
        return [Stanza(X25519_TYPE, (b64encode(share).decode("ascii"),), _wrap_key(key, file_key))]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash((X25519_TYPE, self._public))

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_string()})"


class X25519Identity(Identity):
    __slots__ = ("_key", "_public")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise InvalidKeyError("an X25519 identity is 32 bytes")
        self._key = _x25519.private_from_bytes(secret)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        hrp, data = _decode_key(text, "identity")
        if hrp != HRP_IDENTITY or len(data) != 32:
            raise InvalidKeyError("malformed X25519 identity (expected AGE-SECRET-KEY-1...)")
        return cls(data)

    def to_string(self) -> str:
        return bech32_encode(HRP_IDENTITY, self._key.private_bytes_raw()).upper()

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != X25519_TYPE:
                continue
            check_stanza(stanza)
            share = _decode_arg(stanza.args[0], 32, "X25519 share")
            try:
                shared = self._key.exchange(_x25519.public_from_bytes(share))
            except ValueError:
                raise HeaderError("the X25519 share is a low-order point") from None
            key = hkdf(shared, share + self._public, X25519_LABEL)
            file_key = _unwrap_key(key, stanza.body)
            if file_key is not None:
                return file_key
        return None

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient().to_string()})"


# -- scrypt ------------------------------------------------------------------------


def _is_secret(value: object) -> bool:

    return isinstance(value, Secret)


def _scrypt_key(passphrase: Secret, salt: bytes, log_n: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kdf = Scrypt(salt=SCRYPT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase.reveal_bytes())


def _check_work_factor(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORK_FACTOR:
        raise AgeUsageError(f"the scrypt {what} must be an integer from 1 to {MAX_WORK_FACTOR}")
    return value


class ScryptRecipient(Recipient):
    """Passphrase encryption. A file encrypted to it must have no other recipient."""

    __slots__ = ("_passphrase", "_work_factor")

    def __init__(self, passphrase: Secret, work_factor: int = DEFAULT_WORK_FACTOR) -> None:
        if not _is_secret(passphrase) or not passphrase:
            raise AgeUsageError("a passphrase is required (as a non-empty Secret)")
        self._passphrase = passphrase
        self._work_factor = _check_work_factor(work_factor, "work factor")

    @property
    def work_factor(self) -> int:
        return self._work_factor

    def wrap(self, file_key: bytes) -> list[Stanza]:
        return [self._wrap_with(file_key, os.urandom(16))]

    def _wrap_with(self, file_key: bytes, salt: bytes) -> Stanza:
        key = _scrypt_key(self._passphrase, salt, self._work_factor)
        args = (b64encode(salt).decode("ascii"), str(self._work_factor))
        return Stanza(SCRYPT_TYPE, args, _wrap_key(key, file_key))

    def to_string(self) -> str:
        raise AgeUsageError("a passphrase recipient has no text form")

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self._work_factor})"


class ScryptIdentity(Identity):
    """Passphrase decryption; refuses work factors above ``max_work_factor``."""

    __slots__ = ("_max", "_passphrase")

    def __init__(self, passphrase: Secret, max_work_factor: int = MAX_WORK_FACTOR) -> None:
        if not _is_secret(passphrase) or not passphrase:
            raise AgeUsageError("a passphrase is required (as a non-empty Secret)")
        self._passphrase = passphrase
        self._max = _check_work_factor(max_work_factor, "maximum work factor")

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != SCRYPT_TYPE:
                continue
            check_stanza(stanza)
            if len(stanzas) != 1:
                raise HeaderError("an scrypt stanza must be the only stanza in the header")
            salt = _decode_arg(stanza.args[0], 16, "scrypt salt")
            log_n = int(stanza.args[1])
            if log_n > self._max:
                raise HeaderError(
                    f"the scrypt work factor {log_n} is above the limit of {self._max}",
                    hints=["a file from a trusted source never needs more than 22"],
                )
            return _unwrap_key(_scrypt_key(self._passphrase, salt, log_n), stanza.body)
        return None

    def recipient(self) -> ScryptRecipient:
        return ScryptRecipient(self._passphrase)

    def to_string(self) -> str:
        raise AgeUsageError("a passphrase identity has no text form")

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self._max})"


# -- ML-KEM-768 + X25519 hybrid ----------------------------------------------------


def _suite() -> Suite:
    from cryptography.hazmat.primitives import hpke

    return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class HybridRecipient(Recipient):
    """``age1pq1...``: an ML-KEM-768 encapsulation key followed by an X25519 key."""

    __slots__ = ("_key", "_public")
    post_quantum = True

    def __init__(self, public: bytes) -> None:
        from cryptography.hazmat.primitives import hpke
        from cryptography.hazmat.primitives.asymmetric import mlkem

        if len(public) != HYBRID_PUBLIC_SIZE:
            raise InvalidKeyError("a hybrid recipient is 1216 bytes")
        try:
            self._key: MLKEM768X25519PublicKey = hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(public[:1184]),
                _x25519.public_from_bytes(public[1184:]),
            )
        except ValueError:
            raise InvalidKeyError("malformed hybrid recipient key") from None
        self._public = bytes(public)

    @classmethod
    def parse(cls, text: str) -> HybridRecipient:
        hrp, data = _decode_key(text, "recipient")
        if hrp != HRP_PQ_RECIPIENT or len(data) != HYBRID_PUBLIC_SIZE:
            raise InvalidKeyError("malformed hybrid recipient (expected age1pq1...)")
        return cls(data)

    def public_bytes(self) -> bytes:
        return self._public

    def to_string(self) -> str:
        return bech32_encode(HRP_PQ_RECIPIENT, self._public)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        try:
            sealed = _suite().encrypt(file_key, self._key, info=HYBRID_LABEL)
        except ValueError:  # the X25519 half is a low-order point (all-zero shared secret)
            raise InvalidKeyError(
                "the hybrid recipient's X25519 key is not usable (a low-order point)"
            ) from None
        enc, body = sealed[:HYBRID_ENC_SIZE], sealed[HYBRID_ENC_SIZE:]
        return [Stanza(HYBRID_TYPE, (b64encode(enc).decode("ascii"),), body)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridRecipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash((HYBRID_TYPE, self._public))

    def __repr__(self) -> str:
        return f"HybridRecipient({self.to_string()[:24]}…)"


class HybridIdentity(Identity):
    """``AGE-SECRET-KEY-PQ-1...``: a 32-byte seed expanded as in X-Wing (SHAKE256)."""

    __slots__ = ("_key", "_public", "_seed", "_x25519")

    def __init__(self, seed: bytes) -> None:
        import hashlib

        from cryptography.hazmat.primitives import hpke
        from cryptography.hazmat.primitives.asymmetric import mlkem

        if len(seed) != 32:
            raise InvalidKeyError("a hybrid identity seed is 32 bytes")
        expanded = hashlib.shake_256(seed).digest(96)
        ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = _x25519.private_from_bytes(expanded[64:])
        self._key: MLKEM768X25519PrivateKey = hpke.MLKEM768X25519PrivateKey(ml, self._x25519)
        self._public = (
            ml.public_key().public_bytes_raw() + self._x25519.public_key().public_bytes_raw()
        )
        self._seed = Secret(seed)

    @classmethod
    def generate(cls) -> HybridIdentity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> HybridIdentity:
        hrp, data = _decode_key(text, "identity")
        if hrp != HRP_PQ_IDENTITY or len(data) != 32:
            raise InvalidKeyError("malformed hybrid identity (expected AGE-SECRET-KEY-PQ-1...)")
        return cls(data)

    def to_string(self) -> str:
        return bech32_encode(HRP_PQ_IDENTITY, self._seed.reveal_bytes()).upper()

    def recipient(self) -> HybridRecipient:
        return HybridRecipient(self._public)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != HYBRID_TYPE:
                continue
            check_stanza(stanza)
            enc = _decode_arg(stanza.args[0], HYBRID_ENC_SIZE, "mlkem768x25519 encapsulated key")
            try:
                # HPKE would only report a bad tag; the spec makes an all-zero
                # X25519 shared secret a hard error, so check it first.
                self._x25519.exchange(_x25519.public_from_bytes(enc[1088:]))
            except ValueError:
                raise HeaderError("the hybrid X25519 share is a low-order point") from None
            try:
                return _suite().decrypt(enc + stanza.body, self._key, info=HYBRID_LABEL)
            except InvalidTag:
                continue
        return None

    def __repr__(self) -> str:
        return f"HybridIdentity(recipient={self.recipient().to_string()[:24]}…)"


# -- parsing -----------------------------------------------------------------------


def _decode_key(text: str, what: str) -> tuple[str, bytes]:
    if not isinstance(text, str) or len(text) > _MAX_KEY_TEXT:
        raise InvalidKeyError(f"malformed age {what}")
    try:
        return bech32_decode(text)
    except ValueError:
        raise InvalidKeyError(f"malformed age {what} (bad Bech32 encoding)") from None


def parse_recipient(text: str) -> Recipient:
    """Parse ``age1...`` (X25519) or ``age1pq1...`` (hybrid)."""
    if not isinstance(text, str):
        raise InvalidKeyError("a recipient must be text")
    if text.startswith(HRP_PQ_RECIPIENT + "1"):
        return HybridRecipient.parse(text)
    if text.startswith(HRP_RECIPIENT + "1"):
        return X25519Recipient.parse(text)
    if text.startswith(("ssh-", "age1tag", "age1")):
        raise InvalidKeyError(
            "unsupported recipient type",
            hints=["keycourier supports age1... (X25519) and age1pq1... (hybrid) recipients"],
        )
    raise InvalidKeyError(
        "malformed recipient", hints=["a recipient looks like age1... or age1pq1..."]
    )


def parse_identity(text: str) -> Identity:
    """Parse ``AGE-SECRET-KEY-1...`` (X25519) or ``AGE-SECRET-KEY-PQ-1...`` (hybrid)."""
    if not isinstance(text, str):
        raise InvalidKeyError("an identity must be text")
    if text.startswith(HRP_PQ_IDENTITY + "1"):
        return HybridIdentity.parse(text)
    if text.startswith(HRP_IDENTITY + "1"):
        return X25519Identity.parse(text)
    if text.startswith("AGE-PLUGIN-"):
        raise InvalidKeyError("age plugin identities are not supported")
    raise InvalidKeyError(
        "malformed identity", hints=["an identity looks like AGE-SECRET-KEY-1..."]
    )


_MAX_KEY_FILE: Final = 1024 * 1024


def _key_lines(text: str, what: str) -> list[tuple[int, str]]:
    if len(text) > _MAX_KEY_FILE:
        raise AgeUsageError(f"the {what} file is larger than {_MAX_KEY_FILE} bytes")
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    if not out:
        raise AgeUsageError(f"the {what} file contains no {what}")
    return out


def parse_recipients_file(text: str) -> list[Recipient]:
    """One recipient per line; blank lines and ``#`` comments are ignored."""
    result = []
    for number, line in _key_lines(text, "recipients"):
        try:
            result.append(parse_recipient(line))
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"line {number}: {exc.message}", hints=exc.hints) from None
    return result


def parse_identities_file(text: str) -> list[Identity]:
    """One identity per line; blank lines and ``#`` comments are ignored."""
    if text.lstrip().startswith("-----BEGIN AGE ENCRYPTED FILE-----") or text.startswith(
        "age-encryption.org/"
    ):
        raise InvalidKeyError("passphrase-protected identity files are not supported")
    result = []
    for number, line in _key_lines(text, "identities"):
        try:
            result.append(parse_identity(line))
        except InvalidKeyError as exc:
            # Never echo the line: it may be (most of) a secret key.
            raise InvalidKeyError(f"line {number}: {exc.message}", hints=exc.hints) from None
    return result
