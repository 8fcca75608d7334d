"""Slow and idle connections cannot starve ``keycourier serve`` (real subprocess, real sockets).

The helper runs with its descriptor limit lowered (RLIMIT_NOFILE) so that a
flood of half-sent requests from this process reaches it quickly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.helper_server import (
    Helper,
    add_client,
    base_env,
    call,
    kc,
)
from tests.support.openbao import free_port
from tests.support.platform_standin import RunningStandin

CI = {"profile": "ci"}
HALF_A_REQUEST_LINE = b"POST /v1/tok"
# the header deadline out of the way, so that the cap alone decides what a flood may hold
# however slowly this shared machine runs the test
HOLD = "[helper]\nheader_timeout = 60\n"


def _nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def start(env: dict[str, str], *args: str, nofile: int | None = None) -> Helper:
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_nofile(nofile) if nofile else None,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"helper did not start: {line}{proc.communicate()[1]}")
    return Helper(proc, line.rsplit(" ", 1)[1].strip(), env, Path())


def flood(address: tuple[str, int] | str, count: int) -> list[socket.socket]:
    """``count`` connections, each sending half a request line and then nothing."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    socks = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(address)
        socks.append(s)
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_WRITE)
        waiting, deadline = len(socks), time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sel.unregister(key.fileobj)
                waiting -= 1
                with contextlib.suppress(OSError):
                    key.fileobj.send(HALF_A_REQUEST_LINE)  # type: ignore[union-attr]
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has neither closed nor reset."""
    count = 0
    for s in socks:
        try:
            if s.recv(1):
                count += 1  # an answer: open (not expected for half a request line)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def settle(socks: list[socket.socket], most: int, seconds: float = 10) -> int:
    """How many of ``socks`` are open once at most ``most`` are (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while (n := still_open(socks)) > most and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def timed_token(url: str, key: str) -> tuple[int, float]:
    """Status and seconds of one POST /v1/token on a new connection (5 s socket timeout)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(
            "POST",
            "/v1/token",
            body=json.dumps(CI),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    return resp.status, time.monotonic() - started


def test_a_flood_of_half_sent_requests_does_not_starve_a_client(
    tmp_path: Path, standin: RunningStandin
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2600 if hard == resource.RLIM_INFINITY else min(hard, 2600)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 2600, "cannot open the flood"
    env = base_env(tmp_path, standin, extra_config=HOLD)
    port = free_port()
    helper = start(env, "--listen", f"127.0.0.1:{port}", nofile=1024)
    socks: list[socket.socket] = []
    try:
        key = add_client(env, "ci", "--profile", "ci")
        assert timed_token(helper.url, key)[0] == 200  # the token is cached from here on
        socks = flood(("127.0.0.1", port), 2000)  # twice the helper's descriptor limit
        # the helper keeps at most its cap (1024 - 256 reserved) of them and closes the rest;
        # the others stay, holding their slots, while the client asks for its token
        held = settle(socks, 768)
        for _ in range(3):
            status, seconds = timed_token(helper.url, key)
            assert status == 200
            assert seconds < 1.0, f"the token took {seconds:.3f} s during the flood"
        assert 700 <= held <= 768
        assert still_open(socks) >= 700  # still held: the client did not wait them out
    finally:
        for s in socks:
            s.close()
        err, _ = helper.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Too many open files" not in err
    assert "Traceback" not in err


def test_the_overall_cap_evicts_the_oldest_arriving_request(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin, extra_config=HOLD + "max_connections = 30\n")
    port = free_port()
    helper = start(env, "--listen", f"127.0.0.1:{port}")
    socks: list[socket.socket] = []
    try:
        key = add_client(env, "ops", "--profile", "*")
        assert timed_token(helper.url, key)[0] == 200
        socks = flood(("127.0.0.1", port), 80)
        assert settle(socks, 30) == 30
        assert still_open(socks[:50]) == 0  # the oldest went first
        status, seconds = timed_token(helper.url, key)
        assert status == 200
        assert seconds < 1.0
        text = call(helper.url, "/metrics", key=key)[2].decode()
        evicted = 'keycourier_helper_connections_closed_total{reason="evicted"} '
        assert int(text.split(evicted, 1)[1].split()[0]) >= 50
    finally:
        for s in socks:
            s.close()
        helper.stop()


def test_the_per_peer_cap_on_a_unix_socket(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(tmp_path, standin, extra_config=HOLD + "max_connections_per_peer = 20\n")
    sock = tmp_path / "helper.sock"
    helper = start(env, "--socket", str(sock))
    socks: list[socket.socket] = []
    try:
        key = add_client(env, "local", "--profile", "ci")
        socks = flood(str(sock), 60)  # all from this process's user
        assert settle(socks, 20) == 20
        started = time.monotonic()
        r = kc(
            env | {"KEYCOURIER_HELPER_URL": f"unix:{sock}", "KEYCOURIER_HELPER_KEY": key},
            "token",
            "--profile",
            "ci",
        )
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 30
    finally:
        for s in socks:
            s.close()
        helper.stop()


def seconds_until_closed(s: socket.socket, limit: float) -> float:
    """Read until the server closes ``s``; the seconds that took (fails after ``limit``)."""
    s.settimeout(limit)
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while s.recv(4096):
            pass  # a reply (e.g. a 200 before an idle keep-alive): keep reading
    return time.monotonic() - started


def test_header_body_and_idle_deadlines(tmp_path: Path, standin: RunningStandin) -> None:
    env = base_env(
        tmp_path,
        standin,
        extra_config="[helper]\nheader_timeout = 1\nbody_timeout = 1.5\nidle_timeout = 1\n",
    )
    port = free_port()
    helper = start(env, "--listen", f"127.0.0.1:{port}")
    try:
        key = add_client(env, "ci", "--profile", "ci")
        address = ("127.0.0.1", port)

        with socket.create_connection(address) as s:  # half a request line
            s.sendall(HALF_A_REQUEST_LINE)
            took = seconds_until_closed(s, 10)
            assert 0.8 <= took < 5, took

        with socket.create_connection(address) as s:  # the header block, a byte at a time
            started = time.monotonic()
            header = f"POST /v1/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            with contextlib.suppress(OSError):
                for byte in header.encode():
                    s.sendall(bytes([byte]))
                    time.sleep(0.1)  # never idle for long: the deadline counts from the start
            took = time.monotonic() - started + seconds_until_closed(s, 10)
            assert took < 5, took

        with socket.create_connection(address) as s:  # headers, then part of the body
            s.sendall(
                b"POST /v1/token HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {key}\r\n".encode()
                + b'Content-Type: application/json\r\nContent-Length: 17\r\n\r\n{"prof'
            )
            took = seconds_until_closed(s, 10)
            assert 1.2 <= took < 6, took

        with socket.create_connection(address) as s:  # a whole request, then silence
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            took = seconds_until_closed(s, 10)
            assert 0.8 <= took < 5, took

        # a complete request in one piece is answered as before
        status, _seconds = timed_token(helper.url, key)
        assert status == 200
    finally:
        helper.stop()
