from __future__ import annotations

import pytest

from keycourier.bundle import KeycourierIdentity, is_protected, load_identity, read_public
from keycourier.errors import IntegrityError, UsageError
from keycourier.redact import Secret
from tests.support.bundles import NOW


def test_protected_round_trip() -> None:
    ident = KeycourierIdentity.generate(now=NOW)
    data = ident.to_file(Secret("correct horse"), work_factor=10)
    assert is_protected(data)
    assert ident.age_identity.to_string().encode() not in data
    loaded = load_identity(data, Secret("correct horse"))
    assert loaded.public() == ident.public()
    assert read_public(data) == ident.public()


def test_wrong_passphrase_is_refused() -> None:
    data = KeycourierIdentity.generate(now=NOW).to_file(Secret("right"), work_factor=10)
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        load_identity(data, Secret("wrong"))
    with pytest.raises(UsageError, match="protected"):
        load_identity(data, None)


def test_unprotected_round_trip_and_header_tamper() -> None:
    ident = KeycourierIdentity.generate(now=NOW)
    data = ident.to_file(None)
    assert not is_protected(data)
    assert load_identity(data, None).public() == ident.public()
    other = KeycourierIdentity.generate(now=NOW).public().recipient
    tampered = data.replace(ident.public().recipient.encode(), other.encode())
    with pytest.raises(IntegrityError):
        load_identity(tampered, None)


def test_pq_identity() -> None:
    ident = KeycourierIdentity.generate(pq=True, now=NOW)
    assert ident.public().recipient.startswith("age1pq1")
    assert load_identity(ident.to_file(None), None).public() == ident.public()


def test_repr_hides_keys() -> None:
    ident = KeycourierIdentity.generate(now=NOW)
    assert "SECRET" not in repr(ident)
    assert ident.age_identity.to_string() not in repr(ident)


def test_not_an_identity_file() -> None:
    with pytest.raises(UsageError, match="not a keycourier identity"):
        load_identity(b"AGE-SECRET-KEY-1XYZ\n", None)
