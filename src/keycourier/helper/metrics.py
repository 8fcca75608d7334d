"""The helper's ``/metrics`` page (Prometheus text format), as each caller may see it.

``metrics_text`` draws it from one process's ``HelperState``; with ``serve --workers N``
the page summed over the workers is drawn for ``EVERY_PROFILE`` and cut down to the
caller's profiles by ``scope_metrics``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from keycourier.helper.principals import Principal

if TYPE_CHECKING:
    from keycourier.helper.state import HelperState

_PROFILE_LABEL = re.compile(r'profile="([^"]*)"')
# sees every profile: a worker's own page, which the supervisor sums
EVERY_PROFILE = Principal("every-profile", "every-profile", ("*",), 0.0)


def metrics_text(state: HelperState, principal: Principal) -> str:
    """The Prometheus page as ``principal`` may see it.

    Series labelled with a profile appear only for the profiles the
    principal may use; the helper-wide totals name no profile and are
    shown to every client.
    """
    s = state.cache.stats
    lines = [
        "# HELP keycourier_helper_requests_total Requests by route and status.",
        "# TYPE keycourier_helper_requests_total counter",
    ]
    counts = Counter(state.requests)
    if state.token_ok or state.ready_served:
        counts[("token", 200)] += state.token_ok + state.ready_served
    for (route, status), n in sorted(counts.items()):
        lines.append(f'keycourier_helper_requests_total{{route="{route}",status="{status}"}} {n}')
    for name, help_text, value in (
        (
            "cache_hits_total",
            "Token requests served from the cache.",
            s.hits + state.ready_served,
        ),
        ("cache_misses_total", "Token requests that waited for the platform.", s.misses),
        ("upstream_calls_total", "Token requests sent to the platform.", s.upstream_calls),
        ("upstream_errors_total", "Failed token refreshes.", s.upstream_errors),
        (
            "handouts_first_total",
            "First hand-out of a token to a client (recorded).",
            state.handouts_first,
        ),
        (
            "handouts_repeat_total",
            "Repeated hand-outs of a token to the same client.",
            state.handouts_repeat + state.ready_served,
        ),
    ):
        lines += [
            f"# HELP keycourier_helper_{name} {help_text}",
            f"# TYPE keycourier_helper_{name} counter",
            f"keycourier_helper_{name} {value}",
        ]
    lines += [
        "# HELP keycourier_helper_token_age_seconds Age of the cached token per profile.",
        "# TYPE keycourier_helper_token_age_seconds gauge",
    ]
    for name, age in sorted(state.cache.token_ages().items()):
        if not principal.allows(name):
            continue  # another client's profile: not even its name
        lines.append(f'keycourier_helper_token_age_seconds{{profile="{name}"}} {age:.3f}')
    if state.guard is not None:
        g = state.guard
        lines += [
            "# HELP keycourier_helper_connections_open Client connections open now.",
            "# TYPE keycourier_helper_connections_open gauge",
            f"keycourier_helper_connections_open {g.open}",
            "# HELP keycourier_helper_connections_closed_total Connections the helper closed "
            "early, by reason.",
            "# TYPE keycourier_helper_connections_closed_total counter",
            f'keycourier_helper_connections_closed_total{{reason="refused"}} {g.refused}',
            f'keycourier_helper_connections_closed_total{{reason="evicted"}} {g.evicted}',
            f'keycourier_helper_connections_closed_total{{reason="timeout"}} {g.timed_out}',
        ]
    if state.recorder is not None:
        lines += [
            "# HELP keycourier_helper_events_pending Provenance events queued for the ledger.",
            "# TYPE keycourier_helper_events_pending gauge",
            f"keycourier_helper_events_pending {state.recorder.pending()}",
            "# HELP keycourier_helper_events_failed_total Events the ledger refused.",
            "# TYPE keycourier_helper_events_failed_total counter",
            f"keycourier_helper_events_failed_total {state.recorder.failed}",
        ]
    return "\n".join(lines) + "\n"


def scope_metrics(text: str, principal: Principal) -> str:
    """``text`` (a metrics page of every profile) without the samples of profiles that
    ``principal`` may not use: as ``metrics_text(state, principal)`` would have drawn it."""
    kept = []
    for line in text.splitlines():
        found = None if line.startswith("#") else _PROFILE_LABEL.search(line)
        if found is None or principal.allows(found.group(1)):
            kept.append(line)
    return "\n".join(kept) + "\n"
