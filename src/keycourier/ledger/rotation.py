"""Who may write a Vault path: the receiver's rotation and occupancy rules (docs/rotation.md).

Pure functions over events and Vault metadata: ``ingest`` calls them under the ledger's
decision lock, before anything is opened, and writes with check-and-set against the version
they checked, so what they decided is what is written over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keycourier._record import record
from keycourier.errors import PolicyError
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.signed import signer_of

OWN_LEDGER = "this ledger"
OVERWRITE_HINT = (
    "ingest it to another path; or, once both senders have confirmed through a second "
    "channel that this bundle replaces what is there, pass --allow-overwrite"
)


@record
class BundleFacts:
    """What the incoming bundle's manifest says about where it belongs."""

    bundle_id: str
    sender: str  # the sender's signing fingerprint
    platform: str
    partner: str | None


@record
class Supersession:
    """What a rotation replaces: the earlier bundle, where it was stored and its version."""

    bundle_id: str
    vault_path: str  # "<mount>/<path>"
    replaced_kv_version: int


@record
class Holder:
    """The credentials currently stored at a path, as far as this receiver can tell."""

    kv_version: int
    bundle_id: str | None
    sealed_by: str | None
    platform: str | None
    partner: str | None
    known_from: str  # OWN_LEDGER or "the path's Vault metadata"

    def to_json(self) -> dict[str, object]:
        return {
            "kv_version": self.kv_version,
            "bundle_id": self.bundle_id,
            "sealed_by": self.sealed_by,
            "platform": self.platform,
            "partner": self.partner,
            "known_from": self.known_from,
        }


def own_ingests(events: Sequence[Event], own_key: str) -> list[Event]:
    """The `ingested` events among ``events`` that this receiver (``own_key``) signed."""

    return [e for e in events if e.type == EventType.INGESTED and signer_of(e) == own_key]


def check_supersession(
    events: Sequence[Event],
    *,
    old_bundle_id: str,
    superseded_by: str | None,
    own_key: str,
    new: BundleFacts,
    vault_path: str,
) -> Supersession:
    """The rules for ingesting ``new``, which says it supersedes ``old_bundle_id``
    (``events``: what is known of that bundle): it was ingested here, from the same sender
    (signing fingerprint), for the same platform and partner, to ``vault_path``, and nothing
    replaced it yet. PolicyError (exit 7) naming the rule otherwise: a superseding bundle is
    exactly what someone holding one leaked bundle would try to slip in.

    Only `ingested` events signed by this receiver (``own_key``) count: one found in a
    shared Vault and signed by a sender would let that sender claim any path."""
    old = old_bundle_id
    ingests = own_ingests(events, own_key)
    if not ingests:
        raise PolicyError(
            f"bundle {new.bundle_id} says it supersedes {old}, which was never ingested here",
            hints=["ingest the rotation where the earlier bundle was ingested"],
        )
    last = ingests[-1]
    was_sender = str(last.data.get("sealed_by"))
    if was_sender != new.sender:
        raise PolicyError(
            f"bundle {new.bundle_id} (sealed by {new.sender}) says it supersedes {old}, which "
            f"{was_sender} sealed: a rotation must come from the same sender",
            hints=["do not ingest it; ask the partner through a second channel"],
        )
    if str(last.data.get("platform")) != new.platform or last.data.get("partner") != new.partner:
        raise PolicyError(
            f"bundle {new.bundle_id} is for {new.platform} / {new.partner}, but {old} it says "
            f"it supersedes was for {last.data.get('platform')} / {last.data.get('partner')}"
        )
    stored = str(last.data.get("vault_path"))
    if stored != vault_path:
        raise PolicyError(
            f"bundle {old} was ingested to {stored}; its rotation must go to the same path, "
            f"not {vault_path}"
        )
    if superseded_by is not None and superseded_by != new.bundle_id:
        raise PolicyError(f"bundle {old} was already superseded by {superseded_by}")
    version = last.data.get("kv_version")
    return Supersession(old, stored, version if isinstance(version, int) else 0)


def holders(
    *,
    current_version: int,
    path_events: Sequence[Event],
    own_key: str,
    metadata: Mapping[str, Any],
) -> list[Holder]:
    """Who holds version ``current_version`` of a path, by this receiver's own signed
    `ingested` events for it (``path_events``) and by the path's custom metadata (which
    anyone with write access to the path can set: it can only make the rules stricter)."""
    found: list[Holder] = []
    ingests = own_ingests(path_events, own_key)
    if ingests and ingests[-1].data.get("kv_version") == current_version:
        d = ingests[-1].data
        found.append(
            Holder(
                current_version,
                ingests[-1].bundle_id,
                _text(d.get("sealed_by")),
                _text(d.get("platform")),
                _text(d.get("partner")),
                OWN_LEDGER,
            )
        )
    if metadata.get("sealed_by"):
        found.append(
            Holder(
                current_version,
                _text(metadata.get("bundle_id")),
                _text(metadata.get("sealed_by")),
                _text(metadata.get("platform")),
                _text(metadata.get("partner")),
                "the path's Vault metadata",
            )
        )
    return found


def current_holder(current_version: int, holders_now: Sequence[Holder]) -> Holder | None:
    """What a write to a path replaces: its first known holder, an unknown one when nobody
    is known, or None when nothing live is there (``current_version`` 0)."""
    if current_version == 0:
        return None
    return holders_now[0] if holders_now else Holder(current_version, None, None, None, None, "")


def check_path_claim(
    vault_path: str,
    *,
    current_version: int,
    holders_now: Sequence[Holder],
    new: BundleFacts,
    rotation: Supersession | None,
    allow_overwrite: bool,
) -> Holder | None:
    """Whether ``new`` may be written over what ``vault_path`` holds (version
    ``current_version``; 0 when nothing live is there). Returns what is replaced (None for
    an empty path); PolicyError (exit 7) naming the holder unless ``allow_overwrite``.

    A path belongs to the sender, platform and partner whose credentials it holds, as this
    receiver's own signed `ingested` event for the current version says (the path's metadata
    can only refuse): another trusted sender's bundle must not replace them silently (with
    or without naming a bundle it supersedes), nor may anything replace credentials that
    this receiver cannot account for. A rotation must replace exactly the version its
    superseded bundle stored.
    """
    replaced = current_holder(current_version, holders_now)
    if replaced is None or allow_overwrite:
        return replaced
    if rotation is not None:
        if rotation.replaced_kv_version != current_version:
            raise PolicyError(
                f"{vault_path} is at version {current_version}, not the version "
                f"{rotation.replaced_kv_version} that bundle {rotation.bundle_id} stored: "
                "something wrote it since, so this rotation would replace credentials it "
                "does not know",
                hints=[OVERWRITE_HINT],
            )
        return replaced
    if not any(h.known_from == OWN_LEDGER for h in holders_now):
        # the path's metadata alone cannot vouch for it: anyone who may write it can set it
        raise PolicyError(
            f"{vault_path} already holds credentials (version {current_version}) that this "
            "receiver did not record storing",
            hints=[OVERWRITE_HINT],
        )
    for h in holders_now:
        if (h.sealed_by, h.platform, h.partner) != (new.sender, new.platform, new.partner):
            raise PolicyError(
                f"{vault_path} holds credentials for {h.platform} / {h.partner or 'no partner'}"
                f" sealed by {h.sealed_by} (version {h.kv_version}, bundle {h.bundle_id}, "
                f"per {h.known_from}); bundle {new.bundle_id} is for {new.platform} / "
                f"{new.partner or 'no partner'} sealed by {new.sender}",
                hints=[OVERWRITE_HINT],
            )
    return replaced


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:256]
