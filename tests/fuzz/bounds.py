"""Time and memory bounds for one parser call on a maximum-size input."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

from keycourier.errors import Error


def _run(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except Error as exc:
        return exc
    return None


def measure(
    call: Callable[[], object], *, memory: bool = True
) -> tuple[float, int, BaseException | None]:
    """Run ``call``; return (seconds, tracemalloc peak bytes, the keycourier error or None).

    The time is taken on a plain run (tracemalloc slows allocation-heavy code
    several times over); the peak on a second, traced run (0 when
    ``memory`` is false). Anything other than a keycourier error propagates:
    that is a finding.
    """
    started = time.perf_counter()
    caught = _run(call)
    elapsed = time.perf_counter() - started
    peak = 0
    if memory:
        tracemalloc.start()
        try:
            _run(call)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return elapsed, peak, caught
