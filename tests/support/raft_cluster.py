"""OpenBao raft clusters on loopback for the reliability tests (one node or three).

Each node is a non-dev ``bao server`` with integrated (raft) storage in its own
data directory, an API port and a cluster port chosen with ``free_port()``.
The first node is initialised with one key share; the others join it with
``bao operator raft join`` and are unsealed with the same key. The unseal key
and the root token stay in this process's memory; they reach ``bao`` through
the environment or an HTTP body, never through argv.

Nodes are stopped (SIGTERM) or killed (SIGKILL) by their own PID, and can be
started again on the same ports and data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.openbao import bao_binary, free_port, wait_http

HEALTH_ANY = (200, 429, 472, 473, 501, 503)


def _http_json(
    method: str,
    url: str,
    body: dict[str, object] | None = None,
    token: str = "",
    timeout: float = 30.0,
) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    if token:
        req.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
        raw = resp.read()
    return dict(json.loads(raw)) if raw else {}


def health(addr: str) -> dict[str, object]:
    """``sys/health`` of a node, {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            return dict(json.loads(exc.read()))
        except ValueError:
            return {}
    except (OSError, ValueError):
        return {}


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    standby_reads: bool = False

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"bao-{self.name}.log"

    def config_text(self) -> str:
        data = self.workdir / "raft"
        return (
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "{self.name}"\n'
            "  performance_multiplier = 1\n}\n"
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://127.0.0.1:{self.port}"\n'
            f'cluster_addr = "https://127.0.0.1:{self.cluster_port}"\n'
            "disable_mlock = true\nui = false\n"
            f"disable_standby_reads = {'false' if self.standby_reads else 'true'}\n"
        )

    def launch(self) -> None:
        """Start ``bao server`` (sealed) on this node's ports and data directory."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        (self.workdir / "raft").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.hcl"
        config.write_text(self.config_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [bao_binary(), "server", f"-config={config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        self.starts += 1
        wait_http(f"{self.addr}/v1/sys/health", timeout=60, ok=HEALTH_ANY)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this node's own PID and wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)


@dataclass
class RaftCluster:
    """``size`` raft nodes sharing one unseal key and root token (held in memory)."""

    nodes: list[Node]
    unseal_key: str = field(repr=False, default="")
    root_token: str = field(repr=False, default="")

    # -- set-up -------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, size: int = 3, *, standby_reads: bool = False) -> RaftCluster:
        """Start, initialise, join and unseal ``size`` nodes.

        ``standby_reads=False`` writes ``disable_standby_reads = true``: standbys
        forward every request to the active node (strict read-after-write).
        OpenBao's default (True) lets standbys answer reads from their own,
        possibly lagging, copy.
        """
        nodes = [
            Node(
                f"node{i + 1}",
                free_port(),
                free_port(),
                workdir / f"node{i + 1}",
                standby_reads=standby_reads,
            )
            for i in range(size)
        ]
        cluster = cls(nodes)
        try:
            first = nodes[0]
            first.launch()
            init = _http_json(
                "PUT", f"{first.addr}/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}
            )
            keys = init.get("keys_b64") or init.get("keys")
            if not isinstance(keys, list) or not keys:
                raise RuntimeError("sys/init returned no unseal key")
            cluster.unseal_key = str(keys[0])
            cluster.root_token = str(init["root_token"])
            cluster.unseal(first)
            cluster.wait_leader(timeout=60)
            _http_json(
                "POST",
                f"{first.addr}/v1/sys/mounts/secret",
                {"type": "kv", "options": {"version": "2"}},
                cluster.root_token,
            )
            if size > 1:
                # promote joined servers after 2 s of health instead of 10 s
                cluster.bao(
                    first,
                    "operator",
                    "raft",
                    "autopilot",
                    "set-config",
                    "-server-stabilization-time=2s",
                    "-cleanup-dead-servers=false",
                )
            for node in nodes[1:]:
                node.launch()
                cluster.bao(node, "operator", "raft", "join", first.addr)
                cluster.unseal(node)
                cluster.wait_unsealed(node)
            if size > 1:
                cluster.wait_peers(size)
        except BaseException:
            cluster.stop_all()
            raise
        return cluster

    def unseal(self, node: Node) -> None:
        """Unseal one node (the key goes in the request body)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                _http_json("PUT", f"{node.addr}/v1/sys/unseal", {"key": self.unseal_key})
                return
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_unsealed(self, node: Node, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = health(node.addr)
            if h.get("initialized") and h.get("sealed") is False:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{node.name} did not unseal")

    def bao(self, node: Node, *args: str) -> str:
        """Run the bao CLI against one node; the token travels in the environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["BAO_ADDR"] = node.addr
        env["BAO_TOKEN"] = self.root_token
        out = subprocess.run(
            [bao_binary(), *args],
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"bao {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                f"{out.stderr.decode(errors='replace')[:500]}"
            )
        return out.stdout.decode()

    # -- state ----------------------------------------------------------------------------

    def leader(self) -> Node | None:
        """The running node that reports itself active and unsealed, if any."""
        for node in self.nodes:
            if not node.running:
                continue
            h = health(node.addr)
            if h.get("initialized") and h.get("sealed") is False and h.get("standby") is False:
                return node
        return None

    def wait_leader(self, timeout: float = 60.0, exclude: Node | None = None) -> Node:
        """Wait until some node (not ``exclude``) is active and answers a token lookup."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.leader()
            if node is not None and node is not exclude:
                try:
                    _http_json(
                        "GET", f"{node.addr}/v1/auth/token/lookup-self", None, self.root_token, 5
                    )
                except (OSError, urllib.error.HTTPError):
                    pass
                else:
                    return node
            time.sleep(0.1)
        raise RuntimeError("no active node was elected in time")

    def wait_serving(self, node: Node, timeout: float = 60.0) -> None:
        """Wait until ``node`` answers an authenticated request (a standby: forwards it)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                _http_json(
                    "GET", f"{node.addr}/v1/auth/token/lookup-self", None, self.root_token, 5
                )
                return
            except (OSError, urllib.error.HTTPError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"{node.name} does not serve requests: {last!r}")

    def wait_peers(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                try:
                    doc = _http_json(
                        "GET",
                        f"{leader.addr}/v1/sys/storage/raft/configuration",
                        None,
                        self.root_token,
                        5,
                    )
                    data = doc.get("data")
                    config = data.get("config") if isinstance(data, dict) else None
                    servers = config.get("servers") if isinstance(config, dict) else None
                    # Autopilot joins servers as non-voters and promotes them once
                    # stable; an election needs a quorum of voters.
                    seen = (
                        sum(1 for s in servers if isinstance(s, dict) and s.get("voter"))
                        if isinstance(servers, list)
                        else 0
                    )
                    if seen >= count:
                        return
                except (OSError, urllib.error.HTTPError):
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"only {seen} of {count} raft peers are voters")

    def vault_env(self, node: Node) -> dict[str, str]:
        """VAULT_ADDR/VAULT_TOKEN for keycourier pointed at ``node``."""
        return {"VAULT_ADDR": node.addr, "VAULT_TOKEN": self.root_token}

    # -- faults ---------------------------------------------------------------------------

    def restart(self, node: Node, timeout: float = 60.0) -> None:
        """Start a stopped or killed node again on the same ports and data, then unseal it."""
        node.launch()
        self.unseal(node)
        self.wait_unsealed(node, timeout)

    def kill_and_restart(self, node: Node, down_for: float = 0.0) -> None:
        """SIGKILL the node by PID, keep it down ``down_for`` seconds, restart, unseal."""
        node.kill()
        if down_for > 0:
            time.sleep(down_for)
        self.restart(node)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()


# -- census: is every ledger event in Vault exactly once, byte for byte? ----------------


@dataclass(frozen=True)
class Census:
    """What Vault holds for one ledger, read over plain HTTP (not through keycourier)."""

    events: int  # events in the local ledger
    paths: int  # Vault records read
    versions: int  # versions read across those records
    missing: tuple[int, ...]  # ledger seqs with no version in Vault
    duplicated: tuple[int, ...]  # ledger seqs held by more than one version
    different: tuple[int, ...]  # ledger seqs whose Vault copy differs from the ledger
    strangers: tuple[str, ...]  # versions that are no event of this ledger
    pending: int  # events the ledger still marks pending

    @property
    def exact(self) -> bool:
        return not (self.missing or self.duplicated or self.different or self.strangers)


def kv_versions(addr: str, token: str, path: str, mount: str = "secret") -> dict[int, object]:
    """Every live version's data of a KV v2 record ({} when absent); deleted ones map to None."""
    try:
        meta = _http_json("GET", f"{addr}/v1/{mount}/metadata/{path}", None, token)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise
    data = meta.get("data")
    versions = data.get("versions") if isinstance(data, dict) else None
    out: dict[int, object] = {}
    for number in sorted(int(n) for n in (versions or {})):
        try:
            doc = _http_json("GET", f"{addr}/v1/{mount}/data/{path}?version={number}", None, token)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # deleted or destroyed version
                out[number] = None
                continue
            raise
        inner = doc.get("data")
        out[number] = inner.get("data") if isinstance(inner, dict) else None
    return out


def census(ledger_path: Path, addr: str, token: str) -> Census:
    """Compare every event of the SQLite ledger at ``ledger_path`` with Vault at ``addr``."""
    from collections import Counter

    from keycourier.ledger.mirror import record_for
    from keycourier.ledger.sqlite import SqliteLedger

    ledger = SqliteLedger(ledger_path)
    try:
        ledger_id = ledger.ledger_id
        expected: dict[int, dict[str, object]] = {}
        paths: set[str] = set()
        for stored in ledger.iter_all():
            row = ledger.event_row(stored.seq)
            assert row is not None
            expected[stored.seq] = dict(record_for(ledger_id, stored.seq, *row))
            path = ledger.delivery_of(stored.seq)[1]  # each event's own record
            assert path is not None
            paths.add(path)
        pending = ledger.pending_count()
    finally:
        ledger.close()
    seen: Counter[int] = Counter()
    different: set[int] = set()
    strangers: list[str] = []
    n_versions = 0
    for path in sorted(paths):
        for number, data in kv_versions(addr, token, path).items():
            n_versions += 1
            if not isinstance(data, dict) or data.get("ledger") != ledger_id:
                strangers.append(f"{path}@{number}")
                continue
            seq = data.get("seq")
            if not isinstance(seq, int) or seq not in expected:
                strangers.append(f"{path}@{number}")
                continue
            seen[seq] += 1
            if data != expected[seq]:
                different.add(seq)
    return Census(
        events=len(expected),
        paths=len(paths),
        versions=n_versions,
        missing=tuple(sorted(set(expected) - set(seen))),
        duplicated=tuple(sorted(s for s, n in seen.items() if n > 1)),
        different=tuple(sorted(different)),
        strangers=tuple(strangers),
        pending=pending,
    )
