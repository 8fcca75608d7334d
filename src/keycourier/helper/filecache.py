"""The CLI's cross-process token cache: one 0600 JSON file per profile, plaintext.

Trade-off (documented in docs/token-helper.md): the file is not encrypted.
Any key that could encrypt it would have to sit next to it, readable by the
same user, so encryption would add ceremony and no protection against that
user; the protection is the file mode (0600 in a 0700 directory), the short
token lifetime, and the location: ``$XDG_RUNTIME_DIR/keycourier/tokens``
(a per-user tmpfs, gone at logout) when set, otherwise
``$XDG_CACHE_HOME/keycourier/tokens``. The AWS CLI and gh keep their cached
tokens the same way. ``--no-cache`` skips the file entirely; ``serve`` never
writes one (memory only).

Each entry is keyed by everything that decides which token we would get,
the credentials included: the name of a cache file carries an HMAC-SHA256 of
the client ID and secret under a random per-directory key
(``.credentials-key``, 0600), so a rotated or different secret never gets
the old secret's token, and a file name that leaks into a log does not let
anyone test guesses of the secret. The secret itself is never written.

Cross-process single flight: a refresh takes an exclusive ``flock`` on the
profile's lock file, then re-reads the cache before calling upstream, so N
CI steps started together make one upstream call.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

from keycourier.files import make_private_dirs, write_private
from keycourier.partner.profiles import Profile
from keycourier.partner.tokens import ClientCredentials, Token
from keycourier.redact import Secret

MAX_CACHE_FILE: Final = 64 * 1024
WAIT_NOTICE: Final = 1.0  # seconds of waiting for another process's lock before on_wait
KEY_FILE: Final = ".credentials-key"
KEY_BYTES: Final = 32


def cache_dir(env: Mapping[str, str]) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "keycourier" / "tokens"
    cache = env.get("XDG_CACHE_HOME")
    base = (
        Path(cache)
        if cache and os.path.isabs(cache)
        else Path(env.get("HOME", str(Path.home()))) / ".cache"
    )
    return base / "keycourier" / "tokens"


def credentials_mac(key: bytes, creds: ClientCredentials) -> str:
    """A keyed fingerprint of the client ID and secret (length-prefixed, domain-separated)."""
    mac = hmac.new(key, b"keycourier/token-cache/credentials/v1\x00", hashlib.sha256)
    for part in (creds.client_id.encode(), creds.client_secret.reveal().encode()):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


def profile_key(profile: Profile, credentials_fp: str) -> str:
    """Changes whenever anything that decides which token we would get changes."""
    parts = [
        profile.name,
        profile.dialect.value,
        profile.token_url,
        profile.environment.value,
        profile.version or "",
        profile.scope or "",
        profile.credentials.describe(),
        credentials_fp,
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def _read_own(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is ours and 0600-ish (no group/other bits); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # someone else's or too open: ignore it
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


class FileCache:
    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock

    def _ensure_dir(self) -> None:
        make_private_dirs(self.directory)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)

    def _mac_key(self, *, create: bool) -> bytes | None:
        path = self.directory / KEY_FILE
        key = _read_own(path, KEY_BYTES)
        if key is not None and len(key) == KEY_BYTES:
            return key
        if not create:
            return None  # absent (nothing cached yet), foreign, too open or malformed
        if key is not None:  # ours but truncated or overlong: replace it, once
            # Under a lock, re-read: a concurrent writer may have replaced it already, and
            # replacing it again would orphan the entry it has just written under it.
            with self._key_lock():
                key = _read_own(path, KEY_BYTES)
                if key is not None and len(key) != KEY_BYTES:
                    write_private(path, os.urandom(KEY_BYTES))
        else:
            # Publish atomically and never replace: a concurrent creator's key wins,
            # and a foreign or too-open file stays in place (and disables the cache).
            tmp = self.directory / f"{KEY_FILE}.{os.urandom(6).hex()}.tmp"
            write_private(tmp, os.urandom(KEY_BYTES))
            try:
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        key = _read_own(path, KEY_BYTES)
        return key if key is not None and len(key) == KEY_BYTES else None

    @contextlib.contextmanager
    def _key_lock(self) -> Iterator[None]:
        fd = os.open(
            self.directory / f"{KEY_FILE}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _key(self, profile: Profile, creds: ClientCredentials, *, create: bool) -> str | None:
        mac_key = self._mac_key(create=create)
        if mac_key is None:
            return None
        return profile_key(profile, credentials_mac(mac_key, creds))

    def _path(self, profile: Profile, key: str) -> Path:
        return self.directory / f"{profile.name}-{key}.json"

    def read(self, profile: Profile, creds: ClientCredentials) -> Token | None:
        """The cached token, or None if absent, unreadable, foreign, unsafe or for other creds."""
        key = self._key(profile, creds, create=False)
        if key is None:
            return None
        raw = _read_own(self._path(profile, key), MAX_CACHE_FILE)
        if raw is None:
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
            token = Token(
                Secret(str(doc["access_token"])),
                str(doc["token_type"]),
                int(doc["expires_in"]),
                float(doc["issued_at"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if doc.get("key") != key:
            return None
        return token

    def write(self, profile: Profile, creds: ClientCredentials, token: Token) -> None:
        self._ensure_dir()
        key = self._key(profile, creds, create=True)
        if key is None:
            raise OSError(errno.EPERM, f"unsafe {KEY_FILE} in the token cache directory")
        doc = {
            "key": key,
            "access_token": token.access_token.reveal(),
            "token_type": token.token_type,
            "expires_in": token.expires_in,
            "issued_at": token.issued_at,
        }
        write_private(self._path(profile, key), json.dumps(doc).encode())

    def clear(self, profile: Profile, creds: ClientCredentials) -> None:
        key = self._key(profile, creds, create=False)
        if key is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(profile, key).unlink()

    @contextlib.contextmanager
    def lock(
        self,
        profile: Profile,
        deadline: float | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """The profile's refresh lock. With ``deadline`` (a ``time.monotonic()`` time),
        waiting for another process that holds it ends then, with ``OSError(ETIMEDOUT)``,
        and ``on_wait`` is called once when the wait has lasted WAIT_NOTICE seconds."""
        self._ensure_dir()
        lock_path = self.directory / f"{profile.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_by(fd, deadline, on_wait)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _flock_by(fd: int, deadline: float, on_wait: Callable[[], None] | None = None) -> None:
    """``flock(LOCK_EX)`` that gives up at ``deadline``: non-blocking tries, 10-100 ms apart;
    ``on_wait()`` once the wait has lasted WAIT_NOTICE seconds."""
    pause = 0.01
    notice_at = time.monotonic() + WAIT_NOTICE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if on_wait is not None and now >= notice_at:
                on_wait()
                on_wait = None
            left = deadline - now
            if left <= 0:
                raise OSError(
                    errno.ETIMEDOUT, "another process held the token cache lock until the deadline"
                ) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)
