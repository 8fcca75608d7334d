"""X25519 key constructors without the start-up cost of cryptography's backend module.

``X25519PrivateKey.generate()`` and friends first import
``cryptography.hazmat.backends.openssl.backend`` (which pulls in the RSA, EC
and padding modules, about 8 ms) only to ask whether X25519 is supported.
``keycourier age encrypt`` is a short-lived process, so use the Rust binding
the public classes delegate to when it is there, and fall back to the public
API otherwise. The objects returned are the same types either way.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


def _binding() -> Any:  # noqa: ANN401 - an untyped native module
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.x25519
    except (ImportError, AttributeError):  # pragma: no cover - other cryptography builds
        return None


_RUST = _binding()


def generate() -> X25519PrivateKey:
    """A fresh key from 32 bytes of the OS CSPRNG, as age's reference does for ephemerals.

    Any 32 bytes are a valid X25519 scalar (clamped on use, RFC 7748). Taking
    them from ``os.urandom`` rather than ``generate_key`` skips the first-use
    set-up of OpenSSL's DRBG, about 0.3 ms of a short-lived process.
    """
    return private_from_bytes(os.urandom(32))


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    if _RUST is not None:
        key: X25519PrivateKey = _RUST.from_private_bytes(data)
        return key
    return X25519PrivateKey.from_private_bytes(data)  # pragma: no cover


def public_from_bytes(data: bytes) -> X25519PublicKey:
    if _RUST is not None:
        key: X25519PublicKey = _RUST.from_public_bytes(data)
        return key
    return X25519PublicKey.from_public_bytes(data)  # pragma: no cover


def ephemeral_exchange(peer: bytes) -> tuple[bytes, bytes]:
    """A fresh ephemeral key's public share and its shared secret with ``peer``.

    Raises ``ValueError`` when the shared secret is all zeros (``peer`` is a
    low-order point), as cryptography's ``exchange`` does.

    Building an OpenSSL private key derives its public key with the generic
    Montgomery ladder (about 28 us); libsodium's fixed-base multiplication uses
    a precomputed table (about 15 us), which is a tenth of a bundle seal. So
    when libsodium (PyNaCl) is already loaded in this process, as it is
    wherever bundles are signed, use it; never import it here, since that
    would add about 15 ms to the start-up of ``keycourier age encrypt``. Both
    give the same bytes (tests compare them).
    """
    return exchange_with(os.urandom(32), peer, _loaded_sodium())


def _loaded_sodium() -> Any:  # noqa: ANN401 - a module, or None
    """PyNaCl's bindings if they are fully imported in this process, else ``None``.

    A module is in ``sys.modules`` while it is still being imported (perhaps by
    another thread); its functions may not be bound yet, so that case counts as
    not loaded (importlib marks it with ``__spec__._initializing``).
    """
    module = sys.modules.get("nacl.bindings")
    spec = getattr(module, "__spec__", None)
    if spec is None or getattr(spec, "_initializing", False):
        return None
    return module


def exchange_with(scalar: bytes, peer: bytes, sodium: Any) -> tuple[bytes, bytes]:  # noqa: ANN401
    """``ephemeral_exchange`` for a given scalar, through libsodium's bindings or OpenSSL."""
    if len(scalar) != 32 or len(peer) != 32:
        # PyNaCl hands libsodium raw pointers without checking lengths: never pass others.
        raise TypeError("X25519 scalars and points are 32 bytes")
    try:
        if sodium is None:
            key = private_from_bytes(scalar)
            return key.public_key().public_bytes_raw(), key.exchange(public_from_bytes(peer))
        share: bytes = sodium.crypto_scalarmult_base(scalar)
        shared: bytes = sodium.crypto_scalarmult(scalar, peer)
    except (ValueError, RuntimeError):  # OpenSSL's and libsodium's word for an all-zero result
        raise ValueError("the X25519 shared secret is all zeros") from None
    return share, shared
