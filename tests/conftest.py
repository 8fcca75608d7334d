"""Suite-wide fixtures: hypothesis profiles, a real OpenBao dev server, and the platform
stand-in with the Monite client the helper tests log in with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.gotools import TlogCheck, build_tlogcheck
from tests.support.helper_server import MONITE_ID, MONITE_SECRET
from tests.support.openbao import BaoServer, start_dev_server
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

# Ordinary property tests run a few hundred examples; the parser fuzz tests ask
# for FUZZ_EXAMPLES explicitly (tests/support/fuzz.py): 10,000 each in CI.
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

VECTORS = Path(__file__).parent / "vectors" / "age"


@pytest.fixture(scope="session")
def bao_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """One real ``bao server -dev`` for the whole session, stopped by PID at the end."""
    server = start_dev_server(tmp_path_factory.mktemp("bao-dev"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def standin() -> Iterator[RunningStandin]:
    """The platform stand-in on a free loopback port, knowing the client MONITE_ID (a test
    module that needs other clients defines its own ``standin``)."""
    with start_standin(StandinState(clients={MONITE_ID: MONITE_SECRET})) as running:
        yield running


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the real ~/.config and ~/.local/share."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for var in (
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "KEYCOURIER_CONFIG",
        "KEYCOURIER_LEDGER",
        "KEYCOURIER_POLICY",
        "KEYCOURIER_PASSPHRASE",
        "KEYCOURIER_HELPER_URL",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def go_tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> TlogCheck:
    """Go's note and tlog packages, built once, as an independent verifier."""
    return build_tlogcheck(tmp_path_factory.mktemp("go-tlogcheck"))
