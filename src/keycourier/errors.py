"""The error hierarchy: one root, one subclass per documented exit code.

Messages and hints are shown to users verbatim, so they must never contain a
secret. Code that builds a message from user input passes it through
``keycourier.redact`` first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    CONFIG = 3
    INTEGRITY = 4
    AUTH = 5
    UNAVAILABLE = 6
    POLICY = 7


class Error(Exception):
    """Root of every error keycourier raises on purpose."""

    exit_code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, hints: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hints: tuple[str, ...] = tuple(hints)

    def __str__(self) -> str:
        return self.message


class UsageError(Error):
    """Bad command-line usage or an input that cannot be parsed as asked."""

    exit_code = ExitCode.USAGE


class ConfigError(Error):
    """A config file, policy file or environment variable is invalid."""

    exit_code = ExitCode.CONFIG


class IntegrityError(Error):
    """A bundle, file or record is malformed, tampered with, foreign or untrusted.

    Bundle opening raises exactly one message for every tamper case, so that
    the error does not become an oracle.
    """

    exit_code = ExitCode.INTEGRITY


class AuthError(Error):
    """Vault, the platform or the helper refused our credentials."""

    exit_code = ExitCode.AUTH


class UnavailableError(Error):
    """A backend could not be reached; the operation may be retried."""

    exit_code = ExitCode.UNAVAILABLE


class PolicyError(Error):
    """The handover policy rejected the request (or the bundle expired)."""

    exit_code = ExitCode.POLICY
