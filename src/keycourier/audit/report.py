"""The auditor's report: one self-contained, print-friendly HTML file.

``build`` turns ledger events into a model (pure, no I/O): per partner and
credential fingerprint, the bundles, their timeline and current state; the
token and connection activity; events per period for a chart. ``render``
fills ``templates/report.html.j2`` with Jinja2, autoescaping on: every value
from a ledger is untrusted text. The page needs no network and no JavaScript.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2

from keycourier.ledger.interface import EventType, StoredEvent
from keycourier.ledger.recorder import LedgerRecorder
from keycourier.redact import printable

MAX_TEXT = 200  # characters shown of any value from the ledger


class Label(enum.StrEnum):
    """What the report calls an event (a reopen, for instance, is not a first open)."""

    SEALED = "sealed"
    OPENED = "opened"
    REOPENED = "reopened"
    INGESTED = "ingested"
    REVOKED = "revoked"
    REJECTED = "rejected"
    DENIED = "denied"
    ABORTED = "release aborted"
    SUPERSEDED = "superseded"
    RECEIPT = "receipt verified"
    TOKEN_ISSUED = "token issued"  # noqa: S105 - a label
    TOKEN_HANDED_OUT = "token handed out"  # noqa: S105 - a label
    CONNECTION_CREATED = "connection created"
    CONNECTION_CONNECTED = "connection connected"
    CONNECTION_DISCONNECTED = "connection disconnected"


_LABELS: Mapping[str, Label] = {
    "sealed": Label.SEALED,
    "opened": Label.OPENED,
    "ingested": Label.INGESTED,
    "revoked": Label.REVOKED,
    "rejected": Label.REJECTED,
    "denied_fingerprint": Label.DENIED,
    "release_aborted": Label.ABORTED,
    "superseded": Label.SUPERSEDED,
    "receipt_verified": Label.RECEIPT,
    "token_issued": Label.TOKEN_ISSUED,
    "token_handed_out": Label.TOKEN_HANDED_OUT,
    "connection_created": Label.CONNECTION_CREATED,
    "connection_connected": Label.CONNECTION_CONNECTED,
    "connection_disconnected": Label.CONNECTION_DISCONNECTED,
}

# Chart series: which labels each coloured band counts.
SERIES: tuple[tuple[str, frozenset[Label]], ...] = (
    (
        "handovers",
        frozenset(
            {
                Label.SEALED,
                Label.OPENED,
                Label.REOPENED,
                Label.INGESTED,
                Label.SUPERSEDED,
                Label.RECEIPT,
            }
        ),
    ),
    ("refusals", frozenset({Label.REVOKED, Label.REJECTED, Label.DENIED, Label.ABORTED})),
    ("tokens", frozenset({Label.TOKEN_ISSUED, Label.TOKEN_HANDED_OUT})),
    (
        "connections",
        frozenset(
            {
                Label.CONNECTION_CREATED,
                Label.CONNECTION_CONNECTED,
                Label.CONNECTION_DISCONNECTED,
            }
        ),
    ),
)


def _text(value: object) -> str:
    return printable("" if value is None else str(value), MAX_TEXT)


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Verification:
    """What was checked before the report was drawn, stated at its top."""

    ok: bool
    summary: str  # one sentence
    details: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    at: str
    label: Label
    actor: str
    detail: str
    policy_digest: str


@dataclass(slots=True)
class BundleView:
    bundle_id: str
    platform: str = ""
    environment: str = ""
    expires_at: datetime | None = None
    rows: list[Row] = field(default_factory=list)
    state: str = "recorded"


@dataclass(slots=True)
class CredentialView:
    partner: str
    fingerprint: str
    platform: str
    bundles: list[BundleView] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.bundles[-1].state if self.bundles else "no bundle"

    @property
    def policy_digests(self) -> list[str]:
        seen = {r.policy_digest for b in self.bundles for r in b.rows if r.policy_digest}
        return sorted(seen)


@dataclass(frozen=True, slots=True)
class Bar:
    start: str
    counts: tuple[int, ...]  # one per SERIES entry


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    generated_at: str
    ledger: str
    filters: tuple[str, ...]
    verification: Verification
    credentials: tuple[CredentialView, ...]
    activity: tuple[Row, ...]
    totals: tuple[tuple[str, int], ...]
    bars: tuple[Bar, ...]
    bucket: str  # "day" or "week" or "month"
    events: int


def _detail(data: Mapping[str, Any], label: Label) -> str:
    keys = {
        Label.INGESTED: ("vault_path", "kv_version"),
        Label.REVOKED: ("reason",),
        Label.REJECTED: ("stage", "rules"),
        Label.DENIED: ("reason",),
        Label.ABORTED: ("reason",),
        Label.SUPERSEDED: ("superseded_by",),
        Label.RECEIPT: ("receiver", "action"),
        Label.TOKEN_ISSUED: ("profile", "environment"),
        Label.TOKEN_HANDED_OUT: ("client", "profile"),
        Label.CONNECTION_CREATED: ("profile", "entity_id", "connection_id"),
        Label.CONNECTION_CONNECTED: ("entity_id", "connection_id", "platform"),
        Label.CONNECTION_DISCONNECTED: ("entity_id", "connection_id"),
    }.get(label, ())
    parts = []
    for key in keys:
        value = data.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return _text("; ".join(parts))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _state(view: BundleView, now: datetime) -> str:
    labels = [r.label for r in view.rows]
    if Label.REVOKED in labels:
        return "revoked"
    if Label.SUPERSEDED in labels:
        return "superseded"
    if Label.INGESTED in labels:
        return "ingested"
    if Label.OPENED in labels or Label.REOPENED in labels:
        return "opened"
    if Label.REJECTED in labels and Label.SEALED not in labels:
        return "rejected"
    if view.expires_at is not None and view.expires_at <= now:
        return "expired unopened"
    if Label.SEALED in labels:
        return "sealed, not yet opened"
    return "recorded"


def _bucket(first: datetime, last: datetime) -> tuple[str, timedelta]:
    span = last - first
    if span <= timedelta(days=62):
        return "day", timedelta(days=1)
    if span <= timedelta(days=7 * 60):
        return "week", timedelta(days=7)
    return "month", timedelta(days=30)


def _bars(labelled: Sequence[tuple[datetime, Label]]) -> tuple[str, tuple[Bar, ...]]:
    if not labelled:
        return "day", ()
    first = min(at for at, _ in labelled)
    last = max(at for at, _ in labelled)
    name, step = _bucket(first, last)
    origin = first.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    n = int((last - origin) / step) + 1
    counts = [[0] * len(SERIES) for _ in range(n)]
    for at, label in labelled:
        index = int((at - origin) / step)
        for s, (_, members) in enumerate(SERIES):
            if label in members:
                counts[index][s] += 1
    return name, tuple(
        Bar((origin + i * step).strftime("%Y-%m-%d"), tuple(c)) for i, c in enumerate(counts)
    )


def build(
    events: Iterable[StoredEvent],
    verification: Verification,
    *,
    ledger: str,
    now: datetime,
    since: datetime | None = None,
    partner: str | None = None,
) -> Report:
    """The report model of ``events`` (oldest first), filtered by time and partner."""
    bundles: dict[str, BundleView] = {}
    bundle_meta: dict[str, tuple[str, str]] = {}  # bundle -> (partner, fingerprint)
    opened_once: set[str] = set()
    activity: list[Row] = []
    labelled: list[tuple[datetime, Label]] = []
    totals: Counter[str] = Counter()
    count = 0
    loose: dict[tuple[str, str], list[Row]] = defaultdict(list)  # no bundle id
    for stored in events:
        e = stored.event
        data = e.data
        bid = e.bundle_id
        who = data.get("partner")
        if bid is not None and isinstance(who, str) and bid not in bundle_meta:
            bundle_meta[bid] = (who, e.fingerprint or "")
        label = _LABELS.get(str(e.type))
        if label is None:
            continue
        if label == Label.OPENED and bid is not None:
            if bid in opened_once or data.get("reopen") is True:
                label = Label.REOPENED
            opened_once.add(bid)
        event_partner = bundle_meta.get(bid, ("", ""))[0] if bid else str(who or "")
        if since is not None and e.at < since:
            continue
        if partner is not None and event_partner != partner:
            continue
        count += 1
        totals[str(label)] += 1
        labelled.append((e.at, label))
        row = Row(
            stored.seq,
            _time(e.at),
            label,
            _text(e.actor),
            _detail(data, label),
            _text(e.policy_digest or ""),
        )
        if e.type in {EventType.TOKEN_ISSUED, EventType.TOKEN_HANDED_OUT} or str(e.type).startswith(
            "connection_"
        ):
            activity.append(row)
            continue
        if bid is None:
            loose[(str(who or ""), e.fingerprint or "")].append(row)
            continue
        view = bundles.setdefault(bid, BundleView(_text(bid)))
        view.platform = view.platform or _text(data.get("platform") or "")
        view.environment = view.environment or _text(data.get("environment") or "")
        view.expires_at = view.expires_at or _parse_time(data.get("expires_at"))
        view.rows.append(row)
    credentials: dict[tuple[str, str], CredentialView] = {}
    for bid, view in bundles.items():
        view.state = _state(view, now)
        who, fp = bundle_meta.get(bid, ("", ""))
        key = (who, fp)
        cred = credentials.setdefault(
            key, CredentialView(_text(who or "(no partner named)"), _text(fp), view.platform)
        )
        cred.bundles.append(view)
    for (who, fp), rows in loose.items():
        key = (who, fp)
        cred = credentials.setdefault(
            key, CredentialView(_text(who or "(no partner named)"), _text(fp), "")
        )
        cred.bundles.append(BundleView("(no bundle)", rows=rows, state="refused before sealing"))
    ordered = sorted(credentials.values(), key=lambda c: (c.partner.casefold(), c.fingerprint))
    bucket, bars = _bars(labelled)
    filters = []
    if since is not None:
        filters.append(f"events since {_time(since)}")
    if partner is not None:
        filters.append(f"partner {_text(partner)}")
    return Report(
        title="keycourier provenance report",
        generated_at=_time(now),
        ledger=_text(ledger),
        filters=tuple(filters),
        verification=verification,
        credentials=tuple(ordered),
        activity=tuple(activity),
        totals=tuple(sorted(totals.items())),
        bars=bars,
        bucket=bucket,
        events=count,
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["series"] = [name for name, _ in SERIES]
    return env


def _template(name: str) -> str:
    return resources.files("keycourier.audit").joinpath("templates", name).read_text("utf-8")


def render(report: Report) -> str:
    """The HTML page of ``report``."""
    chart_height = 120
    peak = max((sum(b.counts) for b in report.bars), default=0)
    return (
        _environment()
        .get_template("report.html.j2")
        .render(r=report, peak=peak, chart_height=chart_height)
    )


def report_html(
    recorder: LedgerRecorder,
    *,
    vault: bool,
    since: datetime | None,
    partner: str | None,
    now: datetime,
) -> tuple[str, Verification]:
    """The HTML report of the ledger, after verifying it (and Vault with ``vault``)."""
    audited = recorder.verify(vault=vault)
    chain = audited.chain
    first = audited.first_break
    details = [
        f"{chain.events} events, {chain.checkpoints} signed checkpoints, "
        f"{chain.unsigned_tail} event(s) after the last one",
        f"verifier key {recorder.ledger.verifier().vkey()}",
    ]
    if audited.vault_checked:
        details.append(
            f"Vault: {audited.vault_records_checked} record version(s) cross-checked, "
            f"{audited.foreign_records} from other ledgers"
        )
    details.extend(audited.notes)
    if first is None:
        summary = "the hash chain, the Merkle tree and every signed checkpoint verify" + (
            ", and Vault agrees" if audited.vault_checked else " (Vault not checked)"
        )
    else:
        summary = f"the ledger is broken at event #{first[0]}: {first[1]}"
    verification = Verification(first is None, summary, tuple(details))
    model = build(
        recorder.ledger.iter_all(),
        verification,
        ledger=f"{recorder.ledger.path} ({recorder.ledger.origin})",
        now=now,
        since=since,
        partner=partner,
    )
    return render(model), verification
