"""``keycourier serve`` as a real subprocess on 127.0.0.1 for the helper's integration tests:
start it on a free port, call it over HTTP, add clients, read its metrics, and a self-signed
certificate for its TLS listener."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import cli
from tests.support.openbao import free_port
from tests.support.platform_standin import RunningStandin

MONITE_ID = "2f0c9d3e-1b4a-4e8f-a6c5-7d9e0f1a2b3c"
MONITE_SECRET = "serve-secret-5e6f7a8b9c0d1e2f3a4b"


@dataclass
class Helper:
    proc: subprocess.Popen[str]
    url: str
    env: dict[str, str]
    home: Path

    def stop(self) -> tuple[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err, self.proc.returncode


def kc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli.kc(*args, env=env, timeout=60)


def call(
    url: str,
    path: str,
    *,
    key: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    method = "POST" if data is not None else "GET"
    req = urllib.request.Request(url + path, data=data, method=method)  # noqa: S310 - loopback
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def base_env(
    tmp_path: Path, standin: RunningStandin, *, extra_config: str = "", lifetime_profile: str = ""
) -> dict[str, str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[profiles.ci]
dialect = "monite"
base_url = "{standin.url}/v1"
environment = "sandbox"
version = "2024-05-25"
client_id_env = "MONITE_CLIENT_ID"
client_secret_env = "MONITE_CLIENT_SECRET"
env_name = "MONITE_TOKEN"
{lifetime_profile}

[profiles.other]
dialect = "tesouro"
base_url = "{standin.url}"
environment = "sandbox"
client_id_env = "MONITE_CLIENT_ID"
client_secret_env = "MONITE_CLIENT_SECRET"
{extra_config}
"""
    )
    env = dict(os.environ)
    env.update(
        KEYCOURIER_CONFIG=str(cfg),
        KEYCOURIER_LEDGER=str(tmp_path / "ledger.db"),
        MONITE_CLIENT_ID=MONITE_ID,
        MONITE_CLIENT_SECRET=MONITE_SECRET,
    )
    return env


def start_helper(env: dict[str, str], tmp_path: Path, *args: str) -> Helper:
    if not args:
        args = ("--listen", f"127.0.0.1:{free_port()}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "listening on" not in line:
        proc.kill()
        rest = proc.communicate()[1]
        raise AssertionError(f"helper did not start: {line}{rest}")
    url = line.rsplit(" ", 1)[1].strip()
    return Helper(proc, url, env, tmp_path)


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus text page."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    raise AssertionError(f"no sample {name} in /metrics")


def add_client(env: dict[str, str], name: str, *args: str) -> str:
    r = kc(env, "helper", "client", "add", name, *args)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("kck_")
    return key


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keycourier test helper")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
