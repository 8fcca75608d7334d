"""The auditor's workflows over one ledger: prove, pack, verify a pack, report.

Each takes an open recorder (or a pack file) and returns data; the CLI renders it.
Formats: docs/audit.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from keycourier.audit import pack
from keycourier.errors import UsageError
from keycourier.ledger.checkpoints import EventProof, prove_events
from keycourier.ledger.interface import StoredEvent
from keycourier.ledger.recorder import LedgerRecorder
from keycourier.tlog import merkle


def proofs_for(
    recorder: LedgerRecorder,
    *,
    bundle_id: str | None = None,
    seq: int | None = None,
    checkpoint: str | None = None,
) -> list[EventProof]:
    """Inclusion proofs of a bundle's events (or of event ``seq``) against ``checkpoint``
    (the latest signed tree head by default)."""
    if (bundle_id is None) == (seq is None):
        raise UsageError("give a bundle ID or --seq N, not both")
    if seq is not None:
        seqs = [seq]
    else:
        seqs = [s.seq for s in recorder.ledger.history(bundle_id=bundle_id)]
        if not seqs:
            raise UsageError(f"no event of bundle {bundle_id} in this ledger")
    return prove_events(recorder, seqs, checkpoint=checkpoint)


def _partners(events: Iterable[StoredEvent]) -> dict[str, str]:
    """Bundle ID -> the partner its first event that names one names."""
    found: dict[str, str] = {}
    for stored in events:
        bid, who = stored.event.bundle_id, stored.event.data.get("partner")
        if bid is not None and isinstance(who, str) and bid not in found:
            found[bid] = who
    return found


def _selected(
    events: Sequence[StoredEvent],
    *,
    bundles: Sequence[str],
    partner: str | None,
    since: datetime | None,
) -> list[StoredEvent]:
    partners = _partners(events) if partner is not None else {}
    wanted = set(bundles)
    out = []
    for stored in events:
        e = stored.event
        if wanted and e.bundle_id not in wanted:
            continue
        if since is not None and e.at < since:
            continue
        if partner is not None:
            who = partners.get(e.bundle_id or "") or e.data.get("partner")
            if who != partner:
                continue
        out.append(stored)
    return out


def build_pack(
    recorder: LedgerRecorder,
    *,
    bundles: Sequence[str] = (),
    partner: str | None = None,
    since: datetime | None = None,
    now: datetime,
) -> tuple[bytes, int]:
    """An evidence pack of the chosen events (all when no filter), and how many it holds."""
    ledger = recorder.ledger
    ledger.checkpoint()
    latest = ledger.latest_note()
    if latest is None:
        raise UsageError(f"the ledger {ledger.path} has no events yet")
    size, note_text = latest
    events = [s for s in ledger.iter_all() if s.seq <= size]
    chosen = _selected(events, bundles=bundles, partner=partner, since=since)
    if not chosen:
        raise UsageError("no event matches the selection: nothing to pack")
    indices = [s.seq - 1 for s in chosen]
    bodies = [ledger.event_body(s.seq) or "" for s in chosen]
    digests = sorted({s.event.policy_digest for s in chosen if s.event.policy_digest})
    policies: dict[str, str] = {}
    missing: list[str] = []
    for digest in digests:
        text = ledger.policy_text(digest)
        if text is None:
            missing.append(digest)
        else:
            policies[digest] = text
    selection: dict[str, object] = {}
    if bundles:
        selection["bundles"] = list(bundles)
    if partner is not None:
        selection["partner"] = partner
    if since is not None:
        selection["since"] = since.isoformat()
    contents = pack.PackContents(
        origin=ledger.origin,
        tree_size=size,
        root_hash=ledger.root_at(size),
        checkpoint_note=note_text,
        verifier_key=ledger.verifier().vkey(),
        indices=indices,
        bodies=bodies,
        proof=merkle.batch_proof(indices, size, ledger.node),
        policies=policies,
        policies_missing=missing,
        selection=selection,
    )
    return pack.build(contents, now=now), len(chosen)


def verify_pack(path: Path, *, key: str | None) -> pack.PackReport:
    return pack.verify(path, key=key)


def proofs_json(proofs: Sequence[EventProof]) -> str:
    return json.dumps([p.to_json() for p in proofs], indent=2) + "\n"
