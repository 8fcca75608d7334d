"""Client keys of the token helper: made once, stored only as a hash, revocable.

Storage: one JSON file, mode 0600, at ``$XDG_DATA_HOME/keycourier/helper-clients.json``
(or ``[helper] clients_file``). A file rather than the ledger DB because the
helper reads it on every key check (cached, re-read when its mtime changes)
and must keep working when the ledger is busy; adds and revocations are
themselves plain admin actions on the helper host.

A key looks like ``kck_<8 hex id>_<43 chars>``: the ID finds the record, the
SHA-256 of the whole key (256 bits of randomness, so a fast hash is enough)
is compared in constant time. An unknown ID still costs one comparison, so
timing does not tell which IDs exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from keycourier.config import default_data_dir
from keycourier.errors import ConfigError, UsageError
from keycourier.files import make_private_dirs, write_private
from keycourier.redact import Secret

KEY_PREFIX: Final = "kck_"
KEY_RE: Final = re.compile(r"^kck_([0-9a-f]{8})_([A-Za-z0-9_-]{43})\Z")
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
MAX_STORE_BYTES: Final = 4 * 1024 * 1024
DEFAULT_RATE: Final = 50.0  # requests per second, per client
_DUMMY_HASH: Final = hashlib.sha256(b"keycourier-dummy").hexdigest()


@dataclass(frozen=True, slots=True)
class Client:
    id: str
    name: str
    key_sha256: str = field(repr=False)
    profiles: tuple[str, ...]
    rate: float = DEFAULT_RATE
    created_at: str = ""
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, profile: str) -> bool:
        return "*" in self.profiles or profile in self.profiles

    def public(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("key_sha256")
        doc["profiles"] = list(self.profiles)
        return doc


def default_store_path(settings: Any) -> Path:  # noqa: ANN401 - config.Settings

    configured = settings.helper.get("clients_file")
    if configured is not None:
        if not isinstance(configured, str):
            raise ConfigError("helper.clients_file must be a path")
        return Path(configured).expanduser()
    return default_data_dir(settings.env) / "helper-clients.json"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ClientStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._clients: dict[str, Client] = {}
        # (inode, mtime_ns, size): every write replaces the file (a new inode), so a
        # change inside one coarse mtime tick (add then revoke) is still seen.
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._generation = 0

    # -- reading

    def _load(self) -> dict[str, Client]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the client store {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"the client store {self.path} is readable by others",
                    hints=[f"chmod 600 {self.path}"],
                )
            raw = os.read(fd, MAX_STORE_BYTES + 1)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw.decode("utf-8"))
            clients = {}
            for item in doc["clients"]:
                c = Client(
                    id=str(item["id"]),
                    name=str(item["name"]),
                    key_sha256=str(item["key_sha256"]),
                    profiles=tuple(str(p) for p in item["profiles"]),
                    rate=float(item.get("rate", DEFAULT_RATE)),
                    created_at=str(item.get("created_at", "")),
                    revoked_at=item.get("revoked_at"),
                )
                clients[c.id] = c
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ConfigError(f"the client store {self.path} is malformed") from None
        return clients

    def refresh(self, *, max_age: float = 1.0) -> None:
        """Re-read the file if it changed (checked at most every ``max_age`` seconds)."""
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < max_age:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (-1, -1, -1)
        if stamp != self._stamp:
            self._clients = self._load()
            self._stamp = stamp
            self._generation += 1

    def generation(self) -> int:
        """Changes whenever the store was re-read (checked at most once a second)."""
        self.refresh()
        return self._generation

    def clients(self) -> Sequence[Client]:
        self.refresh(max_age=0)
        return sorted(self._clients.values(), key=lambda c: c.name)

    def authenticate(self, presented: str) -> Client | None:
        """The active client whose key this is, or None. Constant time in the key."""
        self.refresh()
        m = KEY_RE.match(presented)
        client = self._clients.get(m.group(1)) if m else None
        if m and client is None:  # maybe just added: look again (stat at most every 0.1 s)
            self.refresh(max_age=0.1)
            client = self._clients.get(m.group(1))
        expected = client.key_sha256 if client is not None else _DUMMY_HASH
        ok = hmac.compare_digest(expected, _hash(presented))
        if client is None or not ok or not client.active:
            return None
        return client

    # -- writing (admin CLI)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Client]]:
        make_private_dirs(self.path.parent)
        lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            clients = self._load()
            yield clients
            doc = {"version": 1, "clients": [asdict(c) for c in clients.values()]}
            write_private(self.path, json.dumps(doc, indent=2, sort_keys=True).encode())
        finally:
            os.close(lock)

    def add(
        self, name: str, profiles: Sequence[str], *, rate: float = DEFAULT_RATE
    ) -> tuple[Client, Secret]:
        if not NAME_RE.match(name):
            raise UsageError(f"client name {name[:64]!r} is not valid (letters, digits, _.@-)")
        if not profiles:
            raise UsageError("give at least one --profile (or --profile '*' for all)")
        if not 0 < rate <= 1_000_000:
            raise UsageError("--rate must be between 0 and 1000000 requests per second")
        with self._locked() as clients:
            if any(c.name == name and c.active for c in clients.values()):
                raise UsageError(f"an active client named {name} exists; revoke it first")
            while True:
                cid = secrets.token_hex(4)
                if cid not in clients:
                    break
            key = f"{KEY_PREFIX}{cid}_{secrets.token_urlsafe(32)}"
            client = Client(cid, name, _hash(key), tuple(profiles), rate, _now())
            clients[cid] = client
        return client, Secret(key)

    def revoke(self, name: str) -> Client:
        with self._locked() as clients:
            for cid, c in clients.items():
                if (c.name == name or c.id == name) and c.active:
                    clients[cid] = replace(c, revoked_at=_now())
                    return clients[cid]
        raise UsageError(f"no active client named {name[:64]!r}")


def as_mapping(clients: Sequence[Client]) -> list[Mapping[str, Any]]:
    return [c.public() for c in clients]
