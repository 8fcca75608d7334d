"""One ledger shared by parallel processes, as CI runs keycourier.

Eight writer processes append 25 events each (sealed, revoked, token and
connection events; half of them one recorder session per event, like one CLI
command per event, half one session for all 25) while real ``keycourier seal``
processes run four at a time on the same ledger. Every process must succeed,
``keycourier audit verify`` must accept the chain, every event must be there
once, every checkpoint must sign a distinct head, and no run of events may
exceed the checkpoint interval. The second run adds two busy-looping processes
to starve the writers of CPU (two cores are what CI machines often have).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.world import ROOT, World, kc, make_world

WRITERS = 8
PER_WRITER = 25
SEALS = 8  # real `keycourier seal` processes, SEAL_WAVE at a time
SEAL_WAVE = 4
EVERY = 7  # the writers' checkpoint interval


def _start_hogs(n: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _writer(world: World, n: int, mode: str, start: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.shared_ledger_writer",
            str(n),
            str(PER_WRITER),
            mode,
            str(EVERY),
            str(start),
        ],
        cwd=ROOT,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _seal(world: World, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keycourier", *world.seal_args(f"b{n}.kcb")],
        cwd=world.dir,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(world: World) -> tuple[list[tuple[int, bytes, bytes]], list[tuple[int, bytes, bytes]]]:
    """Writers and seals together; (rc, stdout, stderr) of each writer and each seal."""
    start = world.dir / "start"
    writers = [_writer(world, n, "each" if n % 2 else "session", start) for n in range(WRITERS)]
    seal_results: list[tuple[int, bytes, bytes]] = []
    try:
        start.touch()
        for wave in range(0, SEALS, SEAL_WAVE):
            seals = [_seal(world, n) for n in range(wave, wave + SEAL_WAVE)]
            try:
                for proc in seals:
                    out, err = proc.communicate(timeout=90)
                    seal_results.append((proc.returncode, out, err))
            finally:
                _stop(seals)
        writer_results = []
        for proc in writers:
            out, err = proc.communicate(timeout=90)
            writer_results.append((proc.returncode, out, err))
    finally:
        _stop(writers)
    return writer_results, seal_results


@pytest.mark.parametrize("hogs", [0, 2], ids=["idle", "two-cpu-hogs"])
def test_parallel_writers_share_one_ledger(tmp_path: Path, hogs: int) -> None:
    world = make_world(tmp_path)
    first = kc(world, *world.seal_args("setup.kcb"))  # creates the ledger: one event
    assert first.returncode == 0, first.stderr.decode()
    setup = 1
    began = time.monotonic()
    hog_procs = _start_hogs(hogs)
    try:
        writers, seals = _run(world)
    finally:
        _stop(hog_procs)
    took = time.monotonic() - began

    for rc, _, err in writers:
        assert rc == 0, err.decode()
    for rc, _, err in seals:
        assert rc == 0, err.decode()
        assert b"warning" not in err, err.decode()  # no bookkeeping failure hidden as a warning
    acknowledged = [int(s) for _, out, _ in writers for s in out.split()]
    assert len(acknowledged) == len(set(acknowledged)) == WRITERS * PER_WRITER

    verify = kc(world, "audit", "verify", "--json")
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    report = json.loads(verify.stdout)
    total = setup + WRITERS * PER_WRITER + SEALS
    assert report["events"] == total, report

    conn = sqlite3.connect(world.ledger)
    try:
        rows = conn.execute("SELECT seq, body FROM events ORDER BY seq").fetchall()
        checkpoints = [r[0] for r in conn.execute("SELECT seq FROM checkpoints ORDER BY rowid")]
    finally:
        conn.close()
    assert [seq for seq, _ in rows] == list(range(1, total + 1))
    bodies = {seq: json.loads(body) for seq, body in rows}
    # every writer's every event, exactly once
    got = Counter((b["data"].get("worker"), b["data"].get("i")) for b in bodies.values())
    for n in range(WRITERS):
        for i in range(PER_WRITER):
            assert got[(str(n), i)] == 1, (n, i)
    assert set(acknowledged) == {s for s, b in bodies.items() if b["actor"].startswith("writer-")}
    assert sum(1 for b in bodies.values() if b["type"] == "sealed") >= SEALS + setup

    # one checkpoint per signed head, inserted in chain order, the final head signed
    assert checkpoints == sorted(set(checkpoints)), checkpoints
    assert checkpoints[-1] == total
    # none missing where the interval asks for one: after a writer's append at seq s,
    # the last checkpoint at or before s is at most EVERY - 1 events behind
    for seq in acknowledged:
        last = max((c for c in checkpoints if c <= seq), default=0)
        assert seq - last < EVERY, (seq, last, checkpoints)
    sys.stderr.write(
        f"shared ledger, {hogs} CPU hog(s): {total} events, {len(checkpoints)} checkpoints, "
        f"{took:.1f} s\n"
    )
    assert took < 90, took


def test_parallel_opens_of_one_bundle_open_it_once(tmp_path: Path) -> None:
    """Eight processes reach the "not opened yet" check of one bundle together: one
    opens it, seven are refused, and the ledger holds one `opened` event."""
    world = make_world(tmp_path)
    sealed = kc(world, *world.seal_args("h.kcb"))
    assert sealed.returncode == 0, sealed.stderr.decode()
    start = world.dir / "start"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.open_worker",
                str(world.dir / "h.kcb"),
                str(world.dir / "platform.kcid"),
                world.partner_fpr,
                str(start),
            ],
            cwd=ROOT,
            env=world.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    try:
        for proc in procs:  # all decrypted and waiting
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
        start.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err.decode()
            results.append(out.decode().strip())
    finally:
        _stop(procs)
    assert sorted(results)[0] == "opened"
    assert results.count("opened") == 1, results
    assert all(r.endswith("was already opened") for r in results if r != "opened"), results
    exported = kc(world, "audit", "export", "--format", "jsonl")
    types = [json.loads(line)["type"] for line in exported.stdout.splitlines()]
    assert types.count("opened") == 1, types
