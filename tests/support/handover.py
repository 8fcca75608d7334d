"""For library workflow tests: an empty deny list (the workflows take one explicitly)."""

from __future__ import annotations


def nothing_denied(_fingerprint: str) -> str | None:
    return None
