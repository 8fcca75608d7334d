"""The Vault mirror of the ledger: write-once KV v2 records, appended with check-and-set.

Paths (under the configured KV v2 mount, default ``secret``):

- ``keycourier/handovers/<bundle_id>``: one record per bundle. Its first
  event is written with ``cas=0`` (create only); every later event becomes a
  new version written with ``cas`` = the current version, so history is
  never rewritten silently. ``custom_metadata`` carries bundle ID, platform,
  partner and fingerprint for search.
- ``keycourier/denied/<fingerprint>``: one record per denied credential
  fingerprint, appended like a bundle record, so that any ledger can honour
  a deny with one read.
- ``keycourier/events/<type>/<ledger_id>-<seq>``: other events without a
  bundle (``token_issued``, ``connection_*``...), each written once with
  ``cas=0``.
- ``keycourier/ledgers/<ledger_id>``: the ledger's Ed25519 checkpoint public
  key, pinned once with ``cas=0`` (``{ledger, public_key}``).

Each version's data is ``{ledger, seq, type, body, prev_hash, hash}`` where
``body`` is the exact canonical event text whose hash the ledger chains, so
an auditor can recompute every hash from Vault alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keycourier.errors import AuthError, IntegrityError, UnavailableError, UsageError
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, EventType

if TYPE_CHECKING:
    import hvac

    from keycourier.config import Settings
    from keycourier.vault import FastKV, KvVersion

HANDOVERS = "keycourier/handovers"
DENIED = "keycourier/denied"
EVENTS = "keycourier/events"
LEDGERS = "keycourier/ledgers"
_APPENDABLE = (HANDOVERS + "/", DENIED + "/")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _segment(value: str, what: str) -> str:
    if not value or len(value) > 128 or not set(value) <= _ID_CHARS or value in {".", ".."}:
        raise UsageError(f"{what} {value[:40]!r} cannot be used in a Vault path")
    return value


def _fits(value: str) -> bool:
    return 0 < len(value) <= 128 and set(value) <= _ID_CHARS and value not in {".", ".."}


def appendable(path: str) -> bool:
    """Shared records that grow by cas-appended versions (the rest are write-once)."""
    return path.startswith(_APPENDABLE)


def denied_path(fingerprint: str) -> str:
    return f"{DENIED}/{_segment(fingerprint, 'fingerprint')}"


def pin_path(ledger_id: str) -> str:
    return f"{LEDGERS}/{_segment(ledger_id, 'ledger ID')}"


def path_for(event: Event, *, ledger_id: str, seq: int) -> str:
    if event.bundle_id:
        return f"{HANDOVERS}/{_segment(event.bundle_id, 'bundle ID')}"
    if (
        event.type == EventType.DENIED_FINGERPRINT
        and event.fingerprint
        and _fits(event.fingerprint)
    ):
        return denied_path(event.fingerprint)
    return f"{EVENTS}/{event.type}/{ledger_id}-{seq:010d}"


def event_path_seq(path: str, ledger_id: str) -> int | None:
    """The seq a ``keycourier/events/<type>/<ledger_id>-<seq>`` name claims, else None."""
    name = path.rsplit("/", 1)[-1]
    prefix = ledger_id + "-"
    if not path.startswith(EVENTS + "/") or not name.startswith(prefix):
        return None
    digits = name[len(prefix) :]
    return int(digits) if digits.isdigit() and len(digits) <= 18 else None


def record_for(
    ledger_id: str, seq: int, body: str, prev_hash: str, digest: str, kind: str | None = None
) -> dict[str, Any]:
    """The Vault record of one ledger event (``kind`` saves parsing the body when known)."""
    if kind is None:
        kind = str(chain.parse_body(body)[2].type)
    return {
        "ledger": ledger_id,
        "seq": seq,
        "type": kind,
        "body": body,
        "prev_hash": prev_hash,
        "hash": digest,
    }


SIGNATURE = "transit_signature"
TRANSIT_MOUNT = "transit"


def same_record(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """Equal apart from the optional Transit signature (checked on its own)."""
    return {k: v for k, v in stored.items() if k != SIGNATURE} == {
        k: v for k, v in expected.items() if k != SIGNATURE
    }


def custom_metadata_for(event: Event) -> dict[str, str]:
    out = {"bundle_id": event.bundle_id} if event.bundle_id else {}
    for key in ("platform", "partner"):
        value = event.data.get(key)
        if isinstance(value, str) and value:
            out[key] = value
    if event.fingerprint:
        out["fingerprint"] = event.fingerprint
    return out


@dataclass(frozen=True, slots=True)
class VaultEvent:
    """A well-formed event read from a Vault record version (not yet trusted)."""

    ledger: str
    seq: int
    event: Event
    hash: str


def record_event(data: Mapping[str, Any]) -> VaultEvent | None:
    """The event a Vault record version holds, or None when it is not a well-formed one."""
    body = data.get("body")
    if not isinstance(body, str):
        return None
    try:
        seq, ledger, event = chain.parse_body(body)
    except IntegrityError:
        return None
    digest = chain.link_hash(str(data.get("prev_hash", "")), body)
    if digest != data.get("hash"):
        return None
    return VaultEvent(ledger, seq, event, digest)


class VaultMirror:
    """Delivers ledger events to Vault. hvac for log-in and reconciliation, FastKV for writes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mount = settings.vault.mount
        self._client: hvac.Client | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._hvac_lock = threading.RLock()  # requests.Session is not promised thread-safe
        self._fasts: list[FastKV] = []
        self.transit_key = settings.vault.transit_key

    # -- optional Transit signatures ----------------------------------------------------

    def sign(self, digest: str) -> str:
        """Transit signature (``vault:v1:...``) over a record's chain hash."""
        import base64

        resp = self.fast().request(
            "POST",
            f"/v1/{TRANSIT_MOUNT}/sign/{self.transit_key}",
            {"input": base64.b64encode(digest.encode()).decode()},
            f"Transit signing with key {self.transit_key}",
        )
        return str(resp["data"]["signature"])

    def verify_signature(self, digest: str, signature: str) -> bool:
        import base64

        resp = self.fast().request(
            "POST",
            f"/v1/{TRANSIT_MOUNT}/verify/{self.transit_key}",
            {"input": base64.b64encode(digest.encode()).decode(), "signature": signature},
            f"Transit verification with key {self.transit_key}",
        )
        return bool(resp["data"]["valid"])

    @property
    def client(self) -> hvac.Client:
        with self._lock:
            if self._client is None:
                from keycourier import vault

                self._client = vault.connect(self.settings)
            return self._client

    def fast(self) -> FastKV:
        kv: FastKV | None = getattr(self._local, "kv", None)
        if kv is None:
            from keycourier import vault

            kv = vault.FastKV(self.settings.vault, vault.token_of(self.client))
            self._local.kv = kv
            with self._lock:
                self._fasts.append(kv)
        return kv

    def close(self) -> None:
        with self._lock:
            for kv in self._fasts:
                kv.close()
            self._fasts.clear()
        self._local = threading.local()

    # -- delivery --------------------------------------------------------------------

    def deliver(
        self, path: str, record: Mapping[str, Any], *, known_version: int | None, event: Event
    ) -> tuple[int, bool]:
        """Write one record; return (version, already_there). IntegrityError on a conflict."""
        from keycourier.vault import CasMismatchError

        fast = self.fast()
        if self.transit_key:
            record = {**record, SIGNATURE: self.sign(str(record["hash"]))}
        try:
            version = fast.write(self.mount, path, record, cas=known_version or 0)
        except CasMismatchError:
            return self._reconcile(path, record, event)
        if version == 1 and appendable(path):
            self._custom(path, event)
        return version, False

    def _custom(self, path: str, event: Event) -> None:
        self.fast().request(
            "POST",
            f"/v1/{self.mount}/metadata/{path}",
            {"custom_metadata": custom_metadata_for(event)},
            f"a metadata write to {self.mount}/{path}",
        )

    def _reconcile(self, path: str, record: Mapping[str, Any], event: Event) -> tuple[int, bool]:
        with self._hvac_lock:
            return self._reconcile_locked(path, record, event)

    def _reconcile_locked(
        self, path: str, record: Mapping[str, Any], event: Event
    ) -> tuple[int, bool]:
        from keycourier import vault

        write_once = not appendable(path)
        for _ in range(8):
            versions = self.versions(path)
            current = max(versions) if versions else 0
            for number in sorted(versions, reverse=True):
                data = versions[number].data
                if data is None:
                    continue
                same_event = (
                    data.get("ledger") == record["ledger"] and data.get("seq") == record["seq"]
                )
                if same_record(data, record):
                    if number == 1 and not write_once:
                        # The first write may have landed with its reply (and so its
                        # metadata write) lost: setting custom_metadata is idempotent.
                        self._custom(path, event)
                    return number, True
                if same_event or write_once:
                    where = f"bundle {event.bundle_id}" if event.bundle_id else f"record {path}"
                    raise IntegrityError(
                        f"integrity alarm: Vault already holds a different version of ledger event "
                        f"#{record['seq']} for {where} ({self.mount}/{path} version {number})",
                        hints=["run 'keycourier audit verify --vault' and investigate first"],
                    )
            try:
                version = vault.kv_write(self.client, self.mount, path, record, cas=current)
            except vault.CasMismatchError:
                continue
            if version == 1 and not write_once:
                self._custom(path, event)
            return version, False
        raise UnavailableError(
            f"Vault record {self.mount}/{path} kept changing; retry 'keycourier sync'"
        )

    # -- reading ---------------------------------------------------------------------

    def versions(self, path: str) -> dict[int, KvVersion]:
        """Every version of a record (deleted ones with data None). Empty when absent."""
        from keycourier import vault

        client = self.client
        with self._hvac_lock:
            meta = vault.kv_read_metadata(client, self.mount, path)
            if meta is None:
                return {}
            out: dict[int, KvVersion] = {}
            for number in sorted(meta.versions):
                found = vault.kv_read_version(client, self.mount, path, number)
                if found is not None:
                    out[number] = found
            return out

    def record_events(self, path: str) -> list[VaultEvent]:
        """Every well-formed event in the versions of one record, oldest first."""
        out: list[VaultEvent] = []
        for _, version in sorted(self.versions(path).items()):
            if version.data is not None:
                parsed = record_event(version.data)
                if parsed is not None:
                    out.append(parsed)
        return out

    def bundle_events(self, bundle_id: str) -> list[VaultEvent]:
        """The events of a bundle's record (every ledger's), oldest first."""
        return self.record_events(f"{HANDOVERS}/{_segment(bundle_id, 'bundle ID')}")

    def denied_events(self, fingerprint: str) -> list[VaultEvent]:
        """The events of a fingerprint's deny record (every ledger's), oldest first."""
        return self.record_events(denied_path(fingerprint))

    def list_names(self, path: str) -> list[str]:
        from keycourier import vault

        client = self.client
        with self._hvac_lock:
            return vault.kv_list(client, self.mount, path)

    def ledger_paths(self, ledger_id: str) -> tuple[list[str], list[str]]:
        """(shared records any ledger may append to, this ledger's own write-once event records).

        Lists the mount's keycourier/ tree: the cost of an audit, not of a recording.
        Names outside the path alphabet cannot be keycourier's and are skipped.
        """
        shared: list[str] = []
        for base in (HANDOVERS, DENIED):
            shared.extend(
                f"{base}/{name}"
                for name in self.list_names(base)
                if not name.endswith("/") and _fits(name)
            )
        own: list[str] = []
        for kind in self.list_names(EVENTS):
            folder = kind.rstrip("/")
            if not kind.endswith("/") or not _fits(folder):
                continue
            own.extend(
                f"{EVENTS}/{folder}/{name}"
                for name in self.list_names(f"{EVENTS}/{folder}")
                if name.startswith(ledger_id + "-") and _fits(name)
            )
        return shared, own

    # -- the pinned checkpoint key ---------------------------------------------------

    def pin(self, ledger_id: str, public_key: str) -> bool:
        """Pin the ledger's public key (cas=0); True when written now. IntegrityError on a clash.

        Read first: the shipped policies grant "create" only, so a second write is refused
        with 403 rather than a check-and-set error.
        """
        from keycourier.vault import CasMismatchError

        path = pin_path(ledger_id)
        pinned = self.pinned_key(ledger_id)
        if pinned is None:
            try:
                self.fast().write(
                    self.mount, path, {"ledger": ledger_id, "public_key": public_key}, cas=0
                )
                return True
            except (CasMismatchError, AuthError):
                pinned = self.pinned_key(ledger_id)  # a concurrent pin, or a lost reply
                if pinned is None:
                    raise
        if pinned != public_key:
            raise IntegrityError(
                f"integrity alarm: Vault pins a different checkpoint key for ledger "
                f"{ledger_id} ({self.mount}/{path}) than the local ledger holds",
                hints=["run 'keycourier audit verify --vault' and investigate first"],
            )
        return False

    def pinned_key(self, ledger_id: str) -> str | None:
        """The public key pinned for a ledger ("" when the record is unreadable), None if none."""
        from keycourier import vault

        client = self.client
        with self._hvac_lock:
            found = vault.kv_read_version(client, self.mount, pin_path(ledger_id))
        if found is None:
            return None
        if found.data is None:
            return ""
        key = found.data.get("public_key")
        return key if isinstance(key, str) else ""
