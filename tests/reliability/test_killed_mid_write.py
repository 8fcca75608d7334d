"""keycourier killed with SIGKILL at random points of a write.

After every kill the ledger must open, its chain and checkpoints must verify
(``keycourier audit verify`` exits 0), every event the killed process had
acknowledged must be there, and no partial output file may be left behind.
Delays are drawn from a seeded RNG (printed on failure) so a failing run can
be replayed with KC_KILL_SEED.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keycourier import bundle
from tests.reliability.world import ROOT, World, kc, make_world
from tests.support.openbao import BaoServer

SEED = int(os.environ.get("KC_KILL_SEED", str(random.SystemRandom().randrange(2**32))))


def _kill_after(cmd: list[str], env: dict[str, str], cwd: Path, delay: float) -> bytes:
    """Start ``cmd``, SIGKILL it after ``delay`` seconds (if still running); its stdout."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


def _verify_ledger(world: World) -> dict[str, object]:
    r = kc(world, "audit", "verify", "--json")
    assert r.returncode == 0, f"seed {SEED}: audit verify failed: {r.stderr.decode()}"
    report: dict[str, object] = json.loads(r.stdout)
    return report


def _ledger_seqs(world: World) -> set[int]:
    r = kc(world, "audit", "export", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    return {json.loads(line)["seq"] for line in r.stdout.splitlines() if line.strip()}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _run_ledger_kills(world: World, kills: int, delays: tuple[float, float]) -> dict[str, int]:
    rng = random.Random(SEED)
    acknowledged_total = 0
    mid_write = 0
    for _ in range(kills):
        out = _kill_after(
            [sys.executable, "-m", "tests.reliability.ledger_driver", "100000"],
            world.env,
            ROOT,
            rng.uniform(*delays),
        )
        acked = [int(x) for x in out.split()]
        acknowledged_total += len(acked)
        mid_write += bool(acked)
        seqs = _ledger_seqs(world)
        missing = set(acked) - seqs
        assert not missing, f"seed {SEED}: acknowledged events lost: {sorted(missing)[:5]}"
    report = _verify_ledger(world)
    return {"acknowledged": acknowledged_total, "killed_mid_write": mid_write, **_counts(report)}


def _counts(report: dict[str, object]) -> dict[str, int]:
    chain = report.get("chain", report)
    assert isinstance(chain, dict)
    return {"events": int(chain.get("events", 0))}


KILLS = [pytest.param(8, id="8-kills"), pytest.param(30, id="30-kills", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kills", KILLS)
def test_ledger_writer_killed(tmp_path: Path, kills: int) -> None:
    world = make_world(tmp_path, identities=False)
    # 0.05-0.9 s: from interpreter start-up (ledger creation: schema, key file)
    # to the middle of the append loop.
    stats = _run_ledger_kills(world, kills, (0.05, 0.9))
    assert stats["killed_mid_write"] > 0, f"seed {SEED}: no kill landed in the append loop"
    assert stats["events"] >= stats["acknowledged"]
    sys.stderr.write(f"ledger kill test (seed {SEED}): {stats}\n")


@pytest.mark.parametrize(
    "kills",
    [pytest.param(6, id="6-kills"), pytest.param(30, id="30-kills", marks=pytest.mark.slow)],
)
def test_ledger_writer_with_vault_killed(tmp_path: Path, bao_dev: BaoServer, kills: int) -> None:
    """Killed while delivering to Vault: sync converges and the Vault cross-check passes."""
    world = make_world(tmp_path, identities=False)
    world.env.update(VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token)
    stats = _run_ledger_kills(world, kills, (0.2, 1.2))
    synced = kc(world, "sync", "--json")
    assert synced.returncode == 0, f"seed {SEED}: sync failed: {synced.stderr.decode()}"
    report = json.loads(synced.stdout)
    checked = kc(world, "audit", "verify", "--vault", "--json")
    assert checked.returncode == 0, f"seed {SEED}: audit verify --vault: {checked.stderr.decode()}"
    again = json.loads(kc(world, "sync", "--json").stdout)
    assert again.get("remaining", 0) == 0, again
    sys.stderr.write(f"vault kill test (seed {SEED}): {stats}, first sync: {report}\n")


@pytest.mark.parametrize("kills", KILLS)
def test_seal_killed(tmp_path: Path, kills: int) -> None:
    """``keycourier seal`` killed at random points: the bundle is whole or absent."""
    world = make_world(tmp_path)
    started = time.perf_counter()
    first = kc(world, *world.seal_args("calibration.kcb"))
    assert first.returncode == 0, first.stderr
    duration = time.perf_counter() - started  # kills spread over 5%..110% of one seal
    rng = random.Random(SEED)
    outcomes = {"complete": 0, "absent": 0, "tmp_left": 0}
    for i in range(kills):
        name = f"handover-{i}.kcb"
        _kill_after(
            [sys.executable, "-m", "keycourier", *world.seal_args(name)],
            world.env,
            world.dir,
            rng.uniform(0.05 * duration, 1.1 * duration),
        )
        out = world.dir / name
        if out.exists():
            bundle.inspect(out.read_bytes())  # raises on a partial or damaged bundle
            assert (out.stat().st_mode & 0o777) == 0o600
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
        left = _leftovers(world.dir)
        outcomes["tmp_left"] += len(left)
        for stale in left:  # reported below, removed so the next round starts clean
            assert ((world.dir / stale).stat().st_mode & 0o777) == 0o600
            (world.dir / stale).unlink()
    _verify_ledger(world)
    sys.stderr.write(f"seal kill test (seed {SEED}): {outcomes}\n")
    assert outcomes["complete"] + outcomes["absent"] == kills


@pytest.mark.slow
def test_write_private_killed_leaves_no_temp_file(tmp_path: Path) -> None:
    """SIGKILL during ``write_private`` must not leave ``.NAME.*.tmp`` behind.

    A writer loop makes the write window wide; kills land in it most of the
    time. SIGKILL runs no cleanup, so a named temporary file would stay (it did
    before 6b45f13); on Linux write_private writes to an unnamed O_TMPFILE that
    the kernel discards with the process.
    """
    code = (
        "import sys\n"
        "from keycourier.files import write_private\n"
        "while True:\n"
        "    write_private(sys.argv[1], b'x' * 4_000_000)\n"
    )
    target = tmp_path / "creds.json"
    rng = random.Random(SEED)
    left: list[str] = []
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
        time.sleep(rng.uniform(0.3, 0.8))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for name in _leftovers(tmp_path):
            left.append(name)
            (tmp_path / name).unlink()
    assert not left, f"seed {SEED}: {len(left)} of 10 kills left a temporary file: {left[:3]}"
