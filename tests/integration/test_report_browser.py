"""The audit report in a real browser: no console errors, a visible page, the
expected rows in the DOM, hostile ledger text shown as text, 10,000 events fast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from keycourier.audit import report
from keycourier.ledger.interface import Event, EventType, StoredEvent, VaultStatus
from tests.support.browser import png_summary, visit

T0 = datetime(2026, 6, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 3, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"
CYCLE = (EventType.SEALED, EventType.OPENED, EventType.INGESTED, EventType.TOKEN_HANDED_OUT)


def _events(n: int, partner: str = "Acme Ltd") -> list[StoredEvent]:
    out = []
    for seq in range(1, n + 1):
        kind = CYCLE[(seq - 1) % len(CYCLE)]
        bundle = None if kind is EventType.TOKEN_HANDED_OUT else f"b{(seq - 1) // 4}"
        data: dict[str, object] = {"partner": partner, "platform": "xero"}
        if kind is EventType.TOKEN_HANDED_OUT:
            data = {"client": "ci", "profile": "prod"}
        event = Event(
            type=kind,
            at=T0 + timedelta(minutes=20 * seq),
            actor="kc1:abc",
            bundle_id=bundle,
            fingerprint=f"fp{(seq - 1) // 40}" if bundle else None,
            policy_digest="sha256:0f",
            data=data,
        )
        out.append(StoredEvent(seq, event, "0" * 64, "1" * 64, VaultStatus.RECORDED))
    return out


DOM = {
    "timeline_rows": "document.querySelectorAll('table.timeline tbody tr').length",
    "activity_rows": "document.querySelectorAll('#activity tbody tr').length",
    "verdict": "document.querySelector('#verification strong').textContent",
    "scripts": "document.scripts.length",
    "partners": "[...document.querySelectorAll('.credential h3')].map(h => h.textContent)",
    "bars": "document.querySelectorAll('#overview svg rect').length",
}


def test_the_report_renders_cleanly_in_chromium(tmp_path: Path) -> None:
    events = _events(40)
    hostile = Event(
        type=EventType.SEALED,
        at=T0,
        actor="kc1:abc",
        bundle_id="b-hostile",
        fingerprint="fp-hostile",
        data={"partner": HOSTILE, "platform": "xero"},
    )
    events.append(StoredEvent(41, hostile, "0" * 64, "1" * 64, VaultStatus.RECORDED))
    page = tmp_path / "report.html"
    verified = report.Verification(True, "ok")
    page.write_text(report.render(report.build(events, verified, ledger="l", now=NOW)))
    seen = visit(tmp_path, page, DOM)
    assert seen.errors == []
    assert seen.values["scripts"] == 0
    assert seen.values["verdict"] == "Verified"
    assert seen.values["timeline_rows"] == 31  # 30 handover events + the hostile seal
    assert seen.values["activity_rows"] == 10
    assert HOSTILE + " \u00b7 xero" in seen.values["partners"]
    assert seen.values["bars"] >= 1
    (tmp_path / "report.png").write_bytes(seen.screenshot)
    width, height, distinct = png_summary(seen.screenshot)
    assert width >= 1000, width
    assert height >= 600, height
    assert distinct > 20, "the screenshot looks blank"


def test_ten_thousand_events_render_in_under_five_seconds(tmp_path: Path) -> None:
    events = _events(10_000)
    page = tmp_path / "big.html"
    page.write_text(
        report.render(report.build(events, report.Verification(True, "ok"), ledger="l", now=NOW))
    )
    seen = visit(tmp_path, page, DOM)
    assert seen.errors == []
    assert seen.values["timeline_rows"] == 7_500
    assert seen.values["activity_rows"] == 2_500
    assert seen.load_seconds < 5.0, f"load took {seen.load_seconds:.2f} s"
