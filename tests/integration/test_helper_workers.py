"""``keycourier serve --workers N``: a supervisor and N worker processes on one socket.

Everything runs for real: ``keycourier serve`` as a subprocess on 127.0.0.1,
requests over HTTP (many on fresh connections, so that the kernel spreads
them over the workers; ``keycourier_helper_worker_requests_total`` shows the
spread), the platform stand-in counting upstream calls, the ledger in SQLite.
The supervisor and its workers are stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from keycourier import config
from keycourier.ledger.interface import EventType
from tests.support.helper_server import (
    Helper,
    add_client,
    base_env,
    call,
    kc,
    metric,
    self_signed,
    start_helper,
)
from tests.support.openbao import free_port
from tests.support.platform_standin import RunningStandin

CI = {"profile": "ci"}


def start_workers(env: dict[str, str], tmp_path: Path, n: int, *args: str) -> Helper:
    listen = args or ("--listen", f"127.0.0.1:{free_port()}")
    return start_helper(env, tmp_path, *listen, "--workers", str(n))


def workers_of(pid: int) -> set[int]:
    """The PIDs of a process's children, from /proc (every thread's list)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_for(cond: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.05)
    return False


def per_worker(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("keycourier_helper_worker_requests_total{"):
            sample, _, value = line.rpartition(" ")
            out[sample] = float(value)
    return out


def fresh_connections(url: str, key: str, n: int, body: object = CI) -> list[tuple[int, str]]:
    """``n`` concurrent ``POST /v1/token``, each on its own connection: (status, token or "")."""
    import aiohttp

    async def scenario() -> list[tuple[int, str]]:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one() -> tuple[int, str]:
                async with s.post(
                    url + "/v1/token", json=body, headers={"Authorization": f"Bearer {key}"}
                ) as resp:
                    doc = await resp.json()
                    return resp.status, doc.get("access_token", "")

            return await asyncio.gather(*(one() for _ in range(n)))

    return asyncio.run(scenario())


def test_workers_must_be_a_count_or_auto(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    for bad in ("0", "x", "65", "-1"):
        r = kc(env, "serve", "--listen", f"127.0.0.1:{free_port()}", "--workers", bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert "--workers must be" in r.stderr


def test_500_requests_across_4_workers_around_a_refresh_make_one_upstream_call(
    tmp_path: Path, standin: RunningStandin
) -> None:
    standin.state.monite_lifetime = 6  # refresh point at 3 s (refresh_at = 0.5)
    env = base_env(tmp_path, standin, lifetime_profile="refresh_at = 0.5")
    h = start_workers(env, tmp_path, 4)
    try:
        assert len(workers_of(h.proc.pid)) == 4
        key = add_client(env, "burst", "--profile", "ci", "--rate", "100000")
        # warm every worker: each asks the supervisor, which calls the platform once
        results = fresh_connections(h.url, key, 60)
        warmed = time.monotonic()
        assert [s for s, _ in results] == [200] * 60
        assert standin.state.token_calls == 1
        standin.state.delay = 0.5  # the refresh stays in flight while the burst arrives
        time.sleep(max(0.0, warmed + 3.4 - time.monotonic()))  # past 50%, before expiry
        results = fresh_connections(h.url, key, 500)
        assert [s for s, _ in results] == [200] * 500
        assert all(tok in standin.state.issued for _, tok in results)
        assert wait_for(lambda: len(standin.state.issued) >= 2, 10)
        time.sleep(1.0)  # longer than the stand-in's delay: a second refresh would show by now
        assert standin.state.token_calls == 2
        text = call(h.url, "/metrics", key=key)[2].decode()
        assert metric(text, "keycourier_helper_workers") == 4
        assert metric(text, "keycourier_helper_upstream_calls_total") == 2
        served = per_worker(text)
        assert len(served) == 4
        assert sum(1 for v in served.values() if v > 0) >= 2, served  # really spread
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_rate_limit_holds_for_the_client_across_workers(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 4)
    try:
        warm = add_client(env, "warm", "--profile", "ci", "--rate", "100000")
        assert {s for s, _ in fresh_connections(h.url, warm, 40)} == {200}
        key = add_client(env, "slow", "--profile", "ci", "--rate", "1")  # burst of 2
        started = time.monotonic()
        results = fresh_connections(h.url, key, 40)
        elapsed = time.monotonic() - started
        ok = sum(1 for s, _ in results if s == 200)
        assert {s for s, _ in results} <= {200, 429}
        # the client's burst (2) plus what its rate refilled meanwhile, whichever workers
        # answered; one bucket per worker would let up to 2 per worker through
        assert 2 <= ok <= 2 + int(elapsed) + 1, (ok, elapsed)
        text = call(h.url, "/metrics", key=warm)[2].decode()
        served = per_worker(text)
        assert sum(1 for v in served.values() if v > 0) >= 2, served
        assert f'keycourier_helper_requests_total{{route="token",status="429"}} {40 - ok}' in text
    finally:
        h.stop()


def test_revocation_and_sighup_reach_every_worker(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 4)
    try:
        pids = workers_of(h.proc.pid)
        doomed = add_client(env, "doomed", "--profile", "ci", "--rate", "100000")
        # every worker that answers now remembers the key (its fast path)
        assert {s for s, _ in fresh_connections(h.url, doomed, 80)} == {200}
        r = kc(env, "helper", "client", "revoke", "doomed")
        assert r.returncode == 0, r.stderr
        time.sleep(1.2)
        assert {s for s, _ in fresh_connections(h.url, doomed, 80)} == {401}

        # SIGHUP: forwarded; the workers re-read the store and keep running
        late = add_client(env, "late", "--profile", "ci")
        h.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert h.proc.poll() is None
        assert workers_of(h.proc.pid) == pids
        assert {s for s, _ in fresh_connections(h.url, late, 20)} == {200}
        text = call(h.url, "/metrics", key=late)[2].decode()
        assert metric(text, "keycourier_helper_worker_restarts_total") == 0
        assert sum(1 for v in per_worker(text).values() if v > 0) >= 2
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_handed_out_is_recorded_once_per_client_and_token_across_workers(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 4)
    try:
        k1 = add_client(env, "one", "--profile", "ci", "--rate", "100000")
        k2 = add_client(env, "two", "--profile", "ci", "--rate", "100000")
        for key in (k1, k2):
            assert {s for s, _ in fresh_connections(h.url, key, 60)} == {200}
        text = call(h.url, "/metrics", key=k1)[2].decode()
        assert metric(text, "keycourier_helper_handouts_first_total") == 2
        assert metric(text, "keycourier_helper_handouts_repeat_total") == 118
        assert 'keycourier_helper_requests_total{route="token",status="200"} 120' in text
        assert sum(1 for v in per_worker(text).values() if v > 0) >= 2
        workers = workers_of(h.proc.pid)
    finally:
        err, code = h.stop()
    assert code == 0, err
    assert "3 events recorded, 0 failed, 1 upstream calls" in err
    assert not any(alive(pid) for pid in workers)
    assert standin.state.token_calls == 1
    token = next(iter(standin.state.issued))
    from keycourier.ledger.recorder import open_recorder
    from keycourier.partner.tokens import Token
    from keycourier.redact import Secret

    fp = Token(Secret(token), "Bearer", 1, 0).fingerprint
    rec = open_recorder(config.load(env=env))
    try:
        events = [s.event for s in rec.history(fingerprint=fp)]
    finally:
        rec.close()
    assert sorted((e.type, e.actor) for e in events) == [
        (EventType.TOKEN_HANDED_OUT, "client:one"),
        (EventType.TOKEN_HANDED_OUT, "client:two"),
        (EventType.TOKEN_ISSUED, "profile:ci"),
    ]
    for e in events:
        assert token not in json.dumps(dict(e.data))


def test_a_dead_worker_is_restarted_and_sigterm_stops_all(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 2)
    after: set[int] = set()
    try:
        key = add_client(env, "ci", "--profile", "ci", "--rate", "100000")
        assert {s for s, _ in fresh_connections(h.url, key, 10)} == {200}
        before = workers_of(h.proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(
            lambda: len(workers_of(h.proc.pid)) == 2 and victim not in workers_of(h.proc.pid)
        )
        after = workers_of(h.proc.pid)
        assert (before - {victim}) < after
        # the new worker serves too (the restarted slot answers /metrics again)
        assert wait_for(
            lambda: (
                metric(call(h.url, "/metrics", key=key)[2].decode(), "keycourier_helper_workers")
                == 2
            )
        )
        assert {s for s, _ in fresh_connections(h.url, key, 40)} == {200}
        text = call(h.url, "/metrics", key=key)[2].decode()
        assert metric(text, "keycourier_helper_worker_restarts_total") == 1
        assert metric(text, "keycourier_helper_upstream_calls_total") == 1  # the token survived
    finally:
        err, code = h.stop()
    assert code == 0, err
    assert "restarting it in" in err
    assert not any(alive(pid) for pid in after)


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 2)
    key = add_client(env, "ci", "--profile", "ci")
    standin.state.delay = 2.0  # the first token takes 2 s to arrive
    got: list[tuple[int, dict[str, str], bytes]] = []
    t = threading.Thread(target=lambda: got.append(call(h.url, "/v1/token", key=key, body=CI)))
    t.start()
    assert wait_for(lambda: standin.state.token_calls == 1, 10)
    h.proc.send_signal(signal.SIGTERM)
    t.join(30)
    err, code = h.stop()
    assert code == 0, err
    assert got, "no reply"
    assert got[0][0] == 200, got
    assert standin.state.is_valid(json.loads(got[0][2])["access_token"])
    assert "2 events recorded, 0 failed" in err


def test_unix_socket_with_workers(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    sock = tmp_path / "helper.sock"
    h = start_workers(env, tmp_path, 2, "--socket", str(sock))
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        key = add_client(env, "local", "--profile", "ci")
        client_env = env | {"KEYCOURIER_HELPER_URL": f"unix:{sock}", "KEYCOURIER_HELPER_KEY": key}
        for _ in range(3):
            r = kc(client_env, "token", "--profile", "ci")
            assert r.returncode == 0, r.stderr
            assert standin.state.is_valid(r.stdout.strip())
        assert standin.state.token_calls == 1
    finally:
        err, code = h.stop()
    assert code == 0, err
    assert not sock.exists()


def test_tls_with_workers(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    cert, key_pem = self_signed(tmp_path)
    h = start_workers(env, tmp_path, 2, "--listen", f"127.0.0.1:{free_port()}",
                      "--tls-cert", str(cert), "--tls-key", str(key_pem))  # fmt: skip
    try:
        assert h.url.startswith("https://127.0.0.1:")
        key = add_client(env, "tls", "--profile", "ci")
        client_env = env | {
            "KEYCOURIER_HELPER_URL": h.url,
            "KEYCOURIER_HELPER_KEY": key,
            "KEYCOURIER_HELPER_CACERT": str(cert),
        }
        for _ in range(3):
            r = kc(client_env, "token", "--profile", "ci")
            assert r.returncode == 0, r.stderr
            assert standin.state.is_valid(r.stdout.strip())
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_workers_do_not_get_the_platform_credentials(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin) | {"VAULT_TOKEN": "hvs.not-for-workers-0000"}
    h = start_workers(env, tmp_path, 2)
    try:
        key = add_client(env, "ci", "--profile", "ci")
        assert call(h.url, "/v1/token", key=key, body=CI)[0] == 200
        workers = workers_of(h.proc.pid)
        assert len(workers) == 2
        for pid in workers:
            names = {
                item.split(b"=", 1)[0].decode()
                for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if item
            }
            assert "MONITE_CLIENT_ID" not in names
            assert "MONITE_CLIENT_SECRET" not in names
            assert "VAULT_TOKEN" not in names
            assert "KEYCOURIER_CONFIG" in names  # the rest of the environment is inherited
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_workers_run_on_uvloop_when_it_is_installed(
    tmp_path: Path, standin: RunningStandin
) -> None:
    uvloop = pytest.importorskip("uvloop")  # in the test extra: installed wherever tests run
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 2)
    try:
        key = add_client(env, "ci", "--profile", "ci")
        assert call(h.url, "/v1/token", key=key, body=CI)[0] == 200
        library = Path(uvloop.__file__).parent
        for pid in workers_of(h.proc.pid):
            assert str(library) in Path(f"/proc/{pid}/maps").read_text()
        assert str(library) not in Path(f"/proc/{h.proc.pid}/maps").read_text()
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_outage_serves_the_cached_token_from_every_worker_then_503(
    tmp_path: Path, standin: RunningStandin
) -> None:
    standin.state.monite_lifetime = 6  # refresh at 50% (3 s); never served in its last second
    env = base_env(tmp_path, standin, lifetime_profile="max_retries = 0\nrefresh_at = 0.5")
    h = start_workers(env, tmp_path, 2)
    try:
        key = add_client(env, "ci", "--profile", "ci", "--rate", "100000")
        results = fresh_connections(h.url, key, 20)
        started = time.monotonic()
        assert {s for s, _ in results} == {200}
        first = results[0][1]
        standin.state.inject(503, count=1000)
        time.sleep(max(0.0, started + 3.3 - time.monotonic()))  # past the refresh point
        results = fresh_connections(h.url, key, 20)
        assert [s for s, _ in results] == [200] * 20
        assert {tok for _, tok in results} == {first}
        time.sleep(max(0.0, started + 5.3 - time.monotonic()))  # inside the last second
        results = fresh_connections(h.url, key, 20)
        assert [s for s, _ in results] == [503] * 20
        text = call(h.url, "/metrics", key=key)[2].decode()
        assert metric(text, "keycourier_helper_upstream_errors_total") == 1
        assert metric(text, "keycourier_helper_upstream_calls_total") == 2
        assert sum(1 for v in per_worker(text).values() if v > 0) == 2
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_auto_starts_one_worker_per_cpu(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin)
    h = start_helper(env, tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--workers", "auto")
    try:
        cpus = min(64, len(os.sched_getaffinity(0)))
        key = add_client(env, "ci", "--profile", "ci")
        assert call(h.url, "/v1/token", key=key, body=CI)[0] == 200
        text = call(h.url, "/metrics", key=key)[2].decode()
        if cpus == 1:  # one process, no supervisor
            assert workers_of(h.proc.pid) == set()
            assert "keycourier_helper_workers" not in text
        else:
            assert len(workers_of(h.proc.pid)) == cpus
            assert metric(text, "keycourier_helper_workers") == cpus
    finally:
        err, code = h.stop()
    assert code == 0, err


def _burst(url: str, key: str, n: int) -> list[int]:
    """``n`` connections opened back to back before any request is sent (as a load tester
    or a fleet of CI jobs starting together does), then one ``POST /v1/token`` on each:
    the HTTP status codes."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    body = json.dumps(CI).encode()
    request = (
        f"POST /v1/token HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    conns = [socket.create_connection((where.hostname, where.port), timeout=10) for _ in range(n)]
    statuses = []
    try:
        for c in conns:
            c.sendall(request)
        for c in conns:
            head = b""
            while b"\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    break
                head += chunk
            statuses.append(int(head.split(b" ", 2)[1]) if head else 0)
    finally:
        for c in conns:
            c.close()
    return statuses


def test_a_burst_of_connections_is_spread_evenly_over_the_workers(
    tmp_path: Path, standin: RunningStandin
) -> None:
    """Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new
    connections: a burst opened back to back lands on both workers in fair shares (on
    one shared listening socket, the first worker to wake took the whole burst)."""
    env = base_env(tmp_path, standin)
    h = start_workers(env, tmp_path, 2)
    try:
        key = add_client(env, "fleet", "--profile", "ci", "--rate", "100000")
        # a client just added is known at once to whichever worker a connection reaches
        assert [c for c, _ in fresh_connections(h.url, key, 8)] == [200] * 8
        before = per_worker(call(h.url, "/metrics", key=key)[2].decode())
        assert _burst(h.url, key, 200) == [200] * 200
        after = per_worker(call(h.url, "/metrics", key=key)[2].decode())
        served = sorted(after[k] - before.get(k, 0) - 1 for k in after)  # less the /metrics
        assert len(served) == 2
        # a fair coin 200 times gives fewer than 60 heads with probability below 1e-8
        assert served[0] >= 60, served
    finally:
        err, code = h.stop()
    assert code == 0, err
