"""Benchmark `keycourier age`: start-up, streaming decrypt, and Debian's age for scale.

Targets, each against a baseline measured in the same run:
1. whole-process `keycourier age encrypt -r age1... -o out in200` (200-byte file):
   median <= 1.25 x `python -c "import click, <the cryptography modules it needs>"`.
2. streaming decrypt of a 256 MiB file: child peak RSS < 64 MiB, and throughput
   >= 0.5 x a bare ChaCha20-Poly1305 loop over 64 KiB chunks, for the whole
   `keycourier age decrypt` process (as the peak RSS is) and for the streaming
   engine in-process (`decrypt_stream`, file to /dev/null). The read + decrypt
   floor (no age code at all) is reported beside them: it bounds any
   decrypter that reads the file, before interpreter start-up is added.
3. for scale only: Debian's `age` on the same files (ratios reported, no target).

Writes the `bench:age` section of BENCHMARKS.md. Prints PASS/FAIL per target and
exits 0 either way (the numbers are the result); exits 2 if a command fails.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import write_section  # noqa: E402

from keycourier import age  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
KC = str(ROOT / ".venv" / "bin" / "keycourier")
AGE = shutil.which("age")
STARTUP_RUNS = int(os.environ.get("BENCH_STARTUP_RUNS", "30"))
STREAM_RUNS = int(os.environ.get("BENCH_STREAM_RUNS", "3"))
BIG = 256 * 1024 * 1024
CHUNK = 64 * 1024
BASELINE_IMPORTS = (
    "import click, cryptography.hazmat.primitives.ciphers.aead, "
    "cryptography.hazmat.primitives.asymmetric.x25519, cryptography.hazmat.primitives.kdf.hkdf"
)


_CPU: list[float] = [0.0]  # CPU seconds (user + sys) of the last run_timed child


def run_timed(cmd: list[str]) -> float:
    """Wall seconds of one run (stdout to /dev/null); its CPU seconds go to _CPU."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else b""
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(f"bench: command failed ({code}): {cmd}\n{err.decode()}\n")
        sys.exit(2)
    _CPU[0] = usage.ru_utime + usage.ru_stime
    return elapsed


def peak_rss_kib(cmd: list[str], work: Path) -> int:
    """The command's own peak RSS, measured by GNU time (%M, KiB).

    Not os.wait4/RUSAGE_CHILDREN from this process: a child forked from a
    Python parent starts with the parent's resident pages and its ru_maxrss
    would report those.
    """
    report = work / "time.txt"
    res = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if res.returncode != 0:
        sys.stderr.write(
            f"bench: command failed ({res.returncode}): {cmd}\n{res.stderr.decode()}\n"
        )
        sys.exit(2)
    return int(report.read_text().split()[-1])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bare_chacha_seconds(total: int) -> float:
    """Decrypt `total` bytes of 64 KiB ChaCha20-Poly1305 chunks in-process."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    chunk = aead.encrypt(nonce, os.urandom(CHUNK), None)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        aead.decrypt(nonce, chunk, None)
    return time.perf_counter() - start


def write_floor_file(path: Path, total: int) -> bytes:
    """`total` bytes of plaintext as 64 KiB ChaCha20-Poly1305 chunks (one chunk
    encrypted once and written total/64Ki times); returns the key."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = os.urandom(32)
    chunk = ChaCha20Poly1305(key).encrypt(bytes(12), os.urandom(CHUNK), None)
    with path.open("wb") as fh:
        for _ in range(total // CHUNK):
            fh.write(chunk)
    return key


def read_decrypt_floor_seconds(path: Path, key: bytes) -> float:
    """The least any file decrypter does: read each 64 KiB + 16 chunk from the page
    cache into one buffer and decrypt it (tag verified) into another; no age parsing."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(key)
    nonce = bytes(12)
    inbuf = memoryview(bytearray(CHUNK + 16))
    outbuf = memoryview(bytearray(CHUNK))
    with path.open("rb", buffering=0) as src:
        start = time.perf_counter()
        while src.readinto(inbuf) == CHUNK + 16:
            aead.decrypt_into(nonce, inbuf, None, outbuf)
        return time.perf_counter() - start


def engine_seconds(path: Path, ident: age.Identity, read_ahead: bool | None = None) -> float:
    """In-process `decrypt_stream` of the file to /dev/null (the engine without start-up)."""
    with path.open("rb") as src, open(os.devnull, "wb") as dst:
        start = time.perf_counter()
        age.decrypt_stream([ident], src, dst, read_ahead=read_ahead)
        return time.perf_counter() - start


class _Repeat:
    """A readable of `size` bytes built from one random MiB (never held whole)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(1024 * 1024)

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, len(self.block) if n < 0 else n)
        self.left -= n
        out = bytearray()
        while len(out) < n:
            out += self.block[: n - len(out)]
        return bytes(out)


def main() -> None:
    # A pip install ships bytecode; an editable checkout run under
    # PYTHONDONTWRITEBYTECODE would recompile keycourier on every start.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [PY, "-m", "compileall", "-q", str(ROOT / "src" / "keycourier")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp(prefix="kc-bench-age-"))
    try:
        report = bench(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_section("age", "keycourier age (scripts/bench_age.py)", report)
    print(report)


def bench(work: Path) -> str:
    ident = age.X25519Identity.generate()
    recipient = ident.recipient().to_string()
    key = work / "key.txt"
    key.write_text(f"# public key: {recipient}\n{ident.to_string()}\n")
    key.chmod(0o600)
    in200 = work / "in200"
    in200.write_bytes(os.urandom(200))
    out = str(work / "out")

    # 1. start-up ----------------------------------------------------------------
    base_cmd = [PY, "-c", BASELINE_IMPORTS]
    kc_cmd = [KC, "age", "encrypt", "-r", recipient, "-o", out, str(in200)]
    age_cmd = [AGE, "-r", recipient, "-o", out, str(in200)] if AGE else None
    times: dict[str, list[float]] = {"base": [], "kc": [], "age": []}
    cpu: dict[str, list[float]] = {"base": [], "kc": []}
    for cmd in (base_cmd, kc_cmd):  # warm the page cache once
        run_timed(cmd)
    for _ in range(STARTUP_RUNS):
        times["base"].append(run_timed(base_cmd))
        cpu["base"].append(_CPU[0])
        times["kc"].append(run_timed(kc_cmd))
        cpu["kc"].append(_CPU[0])
        if age_cmd:
            times["age"].append(run_timed(age_cmd))
    base_med = statistics.median(times["base"])
    kc_med = statistics.median(times["kc"])
    startup_ratio = kc_med / base_med
    base_cpu = statistics.median(cpu["base"])
    kc_cpu = statistics.median(cpu["kc"])
    age_med = statistics.median(times["age"]) if times["age"] else None
    if age.decrypt([ident], Path(out).read_bytes()) != in200.read_bytes():
        sys.exit("bench: the encrypted 200-byte file does not decrypt back")

    # 2. streaming decrypt of 256 MiB ------------------------------------------
    big = work / "big.age"
    with big.open("wb") as fh:
        age.encrypt_stream([ident.recipient()], _Repeat(BIG), fh)  # type: ignore[arg-type]
    kc_dec = [KC, "age", "decrypt", "-i", str(key), str(big)]
    age_dec = [AGE, "-d", "-i", str(key), str(big)] if AGE else None
    floor_file = work / "floor.bin"
    floor_key = write_floor_file(floor_file, BIG)
    kc_runs: list[float] = []
    age_runs: list[float] = []
    floor_runs: list[float] = []
    bare_runs: list[float] = []
    engine_runs: list[float] = []
    single_runs: list[float] = []
    kc_cpu_runs: list[float] = []
    for _ in range(STREAM_RUNS):
        bare_runs.append(bare_chacha_seconds(BIG))
        engine_runs.append(engine_seconds(big, ident))
        single_runs.append(engine_seconds(big, ident, read_ahead=False))
        floor_runs.append(read_decrypt_floor_seconds(floor_file, floor_key))
        kc_runs.append(run_timed(kc_dec))
        kc_cpu_runs.append(_CPU[0])
        if age_dec:
            age_runs.append(run_timed(age_dec))
    kc_rss_mib = peak_rss_kib(kc_dec, work) / 1024
    age_rss_mib = peak_rss_kib(age_dec, work) / 1024 if age_dec else None
    mib = BIG / (1024 * 1024)
    kc_time = statistics.median(kc_runs)
    bare_time = statistics.median(bare_runs)
    tput_ratio = bare_time / kc_time
    engine_time = statistics.median(engine_runs)
    engine_ratio = bare_time / engine_time
    age_time = statistics.median(age_runs) if age_runs else None
    floor_time = statistics.median(floor_runs)
    single_time = statistics.median(single_runs)
    kc_dec_cpu = statistics.median(kc_cpu_runs)

    ok1 = startup_ratio <= 1.25
    ok2 = kc_rss_mib < 64
    ok3 = tput_ratio >= 0.5
    ok4 = engine_ratio >= 0.5
    lines = [
        "| measurement | keycourier | baseline (same run) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| encrypt 200 B, whole process, median of {STARTUP_RUNS} interleaved runs "
        f"| {kc_med * 1000:.1f} ms | {base_med * 1000:.1f} ms (python -c imports) "
        f"| {startup_ratio:.2f} x | <= 1.25 x | {verdict(ok1)} |",
        f"| same runs, CPU time (user + sys, os.wait4), median "
        f"| {kc_cpu * 1000:.1f} ms | {base_cpu * 1000:.1f} ms | {kc_cpu / base_cpu:.2f} x "
        "| report only | - |",
        "| decrypt 256 MiB, peak RSS of the process (GNU time %M) "
        f"| {kc_rss_mib:.1f} MiB | - | - | < 64 MiB | {verdict(ok2)} |",
        f"| decrypt 256 MiB, CLI whole process (incl. start-up), median of {STREAM_RUNS} "
        f"| {mib / kc_time:.0f} MiB/s ({kc_time:.2f} s) "
        f"| {mib / bare_time:.0f} MiB/s bare ChaCha20-Poly1305, 64 KiB chunks "
        f"| {tput_ratio:.2f} x | >= 0.5 x | {verdict(ok3)} |",
        f"| decrypt 256 MiB, engine in-process (decrypt_stream file -> /dev/null), median "
        f"of {STREAM_RUNS} | {mib / engine_time:.0f} MiB/s ({engine_time:.2f} s) "
        f"| {mib / bare_time:.0f} MiB/s (same bare loop) "
        f"| {engine_ratio:.2f} x | >= 0.5 x | {verdict(ok4)} |",
        f"| same CLI runs, CPU time (user + sys of both threads), median "
        f"| {kc_dec_cpu:.2f} s | {bare_time:.2f} s (bare loop, wall) "
        f"| {kc_dec_cpu / bare_time:.2f} x | report only | - |",
        f"| reference: engine with read-ahead off (`read_ahead=False`: one thread "
        f"reads and decrypts), median of {STREAM_RUNS} "
        f"| {mib / single_time:.0f} MiB/s ({single_time:.2f} s) "
        f"| {mib / bare_time:.0f} MiB/s (same bare loop) "
        f"| {bare_time / single_time:.2f} x | report only | - |",
        f"| reference: read + decrypt floor, no age code (readinto + decrypt_into per "
        f"chunk, 256 MiB file), median of {STREAM_RUNS} "
        f"| {mib / floor_time:.0f} MiB/s ({floor_time:.3f} s) "
        f"| {mib / bare_time:.0f} MiB/s (same bare loop) "
        f"| {bare_time / floor_time:.2f} x | report only | - |",
    ]
    if age_med is not None and age_time is not None and age_rss_mib is not None:
        lines += [
            f"| vs Debian age {_age_version()}: encrypt 200 B, median "
            f"| {kc_med * 1000:.1f} ms | {age_med * 1000:.1f} ms | {kc_med / age_med:.2f} x "
            "| report only | - |",
            f"| vs Debian age: decrypt 256 MiB throughput | {mib / kc_time:.0f} MiB/s "
            f"| {mib / age_time:.0f} MiB/s (peak RSS {age_rss_mib:.1f} MiB) "
            f"| {age_time / kc_time:.2f} x | report only | - |",
        ]
    commands = [
        "Commands (`R` = a fresh age1 recipient, `key.txt` its identity; files in a temp dir):",
        "",
        "```",
        f'baseline:   .venv/bin/python -c "{BASELINE_IMPORTS}"',
        "keycourier: .venv/bin/keycourier age encrypt -r R -o out in200",
        "age:        age -r R -o out in200",
        "keycourier: .venv/bin/keycourier age decrypt -i key.txt big.age > /dev/null",
        "age:        age -d -i key.txt big.age > /dev/null",
        "engine:     in-process keycourier.age.decrypt_stream(big.age -> /dev/null)",
        "bare:       in-process ChaCha20Poly1305.decrypt of one 64 KiB chunk, 4096 times",
        "floor:      in-process readinto + decrypt_into of each 64 KiB + 16 chunk of a",
        "            256 MiB file of valid chunks (no age header, no STREAM logic)",
        "```",
        "",
        "Bytecode for src/keycourier is precompiled first (`python -m compileall`), as a",
        "pip install does. Throughput ratios are wall-time ratios: whole process for the",
        "CLIs (about 30 ms of the keycourier CLI time is interpreter and import start-up),",
        "the loop only for the engine, the floor and the bare primitive. The bare loop",
        "re-decrypts one cache-hot chunk; the engine, the floor and the CLIs also read",
        "256 MiB from the page cache, a memory copy of the whole file that the floor row",
        "shows costs over a third of the bare loop's speed before any age code runs.",
        "For a regular file of at least 16 MiB the engine (and so the CLI) reads 4 MiB",
        "blocks on a second thread while the calling thread decrypts the previous block;",
        "decryption and every check stay on one thread, so the CPU row is the bare loop's",
        "work plus the copy and start-up. The read-ahead-off row is the one-thread engine.",
        "Run with `scripts/bench`.",
    ]
    load = os.getloadavg()
    summary = (
        f"Overall: {verdict(ok1 and ok2 and ok3 and ok4)} (start-up {verdict(ok1)}, "
        f"memory {verdict(ok2)}, CLI throughput {verdict(ok3)}, engine throughput "
        f"{verdict(ok4)}). "
        f"Load average during the run: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on "
        f"{os.cpu_count()} CPUs (the machine is shared: wall-time ratios move with load)."
    )
    return "\n".join([*lines, "", summary, "", *commands]) + "\n"


def _age_version() -> str:
    if not AGE:
        return "?"
    res = subprocess.run([AGE, "--version"], capture_output=True, check=False, timeout=30)
    return res.stdout.decode().strip() or "?"


if __name__ == "__main__":
    main()
