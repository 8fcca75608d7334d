"""Which KV paths keycourier accepts, and where ``ingest`` may store handed-over credentials."""

from __future__ import annotations

from keycourier.errors import ConfigError, UsageError

_SAFE_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@=+")

# Where `ingest` stores handed-over credentials (policies/vault/receiver.hcl): only the
# receiver may write there and no shipped policy lets any role read the data back.
INGEST_PREFIX = "handed-over"
# keycourier's provenance records (every role reads them) and the platform API
# credentials the token helper reads: never a place for handed-over credentials
RESERVED_PREFIXES = ("keycourier", "platform")


def check_path(path: str, what: str = "Vault path") -> str:
    """Refuse empty, absolute, traversing or oddly-charactered KV paths."""
    if not path or len(path) > 512:
        raise ConfigError(f"{what} must be 1-512 characters")
    if path.startswith("/") or path.endswith("/") or "//" in path:
        raise ConfigError(f"{what} must be relative, without empty segments")
    if any(seg in {".", ".."} for seg in path.split("/")):
        raise ConfigError(f"{what} must not contain '.' or '..' segments")
    if not set(path) <= _SAFE_PATH:
        raise ConfigError(f"{what} contains characters outside [A-Za-z0-9-_./:@=+]")
    return path


def check_ingest_path(path: str) -> str:
    """A --vault-path for `ingest`: a valid KV path under ``handed-over/`` (UsageError else)."""
    try:
        check_path(path, "--vault-path")
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    first = path.split("/", 1)[0]
    if first in RESERVED_PREFIXES:
        raise UsageError(
            f"--vault-path {path[:80]!r} is under {first}/, which other roles can read "
            f"({'provenance records' if first == 'keycourier' else 'the token helper'})",
            hints=[
                f"store handed-over credentials under {INGEST_PREFIX}/, e.g. "
                f"{INGEST_PREFIX}/acme/quickbooks"
            ],
        )
    if first != INGEST_PREFIX or "/" not in path:
        raise UsageError(
            f"--vault-path must be under {INGEST_PREFIX}/ (the receiver's prefix in "
            "policies/vault/receiver.hcl, which no other role can read)",
            hints=[f"for example --vault-path {INGEST_PREFIX}/acme/quickbooks"],
        )
    return path
