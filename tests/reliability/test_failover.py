"""Failover: a three-node OpenBao raft cluster loses its leader during recording.

keycourier talks to one VAULT_ADDR. Here it points at a standby that survives:
with ``disable_standby_reads = true`` an OpenBao standby forwards every request
(reads and writes) to the active node, as Vault OSS standbys do. The leader is
SIGKILLed (by PID) part-way through the recordings; while the cluster elects a
new leader, events stay pending in the local ledger; ``keycourier sync`` then
delivers them, and a census read over plain HTTP finds every record in Vault
exactly once and identical to the ledger.

Recordings are made in batches, each with its own recorder (as separate CLI
invocations would), and after the kill they are spread over AFTER_KILL seconds,
so recording resumes (straight to Vault) once the new leader is up.

Knobs (scripts/reliability sets them): KC_FAILOVER_RECORDS (1000).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier import config
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.service import open_recorder
from tests.support.raft_cluster import RaftCluster, census, health

BATCH = 10
AFTER_KILL = 8.0  # seconds of recording after the leader is killed (elections take 2-3 s)


def health_status(addr: str) -> int:
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def kc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keycourier", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    running = RaftCluster.start(tmp_path_factory.mktemp("cluster"), size=3)
    try:
        yield running
    finally:
        running.stop_all()


def heal(cluster: RaftCluster) -> None:
    """Start every killed node again so the next test has three voters."""
    for node in cluster.nodes:
        if not node.running:
            cluster.restart(node)
    cluster.wait_leader(timeout=60)
    cluster.wait_peers(len(cluster.nodes))


def test_standbys_forward_reads_and_writes(cluster: RaftCluster, tmp_path: Path) -> None:
    """With disable_standby_reads = true, keycourier can use any node: a record written
    through one standby is read back at once, identical, through the other; the health
    endpoint tells a load balancer which node is active (200) and which are standbys (429)."""
    leader = cluster.wait_leader()
    first, second = (n for n in cluster.nodes if n is not leader)
    for node in (first, second):
        cluster.wait_serving(node)
    codes = {n.name: health_status(n.addr) for n in cluster.nodes}
    assert codes == {n.name: 200 if n is leader else 429 for n in cluster.nodes}
    ledger = tmp_path / "ledger.db"
    settings = config.load(
        ledger_path=ledger, env={"HOME": str(tmp_path), **cluster.vault_env(first)}
    )
    tag = secrets.token_hex(4)
    with open_recorder(settings) as rec:
        for i in range(8):
            out = rec.record(event_for(i, datetime.now(UTC), tag))
            assert out.vault_status == VaultStatus.RECORDED, out.detail
    found = census(ledger, second.addr, cluster.root_token)
    assert found.exact, found
    assert found.versions == found.events == 8


def test_standby_redirect_during_election_keeps_event_pending(
    cluster: RaftCluster, tmp_path: Path
) -> None:
    """Right after the leader dies, a record through a standby must end pending, not crash.

    While no active node is reachable, an OpenBao standby answers 307 with an empty
    body and ``Location`` = the dead leader's address. keycourier's FastKV once took
    that for success and failed with a TypeError (fixed in b11eeef).
    """
    tag = secrets.token_hex(4)
    leader = cluster.wait_leader()
    standby = next(n for n in cluster.nodes if n is not leader)
    cluster.wait_serving(standby)
    settings = config.load(
        ledger_path=tmp_path / "ledger.db",
        env={"HOME": str(tmp_path), **cluster.vault_env(standby)},
    )
    try:
        with open_recorder(settings) as rec:
            assert rec.record(event_for(0, datetime.now(UTC), tag)).vault_status == (
                VaultStatus.RECORDED
            )
            leader.kill()
            out = rec.record(event_for(1, datetime.now(UTC), tag))
            assert out.vault_status == VaultStatus.PENDING
            assert out.detail
    finally:
        heal(cluster)


@dataclass
class FailoverRun:
    records: int
    recorded: int
    pending_at_record: int
    killed_at: int
    election_seconds: float
    sync_attempts: int
    record_seconds: float
    sync_seconds: float
    census_versions: int


def event_for(i: int, at: datetime, tag: str) -> Event:
    if i % 4 == 3:
        return Event(type=EventType.TOKEN_ISSUED, at=at, actor="ci", data={"profile": "ci"})
    bundle = f"kcb-failover-{tag}-{i // 4:05d}"
    kind = (EventType.SEALED, EventType.OPENED, EventType.INGESTED)[i % 4]
    return Event(
        type=kind,
        at=at,
        actor="kc1:partner" if kind == EventType.SEALED else "kc1:platform",
        bundle_id=bundle,
        fingerprint=f"kcfp1:{i // 4:08x}",
        data={"platform": "xero", "partner": "Acme"} if kind == EventType.SEALED else {},
    )


def run_failover(cluster: RaftCluster, tmp_path: Path, *, records: int) -> FailoverRun:
    try:
        return _run_failover(cluster, tmp_path, records=records)
    finally:
        heal(cluster)


def _run_failover(cluster: RaftCluster, tmp_path: Path, *, records: int) -> FailoverRun:
    tag = secrets.token_hex(4)
    leader = cluster.wait_leader()
    survivor = next(n for n in cluster.nodes if n is not leader)
    cluster.wait_serving(survivor)
    assert health(survivor.addr).get("standby") is True
    ledger = tmp_path / "ledger.db"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    vault_env = cluster.vault_env(survivor)
    settings = config.load(ledger_path=ledger, env={"HOME": str(home), **vault_env})
    env = {**os.environ, **vault_env, "HOME": str(home), "KEYCOURIER_LEDGER": str(ledger)}

    kill_at = records // 3
    # after the kill, spread the remaining recordings over AFTER_KILL seconds (an ongoing
    # workload), so that some of them come after the election
    pace = AFTER_KILL / (records - kill_at)
    outcomes: Counter[VaultStatus] = Counter()
    elected_after = 0.0
    killed_when = 0.0
    started = time.monotonic()
    i = 0
    while i < records:
        with open_recorder(settings) as rec:
            for _ in range(min(BATCH, records - i)):
                if i == kill_at:
                    leader.kill()
                    killed_when = time.monotonic()
                outcomes[rec.record(event_for(i, datetime.now(UTC), tag)).vault_status] += 1
                i += 1
                if killed_when:
                    time.sleep(pace)
        if killed_when and not elected_after:
            new = cluster.leader()
            if new is not None and new is not leader:
                elected_after = time.monotonic() - killed_when
    record_seconds = time.monotonic() - started
    new_leader = cluster.wait_leader(timeout=60, exclude=leader)
    if not elected_after:
        elected_after = time.monotonic() - killed_when
    assert new_leader is not leader

    sync_started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        out = kc(env, "sync", "--json")
        if out.returncode == 0:
            break
        assert out.returncode == 6, (out.returncode, out.stderr)
        assert time.monotonic() - sync_started < 120, out.stderr
        time.sleep(1)
    assert json.loads(out.stdout)["remaining"] == 0
    sync_seconds = time.monotonic() - sync_started
    audit = kc(env, "audit", "verify", "--vault", "--json")
    assert audit.returncode == 0, (audit.stdout, audit.stderr)

    # read Vault on the new leader directly, not through keycourier
    found = census(ledger, new_leader.addr, cluster.root_token)
    assert found.events == records
    assert found.pending == 0
    assert found.exact, found
    assert found.versions == records

    # the killed node comes back as a standby and serves the same records
    cluster.restart(leader)
    cluster.wait_serving(leader)
    assert health(leader.addr).get("standby") is True
    again = census(ledger, leader.addr, cluster.root_token)
    assert again.exact, again
    assert again.versions == records
    return FailoverRun(
        records=records,
        recorded=outcomes[VaultStatus.RECORDED],
        pending_at_record=outcomes[VaultStatus.PENDING],
        killed_at=kill_at,
        election_seconds=round(elected_after, 2),
        sync_attempts=attempts,
        record_seconds=round(record_seconds, 2),
        sync_seconds=round(sync_seconds, 2),
        census_versions=found.versions,
    )


def test_leader_loss_during_recordings_short(cluster: RaftCluster, tmp_path: Path) -> None:
    result = run_failover(cluster, tmp_path, records=100)
    print(result)  # noqa: T201 - the figures for docs/reliability.md
    assert result.recorded + result.pending_at_record == 100
    # the recordings before the kill went straight to Vault through the standby, and
    # so did some after the election, without waiting for sync
    assert result.recorded > result.killed_at


@pytest.mark.slow
def test_leader_loss_during_recordings_long(cluster: RaftCluster, tmp_path: Path) -> None:
    records = int(os.environ.get("KC_FAILOVER_RECORDS", "1000"))
    result = run_failover(cluster, tmp_path, records=records)
    print(result)  # noqa: T201 - the figures for docs/reliability.md
    assert result.recorded + result.pending_at_record == records
    assert result.recorded > result.killed_at
