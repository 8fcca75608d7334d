"""Pieces of ``serve --workers``: the worker count, the shared rate table, the summed metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from keycourier.errors import UsageError
from keycourier.helper.shared_state import LEASE_SECONDS, SLOTS, SharedBuckets
from keycourier.helper.workers import merge_metrics, parse_workers


def test_parse_workers() -> None:
    assert parse_workers("1") == 1
    assert parse_workers("64") == 64
    assert 1 <= parse_workers("auto") <= 64
    for bad in ("0", "65", "-2", "two", "", " 2", "2.0"):
        with pytest.raises(UsageError):
            parse_workers(bad)


def test_two_holders_of_one_key_share_its_burst() -> None:
    table = SharedBuckets.create()
    try:
        a, b = table.bucket("c0ffee00", 1.0), table.bucket("c0ffee00", 1.0)
        other = table.bucket("deadbeef", 1.0)
        now = 1000.0
        assert a.take(now) is None
        assert b.take(now) is None  # the burst is 2, for both holders together
        wait = a.take(now)
        assert wait is not None
        assert 0.9 < wait <= 1.0
        assert b.take(now) is not None
        assert other.take(now) is None  # another key has its own bucket
        assert a.take(now + 1.0) is None  # refilled at the client's rate
        assert b.take(now + 1.0) is not None
    finally:
        table.close()


def test_another_process_sees_the_same_buckets() -> None:
    table = SharedBuckets.create()
    try:
        assert table.bucket("c0ffee00", 1.0).take(5.0) is None
        code = (
            "import sys; from keycourier.helper.shared_state import SharedBuckets\n"
            "b = SharedBuckets.attach(int(sys.argv[1])).bucket('c0ffee00', 1.0)\n"
            "sys.exit(0 if b.take(5.0) is None and b.take(5.0) is not None else 1)"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, str(table.fd)], pass_fds=(table.fd,), check=False
        )
        assert r.returncode == 0
        assert table.bucket("c0ffee00", 1.0).take(5.0) is not None
    finally:
        table.close()


def test_a_refilled_slot_is_reused_and_a_full_table_falls_back_per_process() -> None:
    table = SharedBuckets.create()
    try:
        buckets = [table.bucket(f"k{i}", 1.0) for i in range(SLOTS + 200)]
        for b in buckets:
            b.take(0.0)  # fills every slot it can reach (the rest fall back)
        fallback = sum(1 for b in buckets if b._hint < 0)
        assert fallback > 0
        # a fallen-back bucket still limits: burst of 2, then a wait
        late = next(b for b in buckets if b._hint < 0)
        assert late.take(0.0) is None
        assert late.take(0.0) is not None
        # once the others have refilled, their slots are free again for a new key
        fresh = table.bucket("new-key", 1.0)
        assert fresh.take(100.0) is None
        assert fresh._hint >= 0
    finally:
        table.close()


def test_the_table_is_not_a_file() -> None:
    table = SharedBuckets.create()
    try:
        assert os.readlink(f"/proc/self/fd/{table.fd}").startswith("/memfd:")
    finally:
        table.close()


def test_merge_metrics_sums_workers_and_keeps_the_supervisors_own() -> None:
    page = (
        "# HELP keycourier_helper_requests_total Requests by route and status.\n"
        "# TYPE keycourier_helper_requests_total counter\n"
        'keycourier_helper_requests_total{{route="token",status="200"}} {ok}\n'
        "# HELP keycourier_helper_upstream_calls_total Token requests sent to the platform.\n"
        "# TYPE keycourier_helper_upstream_calls_total counter\n"
        "keycourier_helper_upstream_calls_total 1\n"
        "# HELP keycourier_helper_handouts_first_total First.\n"
        "# TYPE keycourier_helper_handouts_first_total counter\n"
        "keycourier_helper_handouts_first_total 1\n"
        "# HELP keycourier_helper_handouts_repeat_total Repeats.\n"
        "# TYPE keycourier_helper_handouts_repeat_total counter\n"
        "keycourier_helper_handouts_repeat_total {rep}\n"
    )
    text = merge_metrics(
        [(0, page.format(ok=5, rep=4)), (1, page.format(ok=3, rep=2))],
        {
            "keycourier_helper_upstream_calls_total": [
                ("keycourier_helper_upstream_calls_total", 1)
            ],
            "keycourier_helper_handouts_first_total": [
                ("keycourier_helper_handouts_first_total", 1)
            ],
        },
        restarts=2,
    )
    lines = text.splitlines()
    assert "keycourier_helper_workers 2" in lines
    assert "keycourier_helper_worker_restarts_total 2" in lines
    assert 'keycourier_helper_requests_total{route="token",status="200"} 8' in lines
    assert 'keycourier_helper_worker_requests_total{worker="0"} 5' in lines
    assert 'keycourier_helper_worker_requests_total{worker="1"} 3' in lines
    assert "keycourier_helper_upstream_calls_total 1" in lines  # the supervisor's, not 2
    assert "keycourier_helper_handouts_first_total 1" in lines
    assert "keycourier_helper_handouts_repeat_total 7" in lines  # (1+4) + (1+2) - 1
    assert lines.count("# TYPE keycourier_helper_requests_total counter") == 1


def test_a_fast_clients_lease_never_lets_more_than_its_burst_through() -> None:
    table = SharedBuckets.create()
    try:
        holders = [table.bucket("fa570000", 1000.0) for _ in range(3)]  # burst 2000, lease 10
        admitted = 0
        for i in range(3000):
            if holders[i % 3].take(7.0) is None:
                admitted += 1
        assert 2000 - 3 * 10 <= admitted <= 2000
        # after its lease time a holder asks the table again, which refilled at the rate
        later = 7.0 + LEASE_SECONDS + 0.005  # 15 ms: 15 tokens, each take leases up to 10
        assert sum(1 for _ in range(100) if holders[0].take(later) is None) <= 15 + 10
        assert holders[1].take(9.0) is None
    finally:
        table.close()


def test_a_refused_holder_does_not_ask_the_table_again_before_its_wait() -> None:
    table = SharedBuckets.create()
    try:
        a = table.bucket("5low0000", 1.0)
        assert a.take(50.0) is None
        assert a.take(50.0) is None
        wait = a.take(50.0)
        assert wait is not None
        # another process holds the table's lock: a take that needed the table would wait
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, sys, time; fd = int(sys.argv[1]); fcntl.lockf(fd, fcntl.LOCK_EX);"
                " print('locked', flush=True); time.sleep(3)",
                str(table.fd),
            ],
            pass_fds=(table.fd,),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            started = time.monotonic()
            again = a.take(50.5)
            assert time.monotonic() - started < 1.0
            assert again is not None
            assert abs(again - (wait - 0.5)) < 1e-9
        finally:
            holder.kill()
            holder.wait()
        assert a.take(50.0 + wait) is None  # then the table decides again
    finally:
        table.close()
