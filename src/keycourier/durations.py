"""Durations as people type them: ``14d``, ``36h``, ``90m``, ``45s``, ``500ms``.

One parser for every option and policy value that takes a duration. Each caller says which
units it accepts (a bundle lifetime in days, hours or minutes; a wait in hours down to
milliseconds), whether a bare number means seconds, and the largest value it allows; the
caller turns the ValueError into its own error class (a usage error for an option, a config
error for a policy file). Standard library only: it is on the ``token`` path.
"""

from __future__ import annotations

import re
from collections.abc import Collection

SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DIGITS = 6
_FORM = re.compile(r"([0-9]{1,6})(ms|s|m|h|d)?\Z")
_EXAMPLE = {"d": "14d", "h": "36h", "m": "90m", "s": "90s", "ms": "500ms"}


def parse_seconds(
    text: str,
    *,
    what: str = "duration",
    units: Collection[str] = ("d", "h", "m"),
    bare_seconds: bool = False,
    at_most: float | None = None,
) -> float:
    """The number of seconds ``text`` names: ASCII digits (at most six) and one of
    ``units`` (or none, when ``bare_seconds``); more than 0 and at most ``at_most``.
    ValueError saying what is accepted otherwise."""
    forms = ", ".join(_EXAMPLE[u] for u in reversed(SECONDS) if u in units)
    if bare_seconds:
        forms += " (a bare number means seconds)"
    match = _FORM.match(text.strip())
    unit = match.group(2) if match else None
    if match is None or (unit is None and not bare_seconds) or (unit and unit not in units):
        raise ValueError(f"{what} must look like {forms}, not {text.strip()[:32]!r}")
    seconds = int(match.group(1)) * SECONDS[unit or "s"]
    if seconds <= 0:
        raise ValueError(f"{what} must look like {forms} and be more than 0")
    if at_most is not None and seconds > at_most:
        raise ValueError(f"{what} must be at most {format_seconds(at_most)}")
    return seconds


def format_seconds(seconds: float) -> str:
    """``14d`` / ``36h`` / ``90m`` / ``45s`` / ``500ms``: the shortest exact form."""
    millis = round(seconds * 1000)
    for unit in ("d", "h", "m", "s"):
        size = round(SECONDS[unit] * 1000)
        if millis and millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"
