"""The report model and its HTML: labels, states, filters, escaping."""

from __future__ import annotations

import html.parser
from datetime import UTC, datetime, timedelta
from typing import Any

from keycourier.audit import report
from keycourier.ledger.interface import Event, EventType, StoredEvent, VaultStatus

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OK = report.Verification(True, "chain, checkpoints and Vault agree")


def ev(seq: int, type_: EventType, bundle: str | None, **data: Any) -> StoredEvent:
    partner = data.pop("partner_", None)
    at = data.pop("at_", T0 + timedelta(hours=seq))
    payload = dict(data)
    if partner is not None:
        payload["partner"] = partner
    event = Event(
        type=type_,
        at=at,
        actor="kc1:sender",
        bundle_id=bundle,
        fingerprint="fp-" + (bundle or "none"),
        policy_digest="sha256:abc",
        data=payload,
    )
    return StoredEvent(seq, event, "0" * 64, "1" * 64, VaultStatus.RECORDED)


def story() -> list[StoredEvent]:
    return [
        ev(
            1,
            EventType.SEALED,
            "b1",
            partner_="Acme",
            platform="quickbooks",
            expires_at="2026-11-09T09:00:00Z",
        ),
        ev(2, EventType.OPENED, "b1", partner_="Acme", platform="quickbooks"),
        ev(3, EventType.OPENED, "b1", partner_="Acme", platform="quickbooks"),
        ev(4, EventType.INGESTED, "b1", vault_path="handed-over/acme/qbo", kv_version=1),
        ev(
            5,
            EventType.SEALED,
            "b2",
            partner_="Beta",
            platform="xero",
            expires_at="2026-11-10T00:00:00Z",
        ),
        ev(
            6,
            EventType.SEALED,
            "b3",
            partner_="Beta",
            platform="xero",
            expires_at="2027-01-10T00:00:00Z",
        ),
        ev(7, EventType.REVOKED, "b3", reason="sent to the wrong team"),
        ev(8, EventType.REJECTED, None, partner_="Gamma", rules=["sandbox-host"]),
        ev(9, EventType.TOKEN_ISSUED, None, profile="ci", environment="production"),
        ev(
            10,
            EventType.CONNECTION_CREATED,
            None,
            profile="ci",
            entity_id="e-1",
            connection_id="c-9",
        ),
    ]


def test_labels_states_and_grouping() -> None:
    r = report.build(story(), OK, ledger="/l.db", now=NOW)
    by_partner = {c.partner: c for c in r.credentials}
    assert [c.partner for c in r.credentials] == ["Acme", "Beta", "Beta", "Gamma"]
    acme = by_partner["Acme"]
    labels = [row.label for row in acme.bundles[0].rows]
    assert labels == ["sealed", "opened", "reopened", "ingested"]
    assert acme.state == "ingested"
    beta_states = {
        b.bundle_id: b.state for c in r.credentials if c.partner == "Beta" for b in c.bundles
    }
    assert beta_states == {"b2": "expired unopened", "b3": "revoked"}
    assert by_partner["Gamma"].bundles[0].rows[0].detail == "rules: sandbox-host"
    assert [row.label for row in r.activity] == ["token issued", "connection created"]
    assert dict(r.totals)["reopened"] == 1
    assert r.events == 10
    assert sum(sum(b.counts) for b in r.bars) == 10


def test_a_reopen_flag_marks_the_first_open_on_another_machine() -> None:
    events = [ev(1, EventType.OPENED, "b9", partner_="Acme", reopen=True)]
    r = report.build(events, OK, ledger="l", now=NOW)
    assert r.credentials[0].bundles[0].rows[0].label == "reopened"


def test_filters_by_partner_and_time() -> None:
    r = report.build(story(), OK, ledger="l", now=NOW, partner="Beta")
    assert [c.partner for c in r.credentials] == ["Beta", "Beta"]
    assert r.events == 3
    since = T0 + timedelta(hours=4)
    r = report.build(story(), OK, ledger="l", now=NOW, since=since)
    assert r.events == 7
    assert "Acme" in {c.partner for c in r.credentials}  # the ingest still names its partner


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_untrusted_values_are_text_not_markup() -> None:
    hostile = "<script>alert(1)</script>"
    events = [
        ev(1, EventType.SEALED, "b1", partner_=hostile, platform="<b>x</b>"),
        ev(2, EventType.REVOKED, "b1", reason='"><img src=x onerror=alert(1)>'),
    ]
    page = report.render(report.build(events, OK, ledger="<i>l</i>", now=NOW))
    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags
    assert {"img", "b", "i"}.isdisjoint(parsed.tags)
    text = "".join(parsed.text)
    assert hostile in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_verdict_is_stated_at_the_top() -> None:
    bad = report.Verification(False, "event 7 differs from the signed checkpoint", ("seq 7",))
    page = report.render(report.build(story(), bad, ledger="l", now=NOW))
    body = page.split("<body>", 1)[1]
    assert body.index("NOT verified") < body.index("Credentials by partner")
    assert "event 7 differs" in page


def test_an_empty_ledger_renders() -> None:
    page = report.render(report.build([], OK, ledger="l", now=NOW))
    assert "No events." in page
    assert "No handover events." in page
