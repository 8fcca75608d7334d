"""The file token cache is keyed by the credentials too, and never stores the secret."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from keycourier.helper.filecache import KEY_FILE, FileCache
from keycourier.partner.profiles import parse_profile
from keycourier.partner.tokens import ClientCredentials, Token
from keycourier.redact import Secret
from tests.support.profiles import BASE

PROFILE = parse_profile("ci", BASE, "test")
SOURCE = PROFILE.credentials.describe()
PARTNER_A = ClientCredentials("client-a", Secret("secret-a-4f1c9e7b2d"), SOURCE)
PARTNER_B = ClientCredentials("client-b", Secret("secret-b-8e2a6c0f3b"), SOURCE)
ROTATED_A = ClientCredentials("client-a", Secret("secret-a-rotated-71d5"), SOURCE)


def _token(value: str) -> Token:
    return Token(Secret(value), "Bearer", 1800, time.time())


def test_other_credentials_for_the_same_profile_get_their_own_entry(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "tokens")
    cache.write(PROFILE, PARTNER_A, _token("token-of-a"))
    # Another partner's secret, or A's secret after rotation: not A's old token.
    assert cache.read(PROFILE, PARTNER_B) is None
    assert cache.read(PROFILE, ROTATED_A) is None
    cache.write(PROFILE, PARTNER_B, _token("token-of-b"))
    got_a = cache.read(PROFILE, PARTNER_A)
    got_b = cache.read(PROFILE, PARTNER_B)
    assert got_a is not None
    assert got_a.access_token.reveal() == "token-of-a"
    assert got_b is not None
    assert got_b.access_token.reveal() == "token-of-b"
    entries = sorted((tmp_path / "tokens").glob("ci-*.json"))
    assert len(entries) == 2
    cache.clear(PROFILE, PARTNER_B)
    assert cache.read(PROFILE, PARTNER_B) is None
    assert cache.read(PROFILE, PARTNER_A) is not None


def test_no_secret_or_client_id_is_written_and_the_key_file_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    cache = FileCache(directory)
    cache.write(PROFILE, PARTNER_A, _token("token-of-a"))
    cache.write(PROFILE, PARTNER_B, _token("token-of-b"))
    blobs = b"".join(p.read_bytes() + p.name.encode() for p in directory.iterdir())
    for creds in (PARTNER_A, PARTNER_B):
        assert creds.client_secret.reveal().encode() not in blobs
        assert creds.client_id.encode() not in blobs
    key_file = directory / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_the_entry_name_is_keyed_not_a_plain_hash(tmp_path: Path) -> None:
    one, two = FileCache(tmp_path / "one"), FileCache(tmp_path / "two")
    one.write(PROFILE, PARTNER_A, _token("t1"))
    two.write(PROFILE, PARTNER_A, _token("t2"))
    names = [next(d.glob("ci-*.json")).name for d in (tmp_path / "one", tmp_path / "two")]
    assert names[0] != names[1]  # different random keys: the name says nothing testable


def test_a_foreign_or_open_key_file_disables_the_cache(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    cache = FileCache(directory)
    cache.write(PROFILE, PARTNER_A, _token("token-of-a"))
    os.chmod(directory / KEY_FILE, 0o644)
    assert cache.read(PROFILE, PARTNER_A) is None
    with pytest.raises(OSError, match="credentials-key"):
        cache.write(PROFILE, PARTNER_A, _token("token-of-a"))
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o644  # left alone


def test_a_damaged_key_file_of_ours_is_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    cache = FileCache(directory)
    cache.write(PROFILE, PARTNER_A, _token("token-of-a"))
    (directory / KEY_FILE).write_bytes(b"short")
    assert cache.read(PROFILE, PARTNER_A) is None
    cache.write(PROFILE, PARTNER_A, _token("token-of-a2"))
    got = cache.read(PROFILE, PARTNER_A)
    assert got is not None
    assert got.access_token.reveal() == "token-of-a2"


def test_the_refresh_lock_wait_ends_at_the_deadline(tmp_path: Path) -> None:
    """connection wait --timeout: another process holding the profile's refresh lock
    must not hold the caller past its deadline (flock locks are per open file, so a
    second descriptor in this process stands in for the other process)."""
    import errno
    import fcntl

    cache = FileCache(tmp_path / "tokens")
    with cache.lock(PROFILE, time.monotonic() + 5):  # free: taken at once
        pass
    holder = os.open(tmp_path / "tokens" / "ci.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        refused = pytest.raises(OSError, match="held the token cache lock")
        with refused as info, cache.lock(PROFILE, started + 0.5):
            pass
        waited = time.monotonic() - started
        assert info.value.errno == errno.ETIMEDOUT
        assert 0.5 <= waited < 1.0
        fcntl.flock(holder, fcntl.LOCK_UN)
        with cache.lock(PROFILE, time.monotonic() + 0.5):  # released: taken again
            pass
    finally:
        os.close(holder)


def test_the_refresh_lock_wait_is_announced_once_after_a_second(tmp_path: Path) -> None:
    """``on_wait`` runs once when the wait for another holder has lasted WAIT_NOTICE, not
    when the lock is free."""
    import fcntl

    from keycourier.helper.filecache import WAIT_NOTICE

    cache = FileCache(tmp_path / "tokens")
    calls: list[float] = []
    with cache.lock(PROFILE, time.monotonic() + 5, lambda: calls.append(time.monotonic())):
        pass
    assert calls == []
    holder = os.open(tmp_path / "tokens" / "ci.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with (
            pytest.raises(OSError, match="held the token cache lock"),
            cache.lock(PROFILE, started + 2.5, lambda: calls.append(time.monotonic())),
        ):
            pass
        assert len(calls) == 1
        assert WAIT_NOTICE <= calls[0] - started < 2.5
    finally:
        os.close(holder)
