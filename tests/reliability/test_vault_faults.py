"""Vault faults: seal-and-record cycles while the OpenBao process is SIGKILLed and restarted.

A single-node raft (non-dev) OpenBao keeps its data across kills. A killer
thread SIGKILLs it (by PID) at random moments during the cycles, keeps it down
a random short while, starts it again on the same port and data directory and
unseals it. Each cycle opens its own recorder (as each CLI invocation does) and
records a ``sealed`` event for a new bundle, an ``opened`` event for the
previous bundle and a ``token_issued`` event; a few cycles run the real
``keycourier seal`` in a subprocess instead. Afterwards ``keycourier sync``
delivers what is pending, ``keycourier audit verify --vault`` must pass, and a
census read over plain HTTP must find every ledger event in Vault exactly once,
identical to the ledger.

Knobs (scripts/reliability sets them): KC_FAULT_CYCLES (200), KC_FAULT_KILLS
(20), KC_FAULT_SEALS (10), KC_RELIABILITY_SEED.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier import config
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.recorder import open_recorder
from tests.support import cli
from tests.support.openbao import BaoServer, free_port
from tests.support.raft_cluster import Node, RaftCluster, census
from tests.support.random_text import ALNUM

PASS = "reliability passphrase 1"


def seed() -> int:
    raw = os.environ.get("KC_RELIABILITY_SEED")
    return int(raw) if raw else secrets.randbelow(2**32)


def kc(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return cli.kc(*args, env=env, cwd=cwd, timeout=timeout)


@dataclass
class Killer:
    """SIGKILLs and restarts one node when the cycle counter reaches each planned cycle."""

    cluster: RaftCluster
    node: Node
    at_cycles: list[int]
    rng: random.Random
    progress: int = 0
    kills: int = 0
    downtime: float = 0.0
    errors: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def advance(self, cycle: int) -> None:
        with self._cond:
            self.progress = cycle
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            for target in self.at_cycles:
                with self._cond:
                    while self.progress < target:
                        self._cond.wait()
                # a random moment inside the cycle: before, during or after its writes
                time.sleep(self.rng.uniform(0.0, 0.06))
                started = time.monotonic()
                self.node.kill()
                self.kills += 1
                time.sleep(self.rng.uniform(0.0, 0.4))
                self.cluster.restart(self.node)
                self.cluster.wait_leader(timeout=60)
                self.downtime += time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bao-killer", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self.advance(10**9)
        assert self._thread is not None
        self._thread.join(timeout=300)


@pytest.fixture
def bao_raft(tmp_path: Path) -> Iterator[RaftCluster]:
    cluster = RaftCluster.start(tmp_path / "bao", size=1)
    try:
        yield cluster
    finally:
        cluster.stop_all()


@dataclass
class Sealer:
    """The real ``keycourier seal`` in a subprocess, with throwaway identities."""

    dir: Path
    env: dict[str, str]
    recipient: str = ""

    def prepare(self) -> None:
        for name in ("partner", "platform"):
            out = kc(
                self.env,
                "identity",
                "new",
                "-o",
                f"{name}.kcid",
                "--work-factor",
                "10",
                "--json",
                cwd=self.dir,
            )
            assert out.returncode == 0, out.stderr
        shown = kc(self.env, "identity", "show", "platform.kcid", "--json", cwd=self.dir)
        self.recipient = json.loads(shown.stdout)["recipient"]

    def seal(self, n: int) -> subprocess.CompletedProcess[str]:
        rng = secrets.SystemRandom()
        client_id = "AB" + "".join(rng.choice(ALNUM) for _ in range(48))
        secret = self.dir / "secret.txt"
        secret.write_text("".join(rng.choice(ALNUM) for _ in range(40)) + "\n")
        secret.chmod(0o600)
        return kc(
            self.env,
            "seal",
            "--platform",
            "quickbooks",
            "--client-id",
            client_id,
            "--client-secret-file",
            "secret.txt",
            "--environment",
            "production",
            "--attested-by",
            "Reliability Run",
            "--identity",
            "partner.kcid",
            "-r",
            self.recipient,
            "--partner",
            "Acme",
            "-o",
            f"handover-{n}.kcb",
            cwd=self.dir,
        )


@dataclass
class FaultRun:
    cycles: int
    kills: int
    events: int
    recorded: int
    pending_at_record: int
    seals: int
    sync_attempts: int
    seconds: float
    downtime: float
    census_versions: int


def run_faults(
    cluster: RaftCluster, tmp_path: Path, *, cycles: int, kills: int, seals: int, rng_seed: int
) -> FaultRun:
    rng = random.Random(rng_seed)
    node = cluster.nodes[0]
    ledger = tmp_path / "ledger.db"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    vault_env = cluster.vault_env(node)
    settings = config.load(ledger_path=ledger, env={"HOME": str(home), **vault_env})
    env = {
        **os.environ,
        **vault_env,
        "HOME": str(home),
        "KEYCOURIER_LEDGER": str(ledger),
        "KEYCOURIER_PASSPHRASE": PASS,
    }
    sealer = Sealer(tmp_path, env)
    if seals:
        sealer.prepare()
    seal_cycles = set(rng.sample(range(1, cycles), min(seals, cycles - 1)))
    killer = Killer(cluster, node, sorted(rng.sample(range(1, cycles - 1), kills)), rng)
    outcomes: Counter[VaultStatus] = Counter()
    events = 0
    started = time.monotonic()
    killer.start()
    try:
        for cycle in range(cycles):
            killer.advance(cycle)
            if cycle in seal_cycles:
                out = sealer.seal(cycle)
                assert out.returncode == 0, (cycle, out.returncode, out.stderr)
                events += 1
                continue
            at = datetime.now(UTC)
            bid = f"kcb-fault-{rng_seed:x}-{cycle:04d}"
            with open_recorder(settings) as rec:
                batch = [
                    Event(
                        type=EventType.SEALED,
                        at=at,
                        actor="kc1:partner",
                        bundle_id=bid,
                        fingerprint=f"kcfp1:{cycle:08x}",
                        data={"platform": "quickbooks", "partner": "Acme"},
                    ),
                    Event(type=EventType.OPENED, at=at, actor="kc1:platform", bundle_id=bid),
                    Event(type=EventType.TOKEN_ISSUED, at=at, actor="ci", data={"profile": "ci"}),
                ]
                for event in batch:
                    outcomes[rec.record(event).vault_status] += 1
                    events += 1
            time.sleep(rng.uniform(0.0, 0.05))
    finally:
        killer.join()
    assert not killer.errors, killer.errors
    assert killer.kills == kills
    cluster.wait_leader(timeout=60)

    # keycourier sync (exit 6 = Vault still unavailable: try again)
    attempts = 0
    deadline = time.monotonic() + 120
    while True:
        attempts += 1
        out = kc(env, "sync", "--json")
        if out.returncode == 0:
            break
        assert out.returncode == 6, (out.returncode, out.stderr)
        assert time.monotonic() < deadline, out.stderr
        time.sleep(1)
    report = json.loads(out.stdout)
    assert report["remaining"] == 0, report
    audit = kc(env, "audit", "verify", "--vault", "--json")
    assert audit.returncode == 0, (audit.stdout, audit.stderr)

    found = census(ledger, node.addr, cluster.root_token)
    assert found.events == events
    assert found.pending == 0
    assert found.exact, found
    return FaultRun(
        cycles=cycles,
        kills=killer.kills,
        events=events,
        recorded=outcomes[VaultStatus.RECORDED],
        pending_at_record=outcomes[VaultStatus.PENDING],
        seals=len(seal_cycles),
        sync_attempts=attempts,
        seconds=time.monotonic() - started,
        downtime=killer.downtime,
        census_versions=found.versions,
    )


def test_kills_during_short_run_lose_and_duplicate_nothing(
    bao_raft: RaftCluster, tmp_path: Path
) -> None:
    rng_seed = seed()
    result = run_faults(bao_raft, tmp_path, cycles=20, kills=3, seals=2, rng_seed=rng_seed)
    print(f"seed={rng_seed} {result}")  # noqa: T201 - the figures for docs/reliability.md
    # the kills really hit recording: some events had to wait for sync
    assert result.pending_at_record > 0, result
    assert result.census_versions == result.events


@pytest.mark.slow
def test_kills_during_long_run_lose_and_duplicate_nothing(
    bao_raft: RaftCluster, tmp_path: Path
) -> None:
    rng_seed = seed()
    result = run_faults(
        bao_raft,
        tmp_path,
        cycles=int(os.environ.get("KC_FAULT_CYCLES", "200")),
        kills=int(os.environ.get("KC_FAULT_KILLS", "20")),
        seals=int(os.environ.get("KC_FAULT_SEALS", "10")),
        rng_seed=rng_seed,
    )
    print(f"seed={rng_seed} {result}")  # noqa: T201 - the figures for docs/reliability.md
    assert result.pending_at_record > 0, result
    assert result.census_versions == result.events


def test_lost_reply_then_sync_counts_the_record_once(bao_dev: BaoServer, tmp_path: Path) -> None:
    """The write of an event record reached Vault but its reply was lost (the kill window
    above): ``sync`` finds the identical record, counts it as delivered and adds nothing
    (the record keeps its one version)."""
    from keycourier.ledger.mirror import record_for
    from keycourier.vault.client import connect
    from keycourier.vault.kv import kv_read_metadata, kv_write

    bid = f"kcb-lost-reply-{secrets.token_hex(6)}"
    event = Event(
        type=EventType.SEALED,
        at=datetime.now(UTC),
        actor="kc1:partner",
        bundle_id=bid,
        fingerprint="kcfp1:0123abcd",
        data={"platform": "xero", "partner": "Acme"},
    )
    ledger = tmp_path / "ledger.db"
    # Vault unreachable while recording: the event stays pending in the ledger
    down = config.load(
        ledger_path=ledger,
        env={
            "HOME": str(tmp_path),
            "VAULT_ADDR": f"http://127.0.0.1:{free_port()}",
            "VAULT_TOKEN": bao_dev.token,
        },
    )
    with open_recorder(down) as rec:
        assert rec.record(event).vault_status == VaultStatus.PENDING
        ledger_id = rec.ledger.ledger_id
        row = rec.ledger.event_row(1)
        path = rec.ledger.delivery_of(1)[1]
    assert row is not None
    assert path is not None
    # ...but the write had in fact reached Vault (exactly what keycourier would have sent)
    up = config.load(
        ledger_path=ledger,
        env={"HOME": str(tmp_path), "VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": bao_dev.token},
    )
    client = connect(up)
    kv_write(client, "secret", path, record_for(ledger_id, 1, *row), cas=0)
    with open_recorder(up) as rec:
        report = rec.sync()
        assert report.remaining == 0
        assert report.already_present == 1
        assert rec.verify(vault=True).ok
    meta = kv_read_metadata(client, "secret", path)
    assert meta is not None
    assert meta.current_version == 1
