"""Who a request to the helper acts for, and how fast it may go.

A ``Principal`` is a client key (``client:NAME``) or a Vault token carrying
``[helper] vault_policy`` (``vault:DISPLAY_NAME``): the profiles it may use and its
rate. Each rate-limit key has a ``RateBucket``: a ``LocalBucket`` in one process, or
a bucket in the table that ``serve --workers N`` shares (``keycourier.helper.shared_state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # "client:NAME" or "vault:DISPLAY_NAME"
    key: str  # rate-limit bucket key
    profiles: tuple[str, ...]
    rate: float

    def allows(self, profile: str) -> bool:
        return "*" in self.profiles or profile in self.profiles


class LocalBucket:
    """A token bucket: ``rate`` requests per second, bursts of twice that."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 2)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> float | None:
        """None if allowed; otherwise the seconds to wait."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens >= 1:
            self.tokens = tokens - 1
            return None
        self.tokens = tokens
        return (1 - tokens) / self.rate


class RateBucket(Protocol):
    """What a caller's rate limit needs: ``LocalBucket``, or a bucket shared by worker processes."""

    rate: float

    def take(self, now: float) -> float | None: ...
