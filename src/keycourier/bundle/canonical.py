"""Canonical JSON: the one byte encoding of manifests and payload plaintexts."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from keycourier.errors import IntegrityError

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, ASCII only. Floats are not allowed."""
    return _ENCODER.encode(obj).encode("ascii")


def _no_float(value: str) -> NoReturn:
    raise ValueError("floats are not allowed")


def parse_canonical(data: bytes, *, limit: int, error: IntegrityError) -> dict[str, Any]:
    """Parse a JSON object that must already be in canonical form; raise ``error`` otherwise."""
    if len(data) > limit:
        raise error
    try:
        obj = json.loads(data.decode("ascii"), parse_float=_no_float, parse_constant=_no_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error from None
    if not isinstance(obj, dict) or canonical_json(obj) != data:
        raise error
    return obj
