"""A non-dev OpenBao with raft storage (init with 1 key share, unseal), restarted mid-test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier import config
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.mirror import HANDOVERS
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.state import bundle_state
from keycourier.vault.client import connect
from keycourier.vault.kv import kv_list
from tests.support.openbao import (
    BaoServer,
    _launch_raft,
    _wait_active,
    restart_raft_server,
    start_raft_server,
    unseal,
    wait_http,
)


@pytest.fixture(scope="module")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    server = start_raft_server(tmp_path_factory.mktemp("bao-raft"))
    try:
        yield server
    finally:
        server.stop()


def ev(kind: EventType, bid: str, **data: object) -> Event:
    return Event(type=kind, at=datetime.now(UTC), actor="kc1:alice", bundle_id=bid, data=data)


def test_records_survive_a_restart(raft: BaoServer, tmp_path: Path) -> None:
    settings = config.load(
        ledger_path=tmp_path / "l.db",
        env={"HOME": str(tmp_path), "VAULT_ADDR": raft.addr, "VAULT_TOKEN": raft.token},
    )
    with open_recorder(settings) as rec:
        assert rec.record(ev(EventType.SEALED, "kcb-raft")).vault_status == VaultStatus.RECORDED
        assert rec.record(ev(EventType.OPENED, "kcb-raft")).vault_status == VaultStatus.RECORDED
    restart_raft_server(raft)
    with open_recorder(settings) as rec:
        assert rec.record(ev(EventType.INGESTED, "kcb-raft")).vault_status == VaultStatus.RECORDED
        report = rec.verify(vault=True)
        assert report.ok, report.first_break
        assert report.vault_records_checked == 3
    client = connect(settings)
    assert len(kv_list(client, "secret", f"{HANDOVERS}/kcb-raft/events")) == 3


def test_stopped_server_then_sync(raft: BaoServer, tmp_path: Path) -> None:
    settings = config.load(
        ledger_path=tmp_path / "l.db",
        env={"HOME": str(tmp_path), "VAULT_ADDR": raft.addr, "VAULT_TOKEN": raft.token},
    )
    with open_recorder(settings) as rec:
        assert rec.record(ev(EventType.SEALED, "kcb-raft2")).vault_status == VaultStatus.RECORDED
    raft.stop()
    try:
        with open_recorder(settings) as rec:
            out = rec.record(ev(EventType.REVOKED, "kcb-raft2", reason="wrong recipient"))
            assert out.vault_status == VaultStatus.PENDING
    finally:
        raft.proc = _launch_raft(
            raft.workdir, int(str(raft.extra["port"])), int(str(raft.extra["cluster_port"]))
        )
        wait_http(f"{raft.addr}/v1/sys/health", ok=(200, 429, 472, 473, 501, 503))
        unseal(raft)
        _wait_active(raft.addr)
    with open_recorder(settings) as rec:
        report = rec.sync()
        assert report.delivered == 1
        assert report.remaining == 0
        assert rec.verify(vault=True).ok
        assert bundle_state(rec, "kcb-raft2").revoked == "wrong recipient"
