"""keycourier.age: the age v1 file format (age-encryption.org/v1), on ``cryptography``.

Recipients and identities: X25519 (``age1...`` / ``AGE-SECRET-KEY-1...``),
the ML-KEM-768 + X25519 hybrid (``age1pq1...`` / ``AGE-SECRET-KEY-PQ-1...``)
and scrypt passphrases. Files may be ASCII-armored; decryption detects armor.
Only this package touches the age primitives.
"""

from keycourier.age._api import (
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_bytes_from_parts,
    encrypt_stream,
    encrypt_stream_from_parts,
)
from keycourier.age._format import Stanza
from keycourier.age.errors import (
    AgeError,
    AgeUsageError,
    ArmorError,
    HeaderError,
    HmacError,
    InvalidKeyError,
    NoMatchError,
    PayloadError,
)
from keycourier.age.recipients import (
    HybridIdentity,
    HybridRecipient,
    Identity,
    Recipient,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
    parse_identities_file,
    parse_identity,
    parse_recipient,
    parse_recipients_file,
)

__all__ = [
    "AgeError",
    "AgeUsageError",
    "ArmorError",
    "HeaderError",
    "HmacError",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "InvalidKeyError",
    "NoMatchError",
    "PayloadError",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_bytes_from_parts",
    "encrypt_stream",
    "encrypt_stream_from_parts",
    "parse_identities_file",
    "parse_identity",
    "parse_recipient",
    "parse_recipients_file",
]
