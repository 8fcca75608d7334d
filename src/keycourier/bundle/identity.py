"""keycourier identities: an age decryption key plus an Ed25519 signing key.

File format (text, created 0600)::

    # keycourier identity v1
    # created: 2026-11-22T10:00:00Z
    # recipient: age1...
    # signing-key: ed25519:<base64>
    # signing-fingerprint: kc1:<hex>
    <body>

The ``#`` lines are public and informational; the body holds the keys. A
protected body is an armored age file encrypted to a passphrase (scrypt); an
unprotected body (only on explicit request) is the canonical JSON itself.
Loading always re-derives the public parts from the secret keys and rejects
a file whose header does not match them.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from keycourier import age
from keycourier.bundle.canonical import canonical_json, parse_canonical
from keycourier.bundle.model import format_time
from keycourier.errors import IntegrityError, UsageError
from keycourier.files import read_limited
from keycourier.redact import Secret, fingerprint

IDENTITY_FORMAT = "keycourier-identity/v1"
HEADER_LINE = "# keycourier identity v1"
MAX_IDENTITY_BYTES = 64 * 1024
DEFAULT_WORK_FACTOR = 18


def signing_key_text(public: bytes) -> str:
    return "ed25519:" + base64.b64encode(public).decode("ascii")


def signing_fingerprint(public: bytes) -> str:
    return fingerprint("signing-key", public)


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What anyone may know about an identity."""

    recipient: str
    signing_key: str
    signing_fingerprint: str
    created_at: str | None = None


class KeycourierIdentity:
    """A loaded identity. Its repr shows only public parts."""

    __slots__ = ("_age", "_created", "_public", "_seed", "_signer")

    def __init__(self, age_identity: age.Identity, seed: Secret, created_at: datetime) -> None:
        if len(seed) != 32:
            raise UsageError("an Ed25519 seed is 32 bytes")
        self._age = age_identity
        self._seed = seed
        self._created = created_at
        self._signer: tuple[bytes, Secret] | None = None
        self._public: PublicIdentity | None = None

    @classmethod
    def generate(cls, *, pq: bool = False, now: datetime | None = None) -> KeycourierIdentity:
        import os

        ident: age.Identity = age.HybridIdentity.generate() if pq else age.X25519Identity.generate()
        return cls(ident, Secret(os.urandom(32)), now or datetime.now(UTC))

    @property
    def age_identity(self) -> age.Identity:
        return self._age

    @property
    def created_at(self) -> datetime:
        return self._created

    def _signing_key(self) -> tuple[bytes, Secret]:
        # Derived once per loaded identity: the public key and libsodium's 64-byte
        # secret key (as secret as the seed, so wrapped), the derivation PyNaCl's
        # SigningKey makes; signing through the binding skips its wrapper objects.
        if self._signer is None:
            from nacl.bindings import crypto_sign_seed_keypair

            public, expanded = crypto_sign_seed_keypair(self._seed.reveal_bytes())
            self._signer = (public, Secret(expanded))
        return self._signer

    @property
    def signing_public(self) -> bytes:
        return self._signing_key()[0]

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (``SigningKey.sign(...).signature``)."""
        from nacl.bindings import crypto_sign

        return crypto_sign(message, self._signing_key()[1].reveal_bytes())[:64]

    def derive_key(self, label: bytes) -> bytes:
        """A 32-byte key for one use (``label``), derived from the signing seed:
        HMAC-SHA256(seed, ``keycourier-derive/v1\n`` || label). Only this identity can
        compute it, and one use's key says nothing about another's or about the seed."""
        import hashlib
        import hmac

        return hmac.new(
            self._seed.reveal_bytes(), b"keycourier-derive/v1\n" + label, hashlib.sha256
        ).digest()

    def public(self) -> PublicIdentity:
        if self._public is None:
            pub = self.signing_public
            self._public = PublicIdentity(
                recipient=self._age.recipient().to_string(),
                signing_key=signing_key_text(pub),
                signing_fingerprint=signing_fingerprint(pub),
                created_at=format_time(self._created),
            )
        return self._public

    def export_age(self) -> str:
        """A stock age identity file (``AGE-SECRET-KEY-1...``), for the age tool."""
        pub = self.public()
        return (
            f"# created: {pub.created_at}\n# public key: {pub.recipient}\n{self._age.to_string()}\n"
        )

    def __repr__(self) -> str:
        return f"KeycourierIdentity(recipient={self.public().recipient[:16]}…)"

    # -- serialisation ---------------------------------------------------------

    def _body(self) -> bytes:
        return canonical_json(
            {
                "format": IDENTITY_FORMAT,
                "age_identity": self._age.to_string(),
                "signing_seed": base64.b64encode(self._seed.reveal_bytes()).decode("ascii"),
                "created_at": format_time(self._created),
            }
        )

    def to_file(
        self, passphrase: Secret | None, *, work_factor: int = DEFAULT_WORK_FACTOR
    ) -> bytes:
        """Serialise; ``passphrase`` None writes an unprotected file."""
        pub = self.public()
        header = (
            f"{HEADER_LINE}\n# created: {pub.created_at}\n# recipient: {pub.recipient}\n"
            f"# signing-key: {pub.signing_key}\n# signing-fingerprint: {pub.signing_fingerprint}\n"
        )
        if passphrase is None:
            body = self._body() + b"\n"
        else:
            body = age.encrypt(
                [age.ScryptRecipient(passphrase, work_factor=work_factor)], self._body(), armor=True
            )
        return header.encode("ascii") + body


_HEADER_RE = re.compile(r"^# ([a-z-]+): (.+)\Z")


def read_identity_file(path: str | os.PathLike[str]) -> bytes:
    """An identity file's bytes, at most one byte over the limit: the parsers here
    refuse an oversized identity in their own terms."""
    return read_limited(path, f"identity {path}", MAX_IDENTITY_BYTES, refuse_larger=False)


def read_public(data: bytes) -> PublicIdentity:
    """Read the public header of an identity file (no passphrase needed, not verified)."""
    fields = _split(data)[0]
    try:
        return PublicIdentity(
            recipient=fields["recipient"],
            signing_key=fields["signing-key"],
            signing_fingerprint=fields["signing-fingerprint"],
            created_at=fields.get("created"),
        )
    except KeyError as exc:
        raise UsageError(f"identity file header lacks '{exc.args[0]}'") from None


def _split(data: bytes) -> tuple[dict[str, str], bytes]:
    if len(data) > MAX_IDENTITY_BYTES:
        raise UsageError("identity file is too large")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError("this is not a keycourier identity file") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0] != HEADER_LINE:
        raise UsageError(
            "this is not a keycourier identity file",
            hints=["create one with 'keycourier identity new -o FILE'"],
        )
    fields: dict[str, str] = {}
    i = 1
    while i < len(lines) and lines[i].startswith("#"):
        m = _HEADER_RE.match(lines[i])
        if m:
            fields[m.group(1)] = m.group(2)
        i += 1
    body = "\n".join(lines[i:]).strip().encode("ascii")
    return fields, body


def is_protected(data: bytes) -> bool:
    return _split(data)[1].startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")


def load_identity(data: bytes, passphrase: Secret | None) -> KeycourierIdentity:
    """Load an identity file. Protected files need the passphrase."""
    fields, body = _split(data)
    bad_file = IntegrityError("the identity file is damaged or its header does not match its keys")
    if body.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----"):
        if passphrase is None:
            raise UsageError("this identity is protected by a passphrase")
        try:
            plain = age.decrypt([age.ScryptIdentity(passphrase)], body)
        except age.NoMatchError:
            raise IntegrityError(
                "wrong passphrase for this identity file",
                hints=[
                    "the passphrase comes from --passphrase-file, KEYCOURIER_PASSPHRASE or a prompt"
                ],
            ) from None
        except age.AgeError:
            raise bad_file from None
    else:
        plain = body
    obj = parse_canonical(plain, limit=MAX_IDENTITY_BYTES, error=bad_file)
    if set(obj) != {"format", "age_identity", "signing_seed", "created_at"}:
        raise bad_file
    if obj["format"] != IDENTITY_FORMAT:
        raise bad_file
    try:
        ident = age.parse_identity(str(obj["age_identity"]))
        seed = base64.b64decode(str(obj["signing_seed"]), validate=True)
        created = datetime.strptime(str(obj["created_at"]), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )
    except (ValueError, age.AgeError, UsageError):
        raise bad_file from None
    if len(seed) != 32:
        raise bad_file
    loaded = KeycourierIdentity(ident, Secret(seed), created)
    pub = loaded.public()
    expected = {
        "recipient": pub.recipient,
        "signing-key": pub.signing_key,
        "signing-fingerprint": pub.signing_fingerprint,
    }
    for key, value in expected.items():
        if fields.get(key) != value:
            raise bad_file
    return loaded
