"""Benchmark: authenticated cached-token requests to ``keycourier serve`` vs bare aiohttp.

Target (issue 5): with wrk at 2 threads, 50 connections, 10 s on loopback, the
helper's ``POST /v1/token`` (client key, cached token) serves at least 0.8 x
the requests per second of a bare aiohttp endpoint returning the same JSON,
measured in the same run, with p99 under 10 ms. nginx serving the same body
is reported as the ceiling. Writes the ``bench:helper`` section of
BENCHMARKS.md. Every server is started on a free 127.0.0.1 port and stopped by
its own PID.

Usage: scripts/bench-helper [--duration 10] [--rounds 1] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_common import write_section  # noqa: E402
from tests.support.platform_standin import StandinState, start_standin  # noqa: E402

CLIENT_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
CLIENT_SECRET = "bench-secret-0f1e2d3c4b5a69788796a5b4"  # noqa: S105 - stand-in credential

BARE_APP = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    BODY = open(sys.argv[2], "rb").read()
    async def token(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/token", token)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

NGINX_CONF = """
worker_processes 1;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/token {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""

LUA = """
wrk.method = "POST"
wrk.body = '{{"profile": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    cpu_us: float  # server CPU time (user + system) per request: robust to machine noise


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(name: str, url: str, script: Path, duration: int, pid: int) -> Result:
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{duration}s", "--latency", "-s", str(script), url + "/v1/token"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu = (cpu_seconds(pid) - cpu0) / max(1, total) * 1e6
    return Result(name, rps, p50, p99, int(bad.group(1)) if bad else 0, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median used)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-helper: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )

    load_start = os.getloadavg()[0]
    standin = start_standin(StandinState(clients={CLIENT_ID: CLIENT_SECRET}, monite_lifetime=86400))
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="kc-bench-helper-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            env = dict(os.environ)
            env.update(
                HOME=str(tmp / "home"),
                XDG_CONFIG_HOME=str(tmp / "home/.config"),
                XDG_DATA_HOME=str(tmp / "home/.local/share"),
                KEYCOURIER_CONFIG=str(tmp / "config.toml"),
                KEYCOURIER_LEDGER=str(tmp / "ledger.db"),
                BENCH_ID=CLIENT_ID,
                BENCH_SECRET=CLIENT_SECRET,
            )
            for var in ("VAULT_ADDR", "VAULT_TOKEN", "KEYCOURIER_HELPER_URL"):
                env.pop(var, None)
            (tmp / "config.toml").write_text(
                f'[profiles.bench]\ndialect = "monite"\nbase_url = "{standin.url}/v1"\n'
                'environment = "sandbox"\nversion = "2024-05-25"\n'
                'client_id_env = "BENCH_ID"\nclient_secret_env = "BENCH_SECRET"\n'
            )
            kc = [sys.executable, "-m", "keycourier"]
            key = subprocess.run(
                [
                    *kc,
                    "helper",
                    "client",
                    "add",
                    "bench",
                    "--profile",
                    "bench",
                    "--rate",
                    "1000000",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            helper_port = free_port()
            helper = subprocess.Popen(
                [*kc, "serve", "--listen", f"127.0.0.1:{helper_port}"],
                env=env,
                stderr=subprocess.DEVNULL,
            )
            procs.append(helper)
            helper_url = f"http://127.0.0.1:{helper_port}"
            wait_up(helper_url, helper)
            req = urllib.request.Request(  # noqa: S310 - loopback
                helper_url + "/v1/token",
                data=b'{"profile": "bench"}',
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req) as resp:  # noqa: S310 - loopback; warms the cache
                body = resp.read()
            doc = json.loads(body)
            body_file = tmp / "body.json"
            body_file.write_bytes(body)

            bare_port = free_port()
            (tmp / "bare.py").write_text(BARE_APP)
            bare = subprocess.Popen(
                [sys.executable, str(tmp / "bare.py"), str(bare_port), str(body_file)]
            )
            procs.append(bare)
            bare_url = f"http://127.0.0.1:{bare_port}"
            wait_up(bare_url, bare)

            nginx_url = None
            nginx_pid = 0
            if nginx:
                nport = free_port()
                prefix = tmp / "nginx"
                prefix.mkdir()
                conf = prefix / "nginx.conf"
                conf.write_text(NGINX_CONF.format(prefix=prefix, port=nport, body=body.decode()))
                ngx = subprocess.Popen(
                    [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                    stderr=subprocess.DEVNULL,
                )
                procs.append(ngx)
                nginx_url = f"http://127.0.0.1:{nport}"
                wait_up(nginx_url, ngx)
                time.sleep(0.2)
                nginx_pid = ngx.pid  # master_process off: one process does the work

            auth_lua = tmp / "auth.lua"
            auth_lua.write_text(LUA.format(auth=f'wrk.headers["Authorization"] = "Bearer {key}"'))
            plain_lua = tmp / "plain.lua"
            plain_lua.write_text(LUA.format(auth=""))

            rounds: list[dict[str, Result]] = []
            for _ in range(args.rounds):
                best: dict[str, Result] = {}
                rounds.append(best)
                targets = [
                    ("helper", helper_url, auth_lua, helper.pid),
                    ("bare aiohttp", bare_url, plain_lua, bare.pid),
                ]
                if nginx_url:
                    targets.append(("nginx", nginx_url, plain_lua, nginx_pid))
                for name, url, script, pid in targets:
                    r = run_wrk(name, url, script, args.duration, pid)
                    line = (
                        f"{name}: {r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
                    )
                    print(f"{line}, non-2xx {r.non_2xx}", file=sys.stderr)
                    best[name] = r
            metrics_req = urllib.request.Request(  # noqa: S310 - loopback
                helper_url + "/metrics", headers={"Authorization": f"Bearer {key}"}
            )
            with urllib.request.urlopen(metrics_req) as resp:  # noqa: S310 - loopback
                metrics = resp.read().decode()
            upstream = re.search(r"^keycourier_helper_upstream_calls_total (\d+)", metrics, re.M)
        finally:
            for p in reversed(procs):
                stop(p)
            standin.stop()

    load_end = os.getloadavg()[0]
    ratios = [r["helper"].rps / r["bare aiohttp"].rps for r in rounds if r["bare aiohttp"].rps]
    ratio = statistics.median(ratios) if ratios else 0.0
    p99 = statistics.median(r["helper"].p99_ms for r in rounds)
    bare_p99 = statistics.median(r["bare aiohttp"].p99_ms for r in rounds)
    errors = sum(r["helper"].non_2xx for r in rounds)
    ok_ratio = ratio >= 0.8
    ok_p99 = p99 < 10.0
    verdict = "PASS" if ok_ratio and ok_p99 and errors == 0 else "FAIL"
    rows = [
        "| round | server | req/s | p50 ms | p99 ms | non-2xx | server CPU µs/request |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for i, rnd in enumerate(rounds, 1):
        rows += [
            f"| {i} | {r.name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} "
            f"| {r.cpu_us:.0f} |"
            for r in rnd.values()
        ]
    cpu_ratio = statistics.median(
        r["bare aiohttp"].cpu_us / r["helper"].cpu_us for r in rounds if r["helper"].cpu_us
    )
    if not nginx:
        rows.append("| - | nginx | not installed | | | |")
    doc_type = doc["token_type"]
    body_md = "\n".join(
        [
            f"`scripts/bench-helper`: wrk -t2 -c50 -d{args.duration}s on loopback, "
            f"{args.rounds} interleaved rounds (helper, bare, nginx in turn); the verdict uses "
            "the median over rounds. POST /v1/token "
            '`{"profile": "bench"}` with a client key, cached token (the stand-in issued it once: '
            f"upstream calls during the run: {upstream.group(1) if upstream else '?'}). "
            "The bare endpoint is a one-route aiohttp app returning the same JSON without "
            "authentication; nginx (one process, `return 200`) is the ceiling. All on the same "
            "2-core machine as wrk itself, which is shared with other work "
            f"(1-minute load average {load_start:.2f} at the start, {load_end:.2f} at the end).",
            "",
            *rows,
            "",
            f"- helper / bare aiohttp, median of per-round ratios "
            f"({', '.join(f'{x:.2f}' for x in ratios)}): **{ratio:.2f}** (target >= 0.80): "
            f"{'PASS' if ok_ratio else 'FAIL'}",
            f"- helper p99, median: **{p99:.2f} ms** (target < 10 ms): "
            f"{'PASS' if ok_p99 else 'FAIL'}"
            f" (bare aiohttp, median: {bare_p99:.2f} ms)",
            f"- helper non-2xx responses: {errors}",
            f"- CPU-based ratio (bare CPU per request / helper CPU per request, median): "
            f"{cpu_ratio:.2f}. Not a target; shown because it does not depend on what else the "
            "shared machine is doing, unlike req/s and p99.",
            f"- token_type {doc_type}, body {len(body)} bytes",
            *(
                []
                if ok_p99
                else [
                    "- Why p99 < 10 ms is hard here: with 50 connections kept busy, mean latency "
                    "is 50 / throughput (Little's law), so a p99 under 10 ms needs well over "
                    "5000 req/s with little spread from one Python process on a shared 2-core "
                    "machine that also runs wrk; compare the bare aiohttp p99 in the same run. "
                    "nginx shows the machine's ceiling."
                ]
            ),
            "",
            f"**Verdict: {verdict}**",
        ]
    )
    print(body_md)
    if not args.no_write:
        write_section("helper", "Token helper (`keycourier serve`)", body_md)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
