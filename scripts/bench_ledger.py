"""Ledger benchmark: record, sync and audit verify against same-run baselines.

Starts its own OpenBao dev server on a free loopback port (stopped by PID at
the end) and writes the bench:ledger section of BENCHMARKS.md. Exit 0 when
every target passes, 1 otherwise.

1. record one event (SQLite ledger + Vault) vs a raw hvac KV v2 write of the
   same record: appending to an existing bundle record (one write, cas =
   current version), and creating a bundle record (cas=0 write plus its
   custom_metadata write, done by both sides). Target <= 1.15 x.
2. ``sync`` of 5,000 pending events (1,000 bundles x 5 events, per-bundle
   order and cas kept) vs the sequential raw hvac rate for the same writes.
   Target >= 1.5 x.
3. ``audit verify`` of 1,000,000 events (hash chain, Merkle tree and every
   signed head) vs a bare ``SELECT body`` + SHA-256 loop over the same rows.
   Target >= 0.6 x.
4. Appending one event (with its Merkle tree hashes and signed tree heads) vs the
   same ``SqliteLedger.append`` with the tree switched off (the hash chain and its
   checkpoints only, as before the tree). Target <= 1.1 x.
5. ``keycourier audit prove --seq N --json`` on the 1,000,000-event ledger vs
   ``keycourier audit key`` on it (start-up and opening the ledger, no proof).
   Target: under 50 ms more.
6. ``audit verify-pack`` of a 100,000-event evidence pack vs a bare loop that
   reads the pack's events and hashes each leaf. Target >= 0.6 x.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import hvac  # noqa: E402
from bench_common import write_section  # noqa: E402
from tests.support.openbao import BaoServer, free_port, start_dev_server  # noqa: E402

from keycourier import config  # noqa: E402
from keycourier.config import Settings  # noqa: E402
from keycourier.ledger import chain  # noqa: E402
from keycourier.ledger.interface import Event, EventType, VaultStatus  # noqa: E402
from keycourier.ledger.mirror import custom_metadata_for, record_for  # noqa: E402
from keycourier.ledger.recorder import open_recorder  # noqa: E402
from keycourier.ledger.sqlite import CHECKPOINT_EVERY, SqliteLedger  # noqa: E402
from keycourier.tlog import checkpoint as tlog_checkpoint  # noqa: E402
from keycourier.tlog import merkle, note  # noqa: E402

T0 = datetime(2026, 6, 1, tzinfo=UTC)
DATA = {"platform": "quickbooks", "partner": "Acme Corp", "client_id_masked": "AB************wxyz"}

TABLE_HEAD = (
    "| measurement | keycourier | baseline (same run) | ratio | target | result |\n"
    "| --- | --- | --- | --- | --- | --- |"
)
NOTES = "\n".join(
    [
        "Ratios: record = keycourier time / raw time (lower is better); sync and verify =",
        "keycourier rate / baseline rate (higher is better). Both sides run against the same",
        "OpenBao dev server (started by the script on a free loopback port), interleaved where",
        "they repeat.",
        "",
        "Command:",
        "",
        "```",
        "scripts/bench-ledger        # = .venv/bin/python scripts/bench_ledger.py",
        "```",
        "",
        "Baselines: `hvac.Client.secrets.kv.v2.create_or_update_secret(path, record, cas=...)`",
        "(plus `POST /v1/secret/metadata/<path>` with the same custom_metadata when a bundle",
        "record is created), sequential, one client; and",
        "`for (body,) in conn.execute('SELECT body FROM events ORDER BY seq'):",
        "hashlib.sha256(body.encode()).hexdigest()`. keycourier's hot write path uses a",
        "keep-alive http.client transport (same HTTP API and error table as hvac); sync runs one",
        "thread per group of bundle records, each thread with its own keep-alive connection.",
        "",
    ]
)


def event(kind: EventType, bid: str | None, n: int) -> Event:
    return Event(
        type=kind,
        at=T0 + timedelta(milliseconds=n),
        actor="kc1:0123456789abcdef0123456789abcdef",
        bundle_id=bid,
        fingerprint="kc1:fedcba9876543210fedcba9876543210",
        policy_digest="sha256:" + "ab" * 32,
        data=DATA,
    )


def settings(tmp: Path, name: str, addr: str, token: str) -> Settings:
    return config.load(
        ledger_path=tmp / name, env={"HOME": str(tmp), "VAULT_ADDR": addr, "VAULT_TOKEN": token}
    )


def ratio_line(name: str, ours: str, base: str, ratio: float, target: str, ok: bool) -> str:
    return f"| {name} | {ours} | {base} | {ratio:.2f} x | {target} | {'PASS' if ok else 'FAIL'} |"


# -- 1. record one event ---------------------------------------------------------------------


def bench_record(tmp: Path, server: BaoServer, n: int, rounds: int) -> tuple[list[str], bool]:
    raw = hvac.Client(url=server.addr, token=server.token)
    s = settings(tmp, "record.db", server.addr, server.token)
    rec = open_recorder(s)
    ledger_id = rec.ledger.ledger_id
    counter = [0]

    def ours_append() -> None:
        bid = f"rec-{counter[0]}"
        counter[0] += 1
        rec.record(event(EventType.SEALED, bid, 0))  # not timed: creates the record
        t = time.perf_counter()
        for i in range(n):
            rec.record(event(EventType.OPENED, bid, i + 1))
        times.append(("ours-append", (time.perf_counter() - t) / n))

    def raw_append() -> None:
        path = f"bench-raw/handovers/app-{counter[0]}"
        counter[0] += 1
        body = chain.event_body(event(EventType.OPENED, "x", 0), seq=1, ledger_id=ledger_id)
        rec0 = record_for(ledger_id, 1, body, chain.GENESIS, chain.link_hash(chain.GENESIS, body))
        raw.secrets.kv.v2.create_or_update_secret(
            path=path, secret=rec0, cas=0, mount_point="secret"
        )
        t = time.perf_counter()
        for i in range(n):
            raw.secrets.kv.v2.create_or_update_secret(
                path=path, secret=rec0, cas=i + 1, mount_point="secret"
            )
        times.append(("raw-append", (time.perf_counter() - t) / n))

    def ours_create() -> None:
        base = counter[0]
        counter[0] += n
        t = time.perf_counter()
        for i in range(n):
            rec.record(event(EventType.SEALED, f"new-{base + i}", i))
        times.append(("ours-create", (time.perf_counter() - t) / n))

    def raw_create() -> None:
        base = counter[0]
        counter[0] += n
        body = chain.event_body(event(EventType.SEALED, "x", 0), seq=1, ledger_id=ledger_id)
        rec0 = record_for(ledger_id, 1, body, chain.GENESIS, chain.link_hash(chain.GENESIS, body))
        meta = custom_metadata_for(event(EventType.SEALED, "x", 0))
        t = time.perf_counter()
        for i in range(n):
            path = f"bench-raw/handovers/new-{base + i}"
            raw.secrets.kv.v2.create_or_update_secret(
                path=path, secret=rec0, cas=0, mount_point="secret"
            )
            raw.adapter.post(f"/v1/secret/metadata/{path}", json={"custom_metadata": meta})
        times.append(("raw-create", (time.perf_counter() - t) / n))

    times: list[tuple[str, float]] = []
    # warm-up (connections, log-in, SQLite pages)
    ours_create()
    raw_create()
    times.clear()
    for _ in range(rounds):
        ours_append()
        raw_append()
        ours_create()
        raw_create()
    rec.close()

    def med(kind: str) -> float:
        return statistics.median(v for k, v in times if k == kind)

    lines = []
    ok = True
    for case, label in (
        ("append", "append to a bundle record (1 write)"),
        ("create", "create a bundle record (write + custom_metadata)"),
    ):
        ours, base = med(f"ours-{case}"), med(f"raw-{case}")
        r = ours / base
        good = r <= 1.15
        ok &= good
        lines.append(
            ratio_line(
                f"record one event, {label}; median of {rounds} interleaved rounds of {n}",
                f"{ours * 1e3:.3f} ms",
                f"{base * 1e3:.3f} ms (raw hvac)",
                r,
                "<= 1.15 x",
                good,
            )
        )
    return lines, ok


# -- 2. sync ---------------------------------------------------------------------------------


def bench_sync(
    tmp: Path, server: BaoServer, bundles: int, per: int, workers: int
) -> tuple[list[str], bool]:
    dead = f"http://127.0.0.1:{free_port()}"
    s_dead = settings(tmp, "sync.db", dead, "t")
    with open_recorder(s_dead) as rec:
        n = 0
        for b in range(bundles):
            for k in range(per):
                kind = EventType.SEALED if k == 0 else EventType.OPENED
                rec.record(event(kind, f"sync-{b}", n))
                n += 1
        ledger_id = rec.ledger.ledger_id
        rows = rec.ledger.conn.execute(
            "SELECT seq, body, prev_hash, hash FROM events ORDER BY seq"
        ).fetchall()
    total = len(rows)

    # baseline: the same records, the same requests, sequential raw hvac
    raw = hvac.Client(url=server.addr, token=server.token)
    meta = custom_metadata_for(event(EventType.SEALED, "x", 0))
    t = time.perf_counter()
    for idx, (seq, body, prev, digest) in enumerate(rows):
        b, k = divmod(idx, per)
        path = f"bench-raw/sync/sync-{b}"
        raw.secrets.kv.v2.create_or_update_secret(
            path=path,
            secret=record_for(ledger_id, seq, body, prev, digest),
            cas=k,
            mount_point="secret",
        )
        if k == 0:
            raw.adapter.post(f"/v1/secret/metadata/{path}", json={"custom_metadata": meta})
    base = time.perf_counter() - t

    s_up = settings(tmp, "sync.db", server.addr, server.token)
    with open_recorder(s_up) as rec:
        t = time.perf_counter()
        report = rec.sync(workers=workers)
        ours = time.perf_counter() - t
    if report.delivered != total or report.remaining != 0 or report.conflicts:
        raise SystemExit(f"sync delivered {report.delivered}/{total}: {report}")
    r = (total / ours) / (total / base)
    good = r >= 1.5
    line = ratio_line(
        f"sync {total} pending events ({bundles} bundles x {per}, {workers} workers,"
        " per-bundle cas order)",
        f"{total / ours:.0f} events/s ({ours:.2f} s)",
        f"{total / base:.0f} events/s ({base:.2f} s, sequential raw hvac)",
        r,
        ">= 1.5 x",
        good,
    )
    return [line], good


# -- 3. audit verify -------------------------------------------------------------------------


def build_big_ledger(path: Path, count: int) -> None:
    """A ledger of ``count`` events as ``append`` would leave it (chain, checkpoints every
    CHECKPOINT_EVERY events, the Merkle tree's hashes in each event's row and its signed
    heads), built in bulk."""
    from nacl.signing import SigningKey

    led = SqliteLedger(path)  # schema, key, meta
    seed = led._key()
    key = SigningKey(seed)
    ledger_id = led.ledger_id
    origin = led.origin
    signer = note.Signer(origin, seed)
    conn = led.conn
    conn.execute("BEGIN")
    prev = chain.GENESIS
    batch: list[tuple[int, str, str, str, bytes]] = []
    cps: list[tuple[int, str, str, str]] = []
    notes: list[tuple[int, str]] = []
    edge: dict[int, bytes] = {}  # the tree's right edge: one complete subtree per level
    for seq in range(1, count + 1):
        kind = EventType.SEALED if seq % 3 == 1 else EventType.OPENED
        body = chain.event_body(
            event(kind, f"bundle-{seq // 3}", seq), seq=seq, ledger_id=ledger_id
        )
        digest = chain.link_hash(prev, body)
        level, current = 0, merkle.leaf_hash(body.encode())
        done = [current]
        while (seq - 1) >> level & 1:
            current = merkle.node_hash(edge.pop(level), current)
            level += 1
            done.append(current)
        edge[level] = current
        batch.append((seq, body, prev, digest, b"".join(done)))
        prev = digest
        if seq % CHECKPOINT_EVERY == 0 or seq == count:
            signed_at = chain.format_time(T0)
            sig = key.sign(
                chain.checkpoint_message(ledger_id, seq, digest, signed_at)
            ).signature.hex()
            cps.append((seq, digest, signed_at, sig))
            levels = sorted(edge)
            root = edge[levels[0]]
            for lv in levels[1:]:
                root = merkle.node_hash(edge[lv], root)
            text = tlog_checkpoint.Checkpoint(origin, seq, root).text()
            notes.append((seq, note.sign(text, [signer])))
        if len(batch) >= 20000:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", batch)
    conn.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?)", cps)
    conn.executemany("INSERT INTO notes (size, note) VALUES (?, ?)", notes)
    conn.execute("COMMIT")
    led.close()


def bench_verify(tmp: Path, count: int, rounds: int) -> tuple[list[str], bool]:
    path = tmp / "big.db"
    t = time.perf_counter()
    build_big_ledger(path, count)
    built = time.perf_counter() - t

    def ours() -> float:
        led = SqliteLedger(path)
        t = time.perf_counter()
        report = led.verify()
        took = time.perf_counter() - t
        led.close()
        if not report.ok or report.events != count:
            raise SystemExit(f"verify failed on the benchmark ledger: {report}")
        return took

    def baseline() -> float:
        conn = sqlite3.connect(path)
        sha256 = hashlib.sha256
        t = time.perf_counter()
        for (body,) in conn.execute("SELECT body FROM events ORDER BY seq"):
            sha256(body.encode()).hexdigest()
        took = time.perf_counter() - t
        conn.close()
        return took

    runs: dict[str, list[float]] = {"ours": [], "base": []}
    fns: dict[str, Callable[[], float]] = {"ours": ours, "base": baseline}
    for _ in range(rounds):
        for name in ("base", "ours"):
            runs[name].append(fns[name]())
    o, b = statistics.median(runs["ours"]), statistics.median(runs["base"])
    r = b / o  # speed ratio: ours relative to the bare loop
    good = r >= 0.6
    line = ratio_line(
        f"audit verify {count:,} events ({count // CHECKPOINT_EVERY} checkpoints),"
        f" median of {rounds}",
        f"{o:.2f} s ({count / o / 1e6:.2f} M events/s)",
        f"{b:.2f} s (SELECT body + SHA-256 loop)",
        r,
        ">= 0.6 x",
        good,
    )
    print(f"(built the {count:,}-event ledger in {built:.1f} s)", file=sys.stderr)
    return [line], good


class ChainOnlyLedger(SqliteLedger):
    """The ledger's own append with the Merkle tree switched off: no leaf or node hashes
    (an empty ``nodes`` column) and no signed tree heads. Everything else (the head read,
    the hash chain, the two rows, the checkpoint every CHECKPOINT_EVERY events, the one
    transaction) is the code that runs with the tree."""

    def _grow(
        self, index: int, body: bytes, kept: tuple[int, dict[int, bytes]] | None
    ) -> tuple[dict[int, bytes], bytes]:
        return {}, b""

    def _sign_tree(self, size: int) -> None:
        return None


def bench_append(tmp: Path, n: int, rounds: int) -> tuple[list[str], bool]:
    """One append (local ledger, no Vault) with and without the Merkle tree, interleaved."""
    with_tree = tmp / "append-tree.db"
    chain_only = tmp / "append-chain.db"

    def timed(cls: type[SqliteLedger], path: Path) -> float:
        led = cls(path)
        try:
            led.append(event(EventType.SEALED, "warm", 0), VaultStatus.DISABLED, None)
            t = time.perf_counter()
            for i in range(n):
                led.append(event(EventType.SEALED, f"b{i}", i), VaultStatus.DISABLED, None)
            return (time.perf_counter() - t) / n
        finally:
            led.close()

    def ours() -> float:
        return timed(SqliteLedger, with_tree)

    def baseline() -> float:
        return timed(ChainOnlyLedger, chain_only)

    runs: dict[str, list[float]] = {"ours": [], "base": []}
    for _ in range(rounds):
        runs["base"].append(baseline())
        runs["ours"].append(ours())
    o, b = statistics.median(runs["ours"]), statistics.median(runs["base"])
    r = o / b
    good = r <= 1.1
    return [
        ratio_line(
            f"append one event with its Merkle tree hashes, {n} per round, median of {rounds}",
            f"{o * 1e6:.0f} us",
            f"{b * 1e6:.0f} us (the same append with the tree switched off)",
            r,
            "<= 1.1 x",
            good,
        )
    ], good


def _cli_seconds(args: list[str], env: dict[str, str]) -> float:
    import subprocess

    t = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "keycourier"), *args],
        env=env,
        capture_output=True,
        check=False,
        timeout=300,
    )
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{args} failed: {out.stderr.decode(errors='replace')}")
    return took


def bench_prove(tmp: Path, count: int, rounds: int) -> tuple[list[str], bool]:
    """Whole-command ``audit prove`` on the big ledger beyond ``audit key`` on it."""
    import os

    env = {**os.environ, "KEYCOURIER_LEDGER": str(tmp / "big.db"), "HOME": str(tmp)}
    env.pop("VAULT_ADDR", None)
    seq = str(count // 2 + 1)
    runs: dict[str, list[float]] = {"ours": [], "base": []}
    _cli_seconds(["audit", "key"], env)  # warm the page cache
    for _ in range(rounds):
        runs["base"].append(_cli_seconds(["audit", "key"], env))
        runs["ours"].append(_cli_seconds(["audit", "prove", "--seq", seq, "--json"], env))
    o, b = statistics.median(runs["ours"]), statistics.median(runs["base"])
    extra = (o - b) * 1000
    good = extra < 50
    return [
        ratio_line(
            f"audit prove --seq {seq} --json on {count:,} events, median of {rounds}",
            f"{o * 1000:.0f} ms",
            f"{b * 1000:.0f} ms (audit key: start-up and the ledger opened)",
            o / b,
            "< 50 ms more",
            good,
        ).replace(f"| {o / b:.2f} x |", f"| +{extra:.0f} ms |")
    ], good


def bench_verify_pack(tmp: Path, count: int, rounds: int) -> tuple[list[str], bool]:
    import zipfile

    from keycourier.audit import pack
    from keycourier.audit.evidence import build_pack

    path = tmp / "pack-ledger.db"
    build_big_ledger(path, count)
    settings_p = config.load(ledger_path=path, env={"HOME": str(tmp)})
    with open_recorder(settings_p) as rec:
        data, _ = build_pack(rec, now=T0)
        vkey = rec.ledger.verifier().vkey()
    packed = tmp / "evidence.zip"
    packed.write_bytes(data)

    def ours() -> float:
        t = time.perf_counter()
        pack.verify(packed, key=vkey)
        return time.perf_counter() - t

    def baseline() -> float:
        sha256 = hashlib.sha256
        t = time.perf_counter()
        with zipfile.ZipFile(packed) as zf:
            lines = zf.read("events.txt").split(b"\n")[:-1]
        for line in lines:
            sha256(b"\x00" + line).digest()
        return time.perf_counter() - t

    runs: dict[str, list[float]] = {"ours": [], "base": []}
    for _ in range(rounds):
        runs["base"].append(baseline())
        runs["ours"].append(ours())
    o, b = statistics.median(runs["ours"]), statistics.median(runs["base"])
    r = b / o
    good = r >= 0.6
    return [
        ratio_line(
            f"audit verify-pack of {count:,} events, median of {rounds}",
            f"{o:.2f} s",
            f"{b:.2f} s (read events.txt + a leaf hash per event)",
            r,
            ">= 0.6 x",
            good,
        )
    ], good


class _SkipVaultError(Exception):
    """--only-merkle: the Vault rows are not run."""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record-n", type=int, default=100)
    parser.add_argument("--record-rounds", type=int, default=5)
    parser.add_argument("--sync-bundles", type=int, default=1000)
    parser.add_argument("--sync-per", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    parser.add_argument("--verify-rounds", type=int, default=3)
    parser.add_argument("--append-n", type=int, default=300)
    parser.add_argument("--append-rounds", type=int, default=15)
    parser.add_argument("--pack-events", type=int, default=100_000)
    parser.add_argument(
        "--only-merkle",
        action="store_true",
        help="Skip the Vault record/sync rows (no OpenBao): verify, prove, append, verify-pack.",
    )
    parser.add_argument("--no-write", action="store_true", help="Do not rewrite BENCHMARKS.md.")
    args = parser.parse_args()

    lines: list[str] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="kc-bench-ledger-") as d:
        tmp = Path(d)
        server = None if args.only_merkle else start_dev_server(tmp / "bao")
        try:
            if server is None:
                raise _SkipVaultError
            got, good = bench_record(tmp, server, args.record_n, args.record_rounds)
            lines += got
            ok &= good
            print("\n".join(got), file=sys.stderr)
            got, good = bench_sync(tmp, server, args.sync_bundles, args.sync_per, args.workers)
            lines += got
            ok &= good
            print("\n".join(got), file=sys.stderr)
        except _SkipVaultError:
            pass
        finally:
            if server is not None:
                server.stop()
        got, good = bench_verify(tmp, args.verify_events, args.verify_rounds)
        lines += got
        ok &= good
        print("\n".join(got), file=sys.stderr)
        for got, good in (
            bench_prove(tmp, args.verify_events, args.verify_rounds),
            bench_append(tmp, args.append_n, args.append_rounds),
            bench_verify_pack(tmp, args.pack_events, args.verify_rounds),
        ):
            lines += got
            ok &= good
            print("\n".join(got), file=sys.stderr)

    table = "\n".join([TABLE_HEAD, *lines])
    body = f"{table}\n\nOverall: {'PASS' if ok else 'FAIL'}.\n\n{NOTES}"
    if not args.no_write:
        if args.only_merkle:
            write_section(
                "ledger-merkle",
                "keycourier ledger as a Merkle log: verify, prove, append, verify-pack "
                "(scripts/bench_ledger.py --only-merkle)",
                body,
            )
        else:
            write_section(
                "ledger",
                "keycourier ledger: record, sync, audit verify, prove, append, verify-pack "
                "(scripts/bench_ledger.py)",
                body,
            )
    print(f"overall: {'PASS' if ok else 'FAIL'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
