from __future__ import annotations

import pytest

from keycourier.bundle import Credentials, KeycourierIdentity, SealedBundle
from tests.support.bundles import NOW, make_bundle, qbo_credentials


@pytest.fixture(scope="session")
def sender() -> KeycourierIdentity:
    return KeycourierIdentity.generate(now=NOW)


@pytest.fixture(scope="session")
def receiver() -> KeycourierIdentity:
    return KeycourierIdentity.generate(now=NOW)


@pytest.fixture(scope="session")
def creds() -> Credentials:
    return qbo_credentials()


@pytest.fixture(scope="session")
def sealed(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> SealedBundle:
    return make_bundle(sender, receiver, creds)
