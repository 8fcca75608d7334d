"""Rate-limit buckets shared by the helper's worker processes (``serve --workers N``).

A client's rate holds for the client as a whole, whichever worker a request
reaches: the buckets live in one table of shared memory (``memfd_create``,
never a file on disk) that the supervisor makes and every worker maps.
A ``take()`` holds a POSIX record lock (``lockf``) on the table while it
reads and writes one slot: two system calls and a few microseconds per
request (``scripts/bench-helper`` measures the whole path).

Slot layout (48 bytes): a 16-byte BLAKE2b digest of the bucket key (a client
ID, a Vault token accessor), then the rate, the tokens left and the time of
the last take (``time.monotonic()``, one clock for every process on the
host). A slot whose bucket has refilled completely is as good as new, so it
may be taken over by another key; every take checks that its slot still
holds its own key. If no slot is free within ``MAX_PROBES`` of a key's place
(more than a few thousand keys active at once), that key falls back to a
bucket in the worker's own memory.

A fast client (over 100 requests per second) does not pay the lock on every
request: a worker takes up to ``LEASE_SECONDS`` worth of its rate (at most a
quarter of its burst) from the table at once and spends it within that time;
what is left then is dropped. So the client never gets more than its rate and
burst over all workers together, and at worst gets that lease less per worker.
A client told to wait is refused without the lock until the wait is over:
workers only take tokens, so none can appear sooner.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from typing import Final

SLOT: Final = struct.Struct("=16sddd")  # key digest, rate, tokens, last take (monotonic)
SLOTS: Final = 4096
MAX_PROBES: Final = 64
LEASE_SECONDS: Final = 0.01
TABLE_BYTES: Final = SLOT.size * SLOTS
_EMPTY: Final = bytes(16)


def _burst(rate: float) -> float:
    return max(1.0, rate * 2)


class SharedBuckets:
    """The table; ``create()`` in the supervisor, ``attach(fd)`` in each worker."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, TABLE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create(cls) -> SharedBuckets:
        fd = os.memfd_create("keycourier-helper-rates", os.MFD_CLOEXEC)
        os.ftruncate(fd, TABLE_BYTES)
        return cls(fd)

    @classmethod
    def attach(cls, fd: int) -> SharedBuckets:
        if os.fstat(fd).st_size != TABLE_BYTES:
            raise ValueError("the shared rate table has the wrong size")
        return cls(fd)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)

    def bucket(self, key: str, rate: float) -> SharedBucket:
        return SharedBucket(self, hashlib.blake2b(key.encode(), digest_size=16).digest(), rate)

    def _slot(self, digest: bytes, rate: float, now: float, hint: int) -> int:
        """The slot holding ``digest`` (claimed if need be), or -1. Call under the lock."""
        m = self._map
        if hint >= 0 and m[hint * SLOT.size : hint * SLOT.size + 16] == digest:
            return hint
        start = int.from_bytes(digest[:4], "little") % SLOTS
        free = -1
        for i in range(MAX_PROBES):
            idx = (start + i) % SLOTS
            key, s_rate, tokens, last = SLOT.unpack_from(m, idx * SLOT.size)
            if key == digest:
                return idx
            if free < 0 and (key == _EMPTY or tokens + (now - last) * s_rate >= _burst(s_rate)):
                free = idx  # empty, or a bucket that has refilled: as good as new
        if free >= 0:
            SLOT.pack_into(m, free * SLOT.size, digest, rate, _burst(rate), now)
        return free

    def take(
        self, digest: bytes, rate: float, now: float, hint: int, want: int = 1
    ) -> tuple[int, int, float | None]:
        """(slot, tokens taken, None) if allowed (up to ``want``), else (slot, 0, seconds
        to wait); slot -1: the table is full."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            idx = self._slot(digest, rate, now, hint)
            if idx < 0:
                return -1, 0, None
            off = idx * SLOT.size
            _, s_rate, tokens, last = SLOT.unpack_from(self._map, off)
            burst = _burst(rate)
            now = max(now, last)  # ``now`` was read before the lock; another take may be later
            if s_rate != rate:  # the client's rate changed: start again full
                tokens, last = burst, now
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                taken = min(want, int(tokens))
                SLOT.pack_into(self._map, off, digest, rate, tokens - taken, now)
                return idx, taken, None
            SLOT.pack_into(self._map, off, digest, rate, tokens, now)
            return idx, 0, (1 - tokens) / rate
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)


class SharedBucket:
    """One key's bucket in the shared table: ``rate`` and ``take(now)`` like the one-process
    ``principals.LocalBucket``."""

    __slots__ = (
        "_batch",
        "_digest",
        "_fallback",
        "_hint",
        "_lease",
        "_lease_until",
        "_refused_until",
        "_table",
        "rate",
    )

    def __init__(self, table: SharedBuckets, digest: bytes, rate: float) -> None:
        self._table = table
        self._digest = digest
        self._hint = -1
        self._fallback: tuple[float, float] | None = None  # (tokens, last) when the table is full
        self.rate = rate
        self._batch = max(1, min(int(rate * LEASE_SECONDS), int(_burst(rate) / 4)))
        self._lease = 0  # tokens taken from the table and not yet spent
        self._lease_until = 0.0
        # The table said "wait": no other worker can add tokens (they only take), so until
        # then this worker refuses without the lock. Exact, and cheap under a flood.
        self._refused_until = 0.0

    def take(self, now: float) -> float | None:
        """None if allowed; otherwise the seconds to wait."""
        if self._lease and now < self._lease_until:
            self._lease -= 1
            return None
        if now < self._refused_until:
            return self._refused_until - now
        idx, taken, wait = self._table.take(self._digest, self.rate, now, self._hint, self._batch)
        if idx >= 0:
            self._hint = idx
            self._lease = max(0, taken - 1)
            self._lease_until = now + LEASE_SECONDS
            if wait is not None:
                self._refused_until = now + wait
            return wait
        burst = _burst(self.rate)  # table full: this worker's own bucket for this key
        tokens, last = self._fallback or (burst, now)
        tokens = min(burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._fallback = (tokens - 1, now)
            return None
        self._fallback = (tokens, now)
        return (1 - tokens) / self.rate
