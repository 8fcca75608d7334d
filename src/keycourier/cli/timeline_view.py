"""How `audit show` renders a timeline: words a person reads, lines that fit a terminal."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any

from keycourier.ledger.chain import format_time
from keycourier.ledger.interface import Event, EventType
from keycourier.redact import printable

MAX_WIDTH = 100  # the widest line, and the width when stdout is not a terminal
MIN_WIDTH = 60  # a narrower terminal still gets lines this wide
INDENT = "    "

# (source, vault_status or Vault origin) -> (the stable `origin` of --json, what a person reads)
ORIGINS: dict[tuple[str, str], tuple[str, str]] = {
    ("ledger", "recorded"): ("this-ledger", "this ledger; also recorded in Vault"),
    ("ledger", "pending"): (
        "this-ledger",
        "this ledger; not in Vault yet ('keycourier sync' delivers it)",
    ),
    ("ledger", "disabled"): ("this-ledger", "this ledger; no Vault configured"),
    ("vault", "foreign"): ("vault-other-ledger", "from Vault: recorded by another ledger"),
    ("vault", "unmatched"): (
        "vault-not-in-this-ledger",
        "in Vault but missing from this ledger (or different in it)",
    ),
}


def origin_of(source: str, status: str) -> tuple[str, str]:
    """The stable origin and its words for a timeline row."""
    return ORIGINS.get((source, status), (f"{source}-{status}", f"{source} ({status})"))


def shown_type(event: Event) -> str:
    """What a person is shown for the event's type: an `opened` event recorded as a reopen
    (``data.reopen`` true, an ``--allow-reopen``) is `reopened`; the rest as they are."""
    if event.type == EventType.OPENED and event.data.get("reopen") is True:
        return "reopened"
    return str(event.type)


def terminal_width() -> int:
    """The terminal's width, at most MAX_WIDTH (and MAX_WIDTH when stdout is not one)."""
    columns = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return max(MIN_WIDTH, min(MAX_WIDTH, columns))


def matched_as(key: str, events: Sequence[Event]) -> str:
    """What ``key`` named, in words: a bundle, a credential fingerprint, a connection, an
    entity or organization (several when it matched several fields)."""
    kinds: list[str] = []

    def add(kind: str) -> None:
        if kind not in kinds:
            kinds.append(kind)

    for e in events:
        if e.bundle_id == key:
            add("bundle")
        if e.fingerprint == key:
            add("credential fingerprint")
        if e.data.get("connection_id") == key:
            add("connection")
        if e.data.get("entity_id") == key:
            scope = e.data.get("scope")
            add(scope if scope in {"entity", "organization"} else "entity")
    return " / ".join(kinds) or "key"


def json_rows(rows: Sequence[tuple[str, Event, str]]) -> list[dict[str, Any]]:
    """The --json timeline: the fields it always had, plus `origin` and `shown_as`."""
    out: list[dict[str, Any]] = []
    for src, e, status in rows:
        out.append(
            {
                "source": src,
                "origin": origin_of(src, status)[0],
                "type": str(e.type),
                "shown_as": shown_type(e),
                "at": format_time(e.at),
                "actor": e.actor,
                "bundle_id": e.bundle_id,
                "fingerprint": e.fingerprint,
                "data": dict(e.data),
                "vault_status": status,
            }
        )
    return out


def _value(value: Any) -> str:  # noqa: ANN401 - any JSON value
    if isinstance(value, str):
        return printable(value)
    return printable(json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")))


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """``text`` wrapped to ``width`` columns: a long word is broken, never dropped."""
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def render(key: str, rows: Sequence[tuple[str, Event, str]], width: int) -> list[str]:
    """The timeline as lines of at most ``width`` columns: a heading, then per event a line
    with its time, what happened and who, and indented lines saying where the record comes
    from and its details. Text from records is escaped (printable)."""
    events = [e for _, e, _ in rows]
    count = f"{len(rows)} event{'s' if len(rows) != 1 else ''}"
    heading = f"Timeline of {matched_as(key, events)} {printable(key)} ({count})"
    lines = _wrap(heading, width, "", "")
    label_width = max(len("EVENT"), *(len(shown_type(e)) for e in events))
    time_width = len(format_time(events[0].at)) if events else len("TIME")
    who_col = time_width + 2 + label_width + 2
    lines.append(f"{'TIME':<{time_width}}  {'EVENT':<{label_width}}  WHO")
    for src, e, status in rows:
        head = f"{format_time(e.at):<{time_width}}  {shown_type(e):<{label_width}}"
        actor = printable(e.actor)
        if who_col + len(actor) <= width:
            lines.append(f"{head}  {actor}")
        else:  # on its own lines, wrapped: never cut
            lines.append(head.rstrip())
            lines.extend(_wrap(actor, width, INDENT + "who: ", INDENT * 2))
        lines.extend(_wrap(origin_of(src, status)[1], width, INDENT + "from: ", INDENT * 2))
        details = [
            f"{name}={printable(value)}"
            for name, value in (("bundle", e.bundle_id), ("fingerprint", e.fingerprint))
            if value and value != key
        ]
        details += [f"{printable(str(k))}={_value(v)}" for k, v in sorted(e.data.items())]
        if details:
            lines.extend(_wrap(", ".join(details), width, INDENT + "details: ", INDENT * 2))
    # only this ledger's own receipt_verified events: a Vault record of another ledger is
    # not signed, so it cannot say who received the bundle
    for closing in receipt_lines([e for src, e, _ in rows if src == "ledger"]):
        lines.extend(_wrap(closing, width, "", INDENT))
    return lines


def receipt_lines(events: Sequence[Event]) -> list[str]:
    """How the handover ended, from the sender's side: the latest verified receipt
    (docs/receipts.md), the last line "Received and stored by <receiver> at <time>"."""
    verified = [e for e in events if e.type == EventType.RECEIPT_VERIFIED]
    if not verified:
        return []
    data = verified[-1].data
    done = "stored" if data.get("action") == "ingested" else "opened"
    version = data.get("kv_version")
    extra = f" (Vault version {version})" if isinstance(version, int) else ""
    return [
        f"Receipt {printable(str(data.get('receipt_id')))}{extra} verified.",
        f"Received and {done} by {printable(str(data.get('receiver')))} at "
        f"{printable(str(data.get('received_at')))}",
    ]
