"""keycourier.age: the age v1 file format (age-encryption.org/v1), on ``cryptography``.

Recipients and identities: X25519 (``age1...`` / ``AGE-SECRET-KEY-1...``),
the ML-KEM-768 + X25519 hybrid (``age1pq1...`` / ``AGE-SECRET-KEY-PQ-1...``)
and scrypt passphrases. Files may be ASCII-armored; decryption detects armor.
Only this package touches the age primitives.

The names below load their module on first use (PEP 562): a bundle's parser
reads an age header with ``keycourier.age._header`` alone, and importing a
submodule runs this file first, so importing the engine here would load
``cryptography`` for ``keycourier inspect``, which decrypts nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keycourier.age._api import (
        decrypt,
        decrypt_stream,
        encrypt,
        encrypt_bytes_from_parts,
        encrypt_stream,
        encrypt_stream_from_parts,
    )
    from keycourier.age._header import Stanza
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

# name -> the module that defines it
_HOME = {
    "AgeError": "keycourier.age.errors",
    "AgeUsageError": "keycourier.age.errors",
    "ArmorError": "keycourier.age.errors",
    "HeaderError": "keycourier.age.errors",
    "HmacError": "keycourier.age.errors",
    "HybridIdentity": "keycourier.age.recipients",
    "HybridRecipient": "keycourier.age.recipients",
    "Identity": "keycourier.age.recipients",
    "InvalidKeyError": "keycourier.age.errors",
    "NoMatchError": "keycourier.age.errors",
    "PayloadError": "keycourier.age.errors",
    "Recipient": "keycourier.age.recipients",
    "ScryptIdentity": "keycourier.age.recipients",
    "ScryptRecipient": "keycourier.age.recipients",
    "Stanza": "keycourier.age._header",
    "X25519Identity": "keycourier.age.recipients",
    "X25519Recipient": "keycourier.age.recipients",
    "decrypt": "keycourier.age._api",
    "decrypt_stream": "keycourier.age._api",
    "encrypt": "keycourier.age._api",
    "encrypt_bytes_from_parts": "keycourier.age._api",
    "encrypt_stream": "keycourier.age._api",
    "encrypt_stream_from_parts": "keycourier.age._api",
    "parse_identities_file": "keycourier.age.recipients",
    "parse_identity": "keycourier.age.recipients",
    "parse_recipient": "keycourier.age.recipients",
    "parse_recipients_file": "keycourier.age.recipients",
}

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


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
