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

Cross-process single flight: a refresh takes an exclusive ``flock`` on the
profile's lock file, then re-reads the cache before calling upstream, so N
CI steps started together make one upstream call.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

from keycourier.files import write_private
from keycourier.helper.profiles import Profile
from keycourier.partner.tokens import Token
from keycourier.redact import Secret

MAX_CACHE_FILE: Final = 64 * 1024


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


def profile_key(profile: Profile) -> str:
    """Changes whenever anything that decides which token we would get changes."""
    parts = [
        profile.name,
        profile.dialect.value,
        profile.token_url,
        profile.environment.value,
        profile.version or "",
        profile.scope or "",
        profile.credentials.describe(),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


class FileCache:
    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)

    def _path(self, profile: Profile) -> Path:
        return self.directory / f"{profile.name}-{profile_key(profile)}.json"

    def read(self, profile: Profile) -> Token | None:
        """The cached token, or None if absent, unreadable, foreign or unsafe."""
        path = self._path(profile)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None  # someone else's or too open: ignore it
            raw = os.read(fd, MAX_CACHE_FILE + 1)
        finally:
            os.close(fd)
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
        if doc.get("key") != profile_key(profile):
            return None
        return token

    def write(self, profile: Profile, token: Token) -> None:
        self._ensure_dir()
        doc = {
            "key": profile_key(profile),
            "access_token": token.access_token.reveal(),
            "token_type": token.token_type,
            "expires_in": token.expires_in,
            "issued_at": token.issued_at,
        }
        write_private(self._path(profile), json.dumps(doc).encode())

    def clear(self, profile: Profile) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(profile).unlink()

    @contextlib.contextmanager
    def lock(self, profile: Profile) -> Iterator[None]:
        self._ensure_dir()
        lock_path = self.directory / f"{profile.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
