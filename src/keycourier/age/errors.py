"""Errors raised by the age engine.

Every failure to read an age file is an ``AgeError`` (an ``IntegrityError``,
exit code 4). The subclasses name the lowest layer that failed, as the age
test vectors do. Malformed keys or options given by the user are
``AgeUsageError`` (a ``UsageError``, exit code 2). Messages never contain
key material.
"""

from __future__ import annotations

from keycourier.errors import IntegrityError, UsageError


class AgeError(IntegrityError):
    """An age file could not be decrypted."""


class ArmorError(AgeError):
    """The ASCII armor around an age file is malformed."""


class HeaderError(AgeError):
    """The age header is malformed, unsupported or refused."""


class NoMatchError(AgeError):
    """No identity or passphrase given could unwrap the file key."""


class HmacError(AgeError):
    """The header MAC does not match: the header was changed."""


class PayloadError(AgeError):
    """The encrypted payload is truncated, extended or tampered with."""


class AgeUsageError(UsageError):
    """Bad arguments to the age engine (for example, no recipients)."""


class InvalidKeyError(AgeUsageError):
    """A recipient or identity string is malformed or of an unsupported type."""
