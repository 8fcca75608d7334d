"""The one duration parser: each caller's units, bare seconds, bounds, and what it refuses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keycourier.durations import SECONDS, format_seconds, parse_seconds

WAIT = {"units": ("h", "m", "s", "ms"), "bare_seconds": True, "at_most": 86400.0}


@pytest.mark.parametrize(
    ("text", "kwargs", "seconds"),
    [
        ("14d", {}, 14 * 86400.0),
        ("36h", {}, 36 * 3600.0),
        (" 90m ", {}, 5400.0),
        ("30m", WAIT, 1800.0),
        ("45", WAIT, 45.0),
        ("500ms", WAIT, 0.5),
        ("24h", WAIT, 86400.0),
    ],
)
def test_accepted(text: str, kwargs: dict[str, object], seconds: float) -> None:
    assert parse_seconds(text, **kwargs) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kwargs", "why"),
    [
        ("14", {}, "must look like 14d, 36h, 90m, not '14'"),  # no bare number for a lifetime
        ("90s", {}, "must look like"),  # a unit the caller does not take
        ("1d", WAIT, "must look like 36h, 90m, 90s, 500ms (a bare number means seconds)"),
        ("0d", {}, "more than 0"),
        ("0", WAIT, "more than 0"),
        ("25h", WAIT, "at most 1d"),
        ("1.5m", WAIT, "must look like"),
        ("-5", WAIT, "must look like"),
        ("\u0661\u0660", WAIT, "must look like"),  # Arabic-Indic digits are not ASCII digits
        ("1234567d", {}, "must look like"),
        ("", {}, "must look like"),
        ("1w", {}, "must look like"),
    ],
)
def test_refused(text: str, kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_seconds(text, what="--expires-in", **kwargs)  # type: ignore[arg-type]


def test_the_error_names_the_option_and_shows_the_text_safely() -> None:
    with pytest.raises(ValueError, match=r"^--timeout must look like") as caught:
        parse_seconds("soon\x1b[31m", what="--timeout", **WAIT)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("--timeout must look like")
    assert "\x1b" not in message  # shown as a repr: escapes are visible, not sent


@given(st.integers(min_value=1, max_value=999_999), st.sampled_from(sorted(SECONDS)))
def test_format_and_parse_agree(count: int, unit: str) -> None:
    seconds = count * SECONDS[unit]
    text = format_seconds(seconds)
    assert parse_seconds(text, units=tuple(SECONDS)) == pytest.approx(seconds)
