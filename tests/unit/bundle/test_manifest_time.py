"""Manifest times are read without ``strptime``, with exactly its values and refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycourier.bundle.model import _parse_time
from keycourier.errors import IntegrityError

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _strptime(value: str) -> datetime | None:
    """The reference: what the manifest parser accepted when it used strptime."""
    from keycourier.bundle.model import _TIME_RE

    if not _TIME_RE.match(value):
        return None
    try:
        return datetime.strptime(value, FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _ours(value: str) -> datetime | None:
    try:
        return _parse_time(value, "created_at")
    except IntegrityError:
        return None


# digits (ASCII and others \d matches), the separators, and near misses
CHARS = st.sampled_from([*"0123456789", "-", ":", "T", "Z", " ", "\n", "\u0663", "\uff12", "a"])
FIELDS = st.tuples(
    st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32),
    st.integers(0, 25), st.integers(0, 61), st.integers(0, 62),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(fields=FIELDS, suffix=st.sampled_from(["Z", "Z\n", "z", "", "Z "]))
def test_field_values_give_what_strptime_gives(
    fields: tuple[int, int, int, int, int, int], suffix: str
) -> None:
    y, mo, d, h, mi, s = fields
    value = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{suffix}"
    assert _ours(value) == _strptime(value), value


@settings(max_examples=500, deadline=None)
@given(value=st.text(CHARS, min_size=18, max_size=22))
def test_any_text_gives_what_strptime_gives(value: str) -> None:
    assert _ours(value) == _strptime(value), value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-03T07:52:33Z", datetime(2026, 12, 3, 7, 52, 33, tzinfo=UTC)),
        ("2024-02-29T23:59:59Z", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
        ("2026-02-29T00:00:00Z", None),  # not a leap year
        ("2026-12-03T24:00:00Z", None),
        ("2026-12-03T07:52:60Z", None),
        ("2026-12-03T07:52:33Z\n", None),
        ("0000-01-01T00:00:00Z", None),
    ],
)
def test_examples(value: str, expected: datetime | None) -> None:
    assert _ours(value) == expected
    assert _strptime(value) == expected
