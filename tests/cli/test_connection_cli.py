"""``keycourier connection ...`` end to end: real subprocesses, the composed platform stand-in.

The token comes from the token helper (client credentials in the
environment, minted at the stand-in's token endpoint, cached 0600); every
state change lands in a real SQLite ledger.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from click.testing import CliRunner

from keycourier.cli.connection_cmd import connection
from tests.support.connections_standin import RunningPlatform, start_platform
from tests.support.openbao import BaoServer, free_port

ENTITY = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
ORG = "7d1e6a52-3c1b-4b8e-9f0e-2a6c5d4e3f21"
CLIENT_ID = str(uuid.UUID(int=0xC0FFEE))
CLIENT_SECRET = "cli-secret-" + "y" * 24
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Env:
    platform: RunningPlatform
    env: dict[str, str]
    tmp: Path

    def run(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "keycourier", *args],
            env=self.env,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            cwd=self.tmp,
            check=False,
        )
        return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def monite(self, *args: str) -> Run:
        return self.run("connection", *args, "--profile", "m", "--entity", ENTITY)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    platform = start_platform({CLIENT_ID: CLIENT_SECRET})
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[profiles.m]
dialect = "monite"
base_url = "{platform.monite_base}"
environment = "sandbox"
version = "2024-05-25"
client_id_env = "KC_TEST_CLIENT_ID"
client_secret_env = "KC_TEST_CLIENT_SECRET"

[profiles.t]
dialect = "tesouro"
base_url = "{platform.root}"
environment = "sandbox"
version = "2025-06-23"
version_header = "x-finops-version"
client_id_env = "KC_TEST_CLIENT_ID"
client_secret_env = "KC_TEST_CLIENT_SECRET"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "KEYCOURIER_"))}
    env.update(
        {
            "HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path / ".config"),
            "XDG_DATA_HOME": str(tmp_path / ".local"),
            "XDG_CACHE_HOME": str(tmp_path / ".cache"),
            "KEYCOURIER_CONFIG": str(cfg),
            "KEYCOURIER_LEDGER": str(tmp_path / "ledger.db"),
            "KC_TEST_CLIENT_ID": CLIENT_ID,
            "KC_TEST_CLIENT_SECRET": CLIENT_SECRET,
            "PYTHONPATH": str(ROOT / "src"),
        }
    )
    env.pop("XDG_RUNTIME_DIR", None)
    try:
        yield Env(platform, env, tmp_path)
    finally:
        platform.stop()


def baseline_seconds(world: Env, *args: str) -> float:
    """How long an ordinary, quick run of the same kind takes here and now (interpreter,
    imports, config, token, one request): the part of a timed run that is not the
    command's own waiting, and the part a loaded machine stretches most."""
    started = time.monotonic()
    r = world.run("connection", *args, "--profile", "m", "--entity", ENTITY)
    assert r.code == 0, r.err
    return time.monotonic() - started


# What a timed run may take beyond its --timeout and its baseline on a loaded machine. The
# stalls it must not wait out (STALL) are longer than both, so the bounds still prove it.
MARGIN = 5.0
STALL = 12.0


def authorize(url: str, platform: str = "xero") -> str:
    with urllib.request.urlopen(f"{url}&platform={platform}", timeout=10) as resp:  # noqa: S310
        return str(resp.read().decode())


def ledger_events(world: Env) -> list[dict[str, Any]]:
    """The connection events in the ledger, as the auditor's CLI exports them."""
    run = world.run("audit", "export", "--format", "jsonl")
    assert run.code == 0, run.err
    items = [json.loads(line) for line in run.out.splitlines()]
    return [e for e in items if str(e["type"]).startswith("connection_")]


def test_full_flow_monite(world: Env) -> None:
    listed = world.monite("list")
    assert listed.code == 0, listed.err
    assert "no accounting connections" in listed.err

    created = world.run("connection", "create", "--profile", "m", "--entity", ENTITY, "--json")
    assert created.code == 0, created.err
    doc = created.json()
    cid = doc["connection"]["id"]
    url = doc["connection"]["connection_url"]
    assert doc["connection"]["status"] == "pending_auth"
    assert doc["recorded"][0]["event"] == "connection_created"
    assert CLIENT_SECRET not in created.out + created.err

    # While one is active, a second create is refused with the existing one's details.
    refused = world.monite("create")
    assert refused.code == 7
    assert cid in refused.err
    assert "status pending_auth" in refused.err
    assert "--replace" in refused.err

    # Hand the URL to the user, who authorizes QuickBooks.
    assert authorize(url, "quickbooks") == "connected to quickbooks\n"
    waited = world.run(
        "connection",
        "wait",
        cid,
        "--profile",
        "m",
        "--entity",
        ENTITY,
        "--timeout",
        "20s",
        "--poll-interval",
        "100ms",
    )
    assert waited.code == 0, waited.err
    assert waited.out == "quickbooks\n"
    assert "connection_connected" in waited.err

    got = world.run("connection", "get", cid, "--profile", "m", "--entity", ENTITY, "--json")
    assert got.code == 0
    assert got.json()["status"] == "connected"
    assert got.json()["platform"] == "quickbooks"

    # --replace with no terminal and no --yes: refused, nothing changes.
    no_tty = world.monite("create", "--replace")
    assert no_tty.code == 7
    assert "--yes" in no_tty.err
    assert world.platform.connections.status_of(cid) == "connected"

    replaced = world.run(
        "connection", "create", "--profile", "m", "--entity", ENTITY, "--replace", "--yes", "--json"
    )
    assert replaced.code == 0, replaced.err
    rdoc = replaced.json()
    new_id = rdoc["connection"]["id"]
    assert [c["id"] for c in rdoc["replaced"]] == [cid]
    assert [r["event"] for r in rdoc["recorded"]] == [
        "connection_disconnected",
        "connection_created",
    ]
    assert world.platform.connections.status_of(cid) == "disconnected"

    gone = world.run("connection", "disconnect", new_id, "--profile", "m", "--entity", ENTITY)
    assert gone.code == 0, gone.err
    assert "status: disconnected" in gone.out

    # Re-create after disconnect is allowed.
    again = world.monite("create")
    assert again.code == 0, again.err
    assert "connection_url: http://127.0.0.1:" in again.out

    table = world.monite("list")
    assert table.code == 0
    assert len(table.out.strip().splitlines()) == 3

    events = ledger_events(world)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "connection_created",
        "connection_connected",
        "connection_disconnected",
        "connection_created",
        "connection_disconnected",
        "connection_created",
    ]
    first = events[0]["data"]
    assert first["entity_id"] == ENTITY
    assert first["connection_id"] == cid
    assert CLIENT_SECRET not in json.dumps(events)
    # One token was minted and reused through the 0600 file cache.
    assert len(world.platform.auth.issued) == 1


def test_tesouro_dialect_through_the_cli(world: Env) -> None:
    created = world.run("connection", "create", "--profile", "t", "--organization", ORG, "--json")
    assert created.code == 0, created.err
    cid = created.json()["connection"]["id"]
    world.platform.connections.authorize(cid, "xero")
    waited = world.run(
        "connection",
        "wait",
        cid,
        "--profile",
        "t",
        "--organization",
        ORG,
        "--timeout",
        "10s",
        "--poll-interval",
        "100ms",
    )
    assert waited.code == 0, waited.err
    assert waited.out == "xero\n"
    seen = [r for r in world.platform.connections.requests if "accounting" in r.path]
    assert seen
    assert all(r.path.startswith("/v1/accounting-connections") for r in seen)
    assert all(r.headers["x-finops-version"] == "2025-06-23" for r in seen)
    assert all(r.headers["x-organization-id"] == ORG for r in seen)
    assert all(r.headers["authorization"] == "Bearer ****" for r in seen)


def test_wait_exit_codes(world: Env) -> None:
    def fresh() -> str:
        r = world.run(
            "connection", "create", "--profile", "m", "--entity", str(uuid.uuid4()), "--json"
        )
        assert r.code == 0, r.err
        return str(r.json()["connection"]["id"])

    state = world.platform.connections

    def wait(cid: str, timeout: str = "10s") -> Run:
        entity = state.connections[cid].scope_id
        return world.run(
            "connection",
            "wait",
            cid,
            "--profile",
            "m",
            "--entity",
            entity,
            "--timeout",
            timeout,
            "--poll-interval",
            "100ms",
        )

    timed_out = fresh()
    r = wait(timed_out, "3s")  # room for the first poll to be answered on a loaded machine
    assert r.code == 6
    # the last poll at the deadline may itself time out on a loaded machine
    assert re.search(
        r"still pending_auth after the timeout|not connected after the timeout: the last "
        r"poll failed \(.*\); last status seen: pending_auth",
        r.err,
    ), r.err

    deauth = fresh()
    state.authorize(deauth, "xero")
    state.deauthorize(deauth)
    r = wait(deauth)
    assert r.code == 5
    assert "deauthorized in xero" in r.err

    broken = fresh()
    state.report_error(broken, "Xero rejected the app keys")
    r = wait(broken)
    assert r.code == 7
    assert "Xero rejected the app keys" in r.err

    dropped = fresh()
    entity = state.connections[dropped].scope_id
    assert (
        world.run("connection", "disconnect", dropped, "--profile", "m", "--entity", entity).code
        == 0
    )
    r = wait(dropped)
    assert r.code == 7
    assert "is disconnected" in r.err


def test_wait_shows_it_is_alive_and_how_to_resume(world: Env) -> None:
    """A status line every interval (state, time waited, time left); on the timeout the
    connection_url again and the exact, shell-quoted command that resumes waiting."""
    created = world.run("connection", "create", "--profile", "t", "--organization", ORG, "--json")
    assert created.code == 0, created.err
    conn = created.json()["connection"]
    world.env["KEYCOURIER_WAIT_STATUS_INTERVAL"] = "0.5"
    started = time.monotonic()
    r = world.run(
        "--config", world.env["KEYCOURIER_CONFIG"],
        "connection", "wait", conn["id"], "--profile", "t", "--organization", ORG,
        "--timeout", "3s", "--poll-interval", "200ms",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert r.code == 6, r.err
    beats = [line for line in r.err.splitlines() if "still waiting for connection" in line]
    # about 6 in 3 s; a loaded machine may start late or skip a beat, never show none
    assert 2 <= len(beats) <= elapsed / 0.5 + 1, r.err
    assert all(
        re.fullmatch(
            rf"keycourier: still waiting for connection {conn['id']}: "
            r"(pending_auth|no status yet), \d+s waited, \d+s left",
            line,
        )
        for line in beats
    ), beats
    assert any("pending_auth" in line for line in beats), beats
    for line in beats:  # waited + left is the 3 s of --timeout, each rounded down
        waited, left = (int(n) for n in re.findall(r"(\d+)s (?:waited|left)", line))
        assert 2 <= waited + left <= 3, line
    resume = shlex.join(
        [
            "keycourier", "--config", world.env["KEYCOURIER_CONFIG"], "connection", "wait",
            conn["id"], "--profile", "t", "--organization", ORG, "--timeout", "3s",
        ]
    )  # fmt: skip
    assert (
        "keycourier: hint: send the connection_url to the organization's user again: "
        f"{conn['connection_url']}\n"
    ) in r.err
    assert f"keycourier: hint: then resume waiting with: {resume}\n" in r.err
    assert "rerun" not in r.err  # the vague advice is replaced, not repeated
    resumed = subprocess.run(
        ["bash", "-c", resume.replace("keycourier", f"{sys.executable} -m keycourier", 1)],
        env=world.env | {"KEYCOURIER_WAIT_STATUS_INTERVAL": "30"},
        capture_output=True, text=True, timeout=60, check=False, cwd=world.tmp,
    )  # fmt: skip
    assert resumed.returncode == 6, resumed.stderr  # the same wait, as pasted
    world.platform.connections.authorize(conn["id"], "xero")
    done = subprocess.run(
        ["bash", "-c", resume.replace("keycourier", f"{sys.executable} -m keycourier", 1)],
        env=world.env, capture_output=True, text=True, timeout=60, check=False, cwd=world.tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "xero\n"


def test_wait_status_interval_is_checked(world: Env) -> None:
    world.env["KEYCOURIER_WAIT_STATUS_INTERVAL"] = "31"
    r = world.monite("wait", str(uuid.uuid4()), "--timeout", "1s")
    assert r.code == 3
    assert "KEYCOURIER_WAIT_STATUS_INTERVAL must be a number of seconds, 0.05 to 30" in r.err


def test_wait_honours_retry_after_within_its_timeout(world: Env) -> None:
    """wait sleeps out a 429's Retry-After, but never past --timeout."""
    state = world.platform.connections
    created = world.monite("create", "--json")
    assert created.code == 0, created.err
    cid = str(created.json()["connection"]["id"])
    slow_down = {"error": {"message": "slow down"}}

    def wait(timeout: str) -> Run:
        return world.monite("wait", cid, "--timeout", timeout, "--poll-interval", "100ms")

    def polls() -> int:
        return sum(1 for r in state.requests if r.method == "GET" and r.path.endswith(cid))

    # The deadline (500 ms) comes before the asked second: one poll, then exit 6 saying why.
    state.inject(429, body=slow_down, headers={"Retry-After": "1"}, times=5, path_contains=cid)
    r = wait("500ms")
    assert r.code == 6
    assert "the platform was rate-limiting us (429, asked to wait 1 s)" in r.err
    assert "no status seen yet" in r.err
    assert polls() == 1  # no retry inside the client past the deadline
    while state.take_fault("GET", cid) is not None:  # drop the 429s left over
        pass

    # Within the timeout, two 429s are waited out (1 s each), then the poll sees it connected.
    state.authorize(cid, "xero")
    state.inject(429, body=slow_down, headers={"Retry-After": "1"}, times=2, path_contains=cid)
    before = polls()
    started = time.monotonic()
    r = wait("20s")
    assert r.code == 0, r.err
    assert r.out == "xero\n"
    assert time.monotonic() - started >= 2.0
    assert polls() - before == 3


@pytest.mark.parametrize(
    ("delay", "problem"),
    [(0.0, "the platform failed (503): unavailable"), (STALL, "cannot reach the platform")],
    ids=["503", "stalled"],
)
def test_wait_ends_by_its_timeout_while_the_platform_fails(
    world: Env, delay: float, problem: str
) -> None:
    """503 retries and a stalled request inside wait end by --timeout (exit 6)."""
    state = world.platform.connections
    created = world.monite("create", "--json")  # also caches the partner token
    assert created.code == 0, created.err
    cid = str(created.json()["connection"]["id"])
    state.inject(
        503,
        body={"error": {"message": "unavailable"}},
        times=50,
        path_contains=cid,
        delay=delay,
    )
    startup = baseline_seconds(world, "list")  # the faults are on cid's path only
    started = time.monotonic()
    r = world.run(
        "connection", "wait", cid, "--profile", "m", "--entity", ENTITY, "--timeout", "1s",
        timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert r.code == 6, r.err
    assert f"connection {cid} is not connected after the timeout: the last poll failed" in r.err
    assert problem in r.err
    # 1 s of --timeout, not the stall nor 4 retries with backoff
    assert elapsed - startup < 1.0 + MARGIN, (elapsed, startup)


def test_wait_ends_by_its_timeout_while_the_token_is_slow(world: Env) -> None:
    """with no cached token, a stalled token endpoint, or another process
    holding the profile's refresh lock, cannot hold wait past --timeout."""
    import fcntl

    created = world.monite("create", "--json")
    assert created.code == 0, created.err
    cid = str(created.json()["connection"]["id"])
    tokens = world.tmp / ".cache" / "keycourier" / "tokens"

    def timed_wait() -> tuple[Run, float]:
        for cached in tokens.glob("m-*.json"):
            cached.unlink()  # no cached token: wait must get one
        started = time.monotonic()
        r = world.run(
            "connection", "wait", cid, "--profile", "m", "--entity", ENTITY, "--timeout", "1s",
            timeout=60,
        )  # fmt: skip
        return r, time.monotonic() - started

    for cached in tokens.glob("m-*.json"):
        cached.unlink()  # the baseline fetches a token too
    startup = baseline_seconds(world, "list")
    world.platform.auth.delay = STALL
    r, elapsed = timed_wait()
    assert r.code == 6, r.err
    assert "no token from the token endpoint within the time left" in r.err
    assert elapsed - startup < 1.0 + MARGIN, (elapsed, startup)  # 1 s, not the stall
    polls = len(world.platform.connections.requests)

    world.platform.auth.delay = 0.0
    holder = os.open(tokens / "m.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process refreshing, never finishing
        r, elapsed = timed_wait()
    finally:
        os.close(holder)
    assert r.code == 6, r.err
    assert "Traceback" not in r.err
    # The lock wait ends at the 1 s deadline; then a token is minted and one last poll made,
    # each with the 0.25 s floor. On a loaded machine either floor can run out first: the
    # timeout then names the token (and no lock warning is shown) or the failed poll. Which
    # deadline message wins is the machine's; that the lock did not hold wait is the point.
    assert f"connection {cid} " in r.err
    assert "after the timeout" in r.err
    if "held the token cache lock until the deadline" in r.err:
        assert len(world.platform.connections.requests) == polls + 1
    else:
        assert "no token from the token endpoint within the time left" in r.err
        assert len(world.platform.connections.requests) == polls
    assert elapsed - startup < 1.0 + MARGIN, (elapsed, startup)  # the holder never lets go


def test_ids_are_validated_before_any_request(world: Env) -> None:
    r = world.run("connection", "list", "--profile", "m", "--entity", "not-a-uuid")
    assert r.code == 2
    assert "entity ID 'not-a-uuid' is not a UUID" in r.err
    r = world.run("connection", "get", "1234", "--profile", "m", "--entity", ENTITY)
    assert r.code == 2
    assert "connection ID '1234' is not a UUID" in r.err
    r = world.run(
        "connection",
        "wait",
        str(uuid.uuid4()),
        "--profile",
        "m",
        "--entity",
        ENTITY,
        "--timeout",
        "2d",
    )
    assert r.code == 2
    assert world.platform.connections.requests == []
    assert world.platform.auth.token_calls == 0


def test_tesouro_messages_say_organization(world: Env) -> None:
    r = world.run("connection", "list", "--profile", "t", "--organization", "not-a-uuid")
    assert r.code == 2
    assert "organization ID 'not-a-uuid' is not a UUID" in r.err
    assert "entity" not in r.err
    created = world.run("connection", "create", "--profile", "t", "--organization", ORG)
    assert created.code == 0, created.err
    assert "send the connection_url to the organization's user" in created.err
    assert f"--organization {ORG}" in created.err
    assert "entity" not in created.err
    again = world.run("connection", "create", "--profile", "t", "--organization", ORG)
    assert again.code == 7
    assert f"organization {ORG} already has an active accounting connection" in again.err
    assert "entity" not in again.err


def test_platform_errors_in_plain_words(world: Env) -> None:
    state = world.platform.connections
    state.inject(
        422,
        body={
            "detail": [
                {
                    "loc": ["body", "platform"],
                    "msg": "value is not a valid enumeration member",
                    "type": "type_error.enum",
                }
            ]
        },
        method="POST",
    )
    r = world.monite("create")
    assert r.code == 2
    assert "platform: value is not a valid enumeration member" in r.err
    assert "Traceback" not in r.err
    r = world.run("connection", "get", str(uuid.uuid4()), "--profile", "m", "--entity", ENTITY)
    assert r.code == 2
    assert "Accounting connection not found" in r.err
    state.inject(429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "1"})
    started = time.monotonic()
    r = world.monite("list")
    assert r.code == 0, r.err
    assert time.monotonic() - started >= 1.0
    state.inject(429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "600"})
    r = world.monite("list")
    assert r.code == 6
    assert "asks to wait 600 s" in r.err


def test_token_refresh_after_401(world: Env) -> None:
    assert world.monite("list").code == 0
    with world.platform.auth.lock:
        world.platform.auth.issued.clear()  # the platform revokes the cached token
    r = world.monite("list")
    assert r.code == 0, r.err
    assert len(world.platform.auth.issued) == 1
    statuses = [r.path for r in world.platform.connections.requests]
    assert len(statuses) == 3


def test_bad_client_credentials_are_an_auth_error(world: Env) -> None:
    world.env["KC_TEST_CLIENT_SECRET"] = "wrong-secret-" + "z" * 20
    r = world.monite("list")
    assert r.code == 5
    assert "wrong-secret" not in r.err


def test_token_file_instead_of_the_helper(world: Env) -> None:
    token_file = world.tmp / "token"
    token_file.write_text("fixed-token-for-ci\n")
    world.platform.connections.accept_token("fixed-token-for-ci")
    r = world.run(
        "connection",
        "list",
        "--profile",
        "m",
        "--entity",
        ENTITY,
        "--token-file",
        str(token_file),
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json() == {"data": []}
    assert world.platform.auth.token_calls == 0
    world.platform.connections.revoke_token("fixed-token-for-ci")
    r = world.run(
        "connection",
        "list",
        "--profile",
        "m",
        "--entity",
        ENTITY,
        "--token-file",
        "-",
        stdin=b"fixed-token-for-ci\n",
    )
    assert r.code == 5
    assert "the platform refused the partner token from standard input (--token-file)" in r.err
    assert "fresh token" not in r.err  # none was fetched: a given token is not refreshed
    assert "fixed-token-for-ci" not in r.err
    assert world.platform.auth.token_calls == 0
    r = world.run(
        "connection", "list", "--profile", "m", "--entity", ENTITY,
        "--token-file", str(token_file),
    )  # fmt: skip
    assert r.code == 5
    assert f"the platform refused the partner token from the file {token_file}" in r.err
    assert "leave out --token-file" in r.err
    assert world.platform.auth.token_calls == 0


def test_replace_asks_on_a_terminal(world: Env) -> None:
    first = world.monite("create")
    assert first.code == 0
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keycourier",
            "connection",
            "create",
            "--profile",
            "m",
            "--entity",
            ENTITY,
            "--replace",
        ],
        env=world.env,
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        cwd=world.tmp,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Disconnect it and create a new one?" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                seen += os.read(master, 4096)
        assert b"active connection:" in seen
        os.write(master, b"y\n")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0
    assert b"connection_id:" in out
    statuses = sorted(c.status for c in world.platform.connections.connections.values())
    assert statuses == ["disconnected", "pending_auth"]


def test_help_has_examples() -> None:
    runner = CliRunner()
    for name in ["create", "list", "get", "disconnect", "wait"]:
        result = runner.invoke(connection, [name, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output
        assert "--entity" in result.output
    assert "5 deauthorized" in runner.invoke(connection, ["wait", "--help"]).output


def test_changes_are_recorded_in_vault(world: Env, bao_dev: BaoServer) -> None:
    """create, wait (connected) and disconnect each deliver their event to Vault: one
    write-once record per event at keycourier/events/<type>/<ledger_id>-<seq>, of that type,
    identical (seq, hash) to the ledger's event, naming the entity and the connection."""
    world.env.update({"VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": bao_dev.token})
    created = world.run("connection", "create", "--profile", "m", "--entity", ENTITY, "--json")
    assert created.code == 0, created.err
    doc = created.json()
    cid = doc["connection"]["id"]
    assert [(r["event"], r["vault"]) for r in doc["recorded"]] == [
        ("connection_created", "recorded")
    ]
    assert "in the ledger and in Vault" in created.err

    authorize(doc["connection"]["connection_url"], "xero")
    waited = world.run(
        "connection", "wait", cid, "--profile", "m", "--entity", ENTITY,
        "--timeout", "20s", "--poll-interval", "100ms", "--json",
    )  # fmt: skip
    assert waited.code == 0, waited.err
    assert [(r["event"], r["vault"]) for r in waited.json()["recorded"]] == [
        ("connection_connected", "recorded")
    ]
    gone = world.run(
        "connection", "disconnect", cid, "--profile", "m", "--entity", ENTITY, "--json"
    )
    assert gone.code == 0, gone.err
    assert [(r["event"], r["vault"]) for r in gone.json()["recorded"]] == [
        ("connection_disconnected", "recorded")
    ]

    events = ledger_events(world)
    kinds = ["connection_created", "connection_connected", "connection_disconnected"]
    assert [e["type"] for e in events] == kinds
    assert all(e["vault_status"] == "recorded" for e in events)
    with sqlite3.connect(world.tmp / "ledger.db") as db:
        ledger_id = db.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]
    client = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    for event in events:
        kind = event["type"]
        names = client.secrets.kv.v2.list_secrets(
            path=f"keycourier/events/{kind}", mount_point="secret"
        )["data"]["keys"]
        mine = [n for n in names if n.startswith(ledger_id + "-")]
        assert mine == [f"{ledger_id}-{event['seq']:010d}"], kind
        record = client.secrets.kv.v2.read_secret_version(
            path=f"keycourier/events/{kind}/{mine[0]}",
            mount_point="secret",
            raise_on_deleted_version=True,
        )["data"]["data"]
        assert record["type"] == kind
        assert (record["ledger"], record["seq"], record["hash"]) == (
            ledger_id,
            event["seq"],
            event["hash"],
        )
        body = json.loads(record["body"])
        assert body["type"] == kind
        assert cid in record["body"]
        assert ENTITY in record["body"]
        assert CLIENT_SECRET not in json.dumps(record)
    verify = world.run("audit", "verify", "--vault", "--json")
    assert verify.code == 0, verify.out + verify.err
    report = verify.json()
    assert (report["ok"], report["vault_checked"], report["pending"]) == (True, True, 0)


def test_vault_down_keeps_the_event_pending(world: Env) -> None:
    world.env.update({"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "t"})
    created = world.run("connection", "create", "--profile", "m", "--entity", ENTITY, "--json")
    assert created.code == 0, created.err
    assert created.json()["recorded"][0]["vault"] == "pending"
    assert "keycourier sync" in created.err


def test_a_created_connection_is_shown_when_bookkeeping_after_its_event_fails(
    world: Env,
) -> None:
    """The platform made the connection and its event is committed: a failure of what
    closing the ledger still does (here the checkpoint, the ledger busy) is a warning."""
    assert world.monite("list").code == 0
    assert world.run("audit", "export", "--format", "jsonl").code == 0  # creates the ledger
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.busy_checkpoint",
            "connection",
            "create",
            "--profile",
            "m",
            "--entity",
            ENTITY,
            "--json",
        ],
        env={**world.env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        timeout=60,
        cwd=world.tmp,
        check=False,
    )
    created = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert created.code == 0, created.err
    assert created.json()["connection"]["connection_url"]
    assert "keycourier: warning: the event is on record, but the ledger bookkeeping" in created.err
    assert [e["type"] for e in ledger_events(world)] == ["connection_created"]
