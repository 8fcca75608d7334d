"""The Vault mirror of the ledger: write-once KV v2 records, appended with check-and-set.

Paths (under the configured KV v2 mount, default ``secret``). Every record
is written once, with ``cas=0``, and the shipped policies grant "create" but
never "update", "delete" or "destroy" on them, so no role can add versions
to a record, push one out of its history or replace it:

- ``keycourier/handovers/<bundle_id>/events/<ledger_id>-<seq>-<nonce>``:
  one record per event of a bundle. The random 16-hex ``nonce`` (chosen when
  the event is appended, kept in the ledger) means nobody can create the
  name of another ledger's next event before it does.
- ``keycourier/denied/<fingerprint>/events/<ledger_id>-<seq>-<nonce>``: the
  same for the deny events of a credential fingerprint.
- ``keycourier/events/<type>/<ledger_id>-<seq>``: other events without a
  bundle (``token_issued``, ``connection_*``...).
- ``keycourier/ledgers/<ledger_id>``: the ledger's Ed25519 checkpoint public
  key, pinned once (``{ledger, public_key}``).
- ``keycourier/checkpoints/<ledger_id>/<seq>``: each signed checkpoint of
  the ledger, witnessed once (``{ledger, seq, head_hash, signed_at,
  signature}``).
- ``keycourier/machines/<name>``: the ledger ID and checkpoint key in use
  under a machine's witness name, pinned once.

Older versions wrote one appendable record per bundle
(``keycourier/handovers/<bundle_id>``) and per fingerprint
(``keycourier/denied/<fingerprint>``); they are still read, but what they
hold is acted on only when signed by a trusted key (see ``signed.py``).

Each version's data is ``{ledger, seq, type, body, prev_hash, hash}`` where
``body`` is the exact canonical event text whose hash the ledger chains, so
an auditor can recompute every hash from Vault alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keycourier._record import record
from keycourier.errors import AuthError, IntegrityError, UnavailableError, UsageError
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, EventType
from keycourier.vault.client import connect, token_of
from keycourier.vault.errors import CasMismatchError

if TYPE_CHECKING:
    import hvac

    from keycourier.config import Settings
    from keycourier.vault.fastkv import FastKV
    from keycourier.vault.kv import KvVersion

# Every recorded event imports this module (for path_for and record_for), with a Vault or
# without: vault.kv (dataclasses) and vault.fastkv (http.client, ssl) are imported by the
# methods that talk to Vault, so that a local-only recording does not pay for them.

HANDOVERS = "keycourier/handovers"
DENIED = "keycourier/denied"
EVENTS = "keycourier/events"
LEDGERS = "keycourier/ledgers"
CHECKPOINTS = "keycourier/checkpoints"
MACHINES = "keycourier/machines"
# every prefix keycourier writes provenance under; nothing else may be stored there
PROVENANCE_PREFIX = "keycourier/"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _segment(value: str, what: str) -> str:
    if not value or len(value) > 128 or not set(value) <= _ID_CHARS or value in {".", ".."}:
        raise UsageError(f"{what} {value[:40]!r} cannot be used in a Vault path")
    return value


def _fits(value: str) -> bool:
    return 0 < len(value) <= 128 and set(value) <= _ID_CHARS and value not in {".", ".."}


def appendable(path: str) -> bool:
    """A record of the older layout, which grew by cas-appended versions.

    Only ``keycourier/handovers/<bundle_id>`` and ``keycourier/denied/<fingerprint>``
    themselves; everything written now is a write-once record.
    """
    parts = path.split("/")
    return len(parts) == 3 and "/".join(parts[:2]) in {HANDOVERS, DENIED}


def legacy_bundle_path(bundle_id: str) -> str:
    return f"{HANDOVERS}/{_segment(bundle_id, 'bundle ID')}"


def denied_path(fingerprint: str) -> str:
    """The older, appendable deny record of a fingerprint (read for compatibility)."""
    return f"{DENIED}/{_segment(fingerprint, 'fingerprint')}"


def bundle_events_dir(bundle_id: str) -> str:
    return f"{HANDOVERS}/{_segment(bundle_id, 'bundle ID')}/events"


def denied_events_dir(fingerprint: str) -> str:
    return f"{DENIED}/{_segment(fingerprint, 'fingerprint')}/events"


def pin_path(ledger_id: str) -> str:
    return f"{LEDGERS}/{_segment(ledger_id, 'ledger ID')}"


def checkpoint_path(ledger_id: str, seq: int) -> str:
    return f"{CHECKPOINTS}/{_segment(ledger_id, 'ledger ID')}/{seq:010d}"


def machine_path(name: str) -> str:
    return f"{MACHINES}/{_segment(name, 'witness name')}"


def _nonce() -> str:
    import secrets

    return secrets.token_hex(8)


def path_for(event: Event, *, ledger_id: str, seq: int) -> str:
    """Where an event is written: its own write-once record (a fresh name each call)."""
    name = f"{ledger_id}-{seq:010d}"
    if event.bundle_id:
        return f"{bundle_events_dir(event.bundle_id)}/{name}-{_nonce()}"
    if (
        event.type == EventType.DENIED_FINGERPRINT
        and event.fingerprint
        and _fits(event.fingerprint)
    ):
        return f"{denied_events_dir(event.fingerprint)}/{name}-{_nonce()}"
    return f"{EVENTS}/{event.type}/{name}"


def current_path(path: str, event: Event, *, ledger_id: str, seq: int) -> str:
    """The path to deliver a pending event to: a path of the older appendable layout
    (recorded before an upgrade) becomes the event's own write-once record."""
    return path_for(event, ledger_id=ledger_id, seq=seq) if appendable(path) else path


def event_path_seq(path: str, ledger_id: str) -> int | None:
    """The seq an event record's name claims for ``ledger_id``, else None.

    ``keycourier/events/<type>/<ledger_id>-<seq>`` and
    ``keycourier/{handovers,denied}/<key>/events/<ledger_id>-<seq>-<nonce>``.
    """
    parts = path.split("/")
    name = parts[-1]
    prefix = ledger_id + "-"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if path.startswith(EVENTS + "/") and len(parts) == 4:
        digits = rest
    elif (
        len(parts) == 5
        and "/".join(parts[:2]) in {HANDOVERS, DENIED}
        and parts[3] == "events"
        and rest.count("-") == 1
    ):
        digits = rest.split("-", 1)[0]
    else:
        return None
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


@record
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
                self._client = connect(self.settings)
            return self._client

    def fast(self) -> FastKV:
        kv: FastKV | None = getattr(self._local, "kv", None)
        if kv is None:
            # lazy: http.client and ssl, only when events are delivered
            from keycourier.vault.fastkv import FastKV

            kv = FastKV(self.settings.vault, token_of(self.client))
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
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_write

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
                version = kv_write(self.client, self.mount, path, record, cas=current)
            except CasMismatchError:
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
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_read_metadata, kv_read_version

        client = self.client
        with self._hvac_lock:
            meta = kv_read_metadata(client, self.mount, path)
            if meta is None:
                return {}
            out: dict[int, KvVersion] = {}
            for number in sorted(meta.versions):
                found = kv_read_version(client, self.mount, path, number)
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

    def folder_events(self, folder: str) -> list[VaultEvent]:
        """The events of every write-once record directly under ``folder``."""
        out: list[VaultEvent] = []
        for name in self.list_names(folder):
            if name.endswith("/") or not _fits(name):
                continue
            out.extend(self.record_events(f"{folder}/{name}"))
        return out

    def bundle_events(self, bundle_id: str) -> list[VaultEvent]:
        """The events recorded in Vault for a bundle (every ledger's, both layouts)."""
        found = self.record_events(legacy_bundle_path(bundle_id))
        found += self.folder_events(bundle_events_dir(bundle_id))
        return sorted(found, key=lambda v: v.event.at)

    def denied_events(self, fingerprint: str) -> list[VaultEvent]:
        """The deny events recorded in Vault for a fingerprint (every ledger's, both layouts)."""
        found = self.record_events(denied_path(fingerprint))
        found += self.folder_events(denied_events_dir(fingerprint))
        return sorted(found, key=lambda v: v.event.at)

    def list_names(self, path: str) -> list[str]:
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_list

        client = self.client
        with self._hvac_lock:
            return kv_list(client, self.mount, path)

    def ledger_paths(self, ledger_id: str) -> tuple[list[str], list[str]]:
        """(older shared records any ledger may have appended to, this ledger's own
        write-once event records).

        Lists the mount's keycourier/ tree: the cost of an audit, not of a recording.
        Names outside the path alphabet cannot be keycourier's and are skipped.
        """
        shared: list[str] = []
        own: list[str] = []
        for base in (HANDOVERS, DENIED):
            for name in self.list_names(base):
                key = name.rstrip("/")
                if not _fits(key):
                    continue
                if not name.endswith("/"):
                    shared.append(f"{base}/{key}")
                    continue
                folder = f"{base}/{key}/events"
                own.extend(
                    f"{folder}/{event}"
                    for event in self.list_names(folder)
                    if event.startswith(ledger_id + "-") and _fits(event)
                )
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
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_read_version

        client = self.client
        with self._hvac_lock:
            found = kv_read_version(client, self.mount, pin_path(ledger_id))
        if found is None:
            return None
        if found.data is None:
            return ""
        key = found.data.get("public_key")
        return key if isinstance(key, str) else ""

    # -- witnessed checkpoints and the machine's ledger --------------------------------

    def _write_once(self, path: str, data: Mapping[str, Any], what: str) -> bool:
        """Create ``path`` with cas=0; True when written now, False when the same data
        was already there. IntegrityError when different data holds the name."""
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_read_version

        try:
            self.fast().write(self.mount, path, data, cas=0)
            return True
        except (CasMismatchError, AuthError):
            client = self.client
            with self._hvac_lock:
                found = kv_read_version(client, self.mount, path)
            if found is None:
                raise  # a real refusal, not an existing record
        if found.data is not None and dict(found.data) == dict(data):
            return False
        raise IntegrityError(
            f"integrity alarm: Vault already holds a different {what} at {self.mount}/{path}",
            hints=["run 'keycourier audit verify --vault' and investigate first"],
        )

    def witness_checkpoint(self, record: Mapping[str, Any]) -> bool:
        """Write one signed checkpoint write-once under keycourier/checkpoints/."""
        path = checkpoint_path(str(record["ledger"]), int(record["seq"]))
        return self._write_once(path, record, f"checkpoint #{record['seq']}")

    def checkpoints(self, ledger_id: str) -> list[tuple[str, KvVersion | None]]:
        """(path, latest version) of every checkpoint witnessed for a ledger."""
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_read_version

        folder = f"{CHECKPOINTS}/{_segment(ledger_id, 'ledger ID')}"
        out: list[tuple[str, KvVersion | None]] = []
        for name in self.list_names(folder):
            if name.endswith("/") or not _fits(name):
                continue
            client = self.client
            with self._hvac_lock:
                out.append(
                    (
                        f"{folder}/{name}",
                        kv_read_version(client, self.mount, f"{folder}/{name}"),
                    )
                )
        return out

    def pin_machine(self, name: str, ledger_id: str, public_key: str) -> None:
        """Record once which ledger (ID and key) this machine's witness name uses.

        A different ledger already recorded there is left for ``audit verify --vault``
        to report (exit 4): recording goes on, the replaced ledger stays visible. A token
        whose policy predates these records (403) records events all the same.
        """
        with contextlib.suppress(IntegrityError, AuthError):
            self._write_once(
                machine_path(name),
                {"machine": name, "ledger": ledger_id, "public_key": public_key},
                "ledger for this machine",
            )

    def machine_record(self, name: str) -> Mapping[str, Any] | None:
        # lazy: kv's dataclasses stay off the audit verify path
        from keycourier.vault.kv import kv_read_version

        client = self.client
        with self._hvac_lock:
            found = kv_read_version(client, self.mount, machine_path(name))
        if found is None:
            return None
        return found.data or {}
