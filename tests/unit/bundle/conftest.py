from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime, timedelta

import pytest

from keycourier.bundle import Credentials, KeycourierIdentity, PolicyStamp, SealedBundle, seal
from keycourier.redact import Secret

ALNUM = string.ascii_letters + string.digits
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def qbo_credentials() -> Credentials:
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    return Credentials("quickbooks", client_id, Secret(secret))


@pytest.fixture(scope="session")
def sender() -> KeycourierIdentity:
    return KeycourierIdentity.generate(now=NOW)


@pytest.fixture(scope="session")
def receiver() -> KeycourierIdentity:
    return KeycourierIdentity.generate(now=NOW)


@pytest.fixture(scope="session")
def creds() -> Credentials:
    return qbo_credentials()


STAMP = PolicyStamp("sha256:" + "ab" * 32, "pass", ())


def make_bundle(
    sender: KeycourierIdentity,
    receiver: KeycourierIdentity,
    creds: Credentials,
    *,
    lifetime: timedelta = timedelta(days=7),
    now: datetime = NOW,
) -> SealedBundle:
    return seal(
        creds,
        sender=sender,
        recipients=[receiver.public().recipient],
        policy=STAMP,
        lifetime=lifetime,
        environment="production",
        partner="Acme Ltd",
        now=now,
    )


@pytest.fixture(scope="session")
def sealed(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> SealedBundle:
    return make_bundle(sender, receiver, creds)
