"""How platform calls are retried, one way for token and connection calls: the retry
policy, and ``Retry-After`` (RFC 9110 10.2.3).

Delta-seconds or an HTTP-date. An HTTP-date is always GMT; a date that names no zone
(``-0000``) is read as UTC too, since HTTP has no other zone to mean. Standard library only
(``email.utils`` is imported when a date is actually given): it is on the ``token`` path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from keycourier._record import record

MAX_DELTA_DIGITS = 9


def retry_after(value: str | None, *, now: Callable[[], datetime] | None = None) -> float | None:
    """The delay ``value`` asks for, in seconds (0 for a date in the past); None when absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= MAX_DELTA_DIGITS:
        return float(int(value))
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@record
class RetryPolicy:
    """How a platform call is retried (token calls and connection calls alike)."""

    server_retries: int = 3  # 5xx, timeouts and network errors (connection calls: reads only)
    rate_limit_retries: int = 3  # 429s waited out
    backoff: float = 0.25  # the first pause; it doubles at each retry
    max_backoff: float = 8.0  # and never grows past this
    max_retry_after: float = 60.0  # a longer Retry-After is not waited out: the call fails

    def pause(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1 for the first): ``backoff`` doubled
        at each retry, at most ``max_backoff`` (token calls draw a full jitter below it)."""
        return min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
