"""The Vault mirror of the ledger: write-once KV v2 records, appended with check-and-set.

Paths (under the configured KV v2 mount, default ``secret``):

- ``keycourier/handovers/<bundle_id>``: one record per bundle. Its first
  event is written with ``cas=0`` (create only); every later event becomes a
  new version written with ``cas`` = the current version, so history is
  never rewritten silently. ``custom_metadata`` carries bundle ID, platform,
  partner and fingerprint for search.
- ``keycourier/events/<type>/<ledger_id>-<seq>``: events without a bundle
  (``denied_fingerprint``, ``token_issued``, ``connection_*``...), each
  written once with ``cas=0``.

Each version's data is ``{ledger, seq, type, body, prev_hash, hash}`` where
``body`` is the exact canonical event text whose hash the ledger chains, so
an auditor can recompute every hash from Vault alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keycourier.errors import IntegrityError, UnavailableError, UsageError
from keycourier.ledger import chain
from keycourier.ledger.interface import Event

if TYPE_CHECKING:
    import hvac

    from keycourier.config import Settings
    from keycourier.vault import FastKV, KvVersion

HANDOVERS = "keycourier/handovers"
EVENTS = "keycourier/events"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _segment(value: str, what: str) -> str:
    if not value or len(value) > 128 or not set(value) <= _ID_CHARS or value in {".", ".."}:
        raise UsageError(f"{what} {value[:40]!r} cannot be used in a Vault path")
    return value


def path_for(event: Event, *, ledger_id: str, seq: int) -> str:
    if event.bundle_id:
        return f"{HANDOVERS}/{_segment(event.bundle_id, 'bundle ID')}"
    return f"{EVENTS}/{event.type}/{ledger_id}-{seq:010d}"


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
    out = {"bundle_id": event.bundle_id or ""}
    for key in ("platform", "partner"):
        value = event.data.get(key)
        if isinstance(value, str) and value:
            out[key] = value
    if event.fingerprint:
        out["fingerprint"] = event.fingerprint
    return out


def record_event(data: Mapping[str, Any]) -> tuple[str, int, Event] | None:
    """(ledger, seq, event) from a Vault record version, or None when it is not one of ours."""
    body = data.get("body")
    if not isinstance(body, str):
        return None
    try:
        seq, ledger, event = chain.parse_body(body)
    except IntegrityError:
        return None
    if chain.link_hash(str(data.get("prev_hash", "")), body) != data.get("hash"):
        return None
    return ledger, seq, event


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
        if version == 1 and path.startswith(HANDOVERS + "/"):
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

        write_once = not path.startswith(HANDOVERS + "/")
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

    def bundle_events(self, bundle_id: str) -> list[tuple[str, int, Event]]:
        """(ledger, seq, event) of every valid version of a bundle's record, oldest first."""
        path = f"{HANDOVERS}/{_segment(bundle_id, 'bundle ID')}"
        out: list[tuple[str, int, Event]] = []
        for _, version in sorted(self.versions(path).items()):
            if version.data is not None:
                parsed = record_event(version.data)
                if parsed is not None:
                    out.append(parsed)
        return out
