"""One of several processes refreshing the same profile's entry in shared token caches.

Run as ``python -m tests.reliability.token_cache_writer DIRS WORKER WRITERS ROUNDS START``:
waits until the file START exists, then in each cache directory of DIRS
(``os.pathsep``-separated), once all WRITERS are there, ROUNDS times writes a new token
``tok-WORKER-I`` and reads the entry back. Prints one line per round: the token read
(``None`` if none was).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from keycourier.helper.filecache import FileCache
from keycourier.partner.profiles import parse_profile
from keycourier.partner.tokens import ClientCredentials, Token
from keycourier.redact import Secret

BASE = {
    "dialect": "monite",
    "base_url": "https://api.sandbox.monite.com/v1",
    "environment": "sandbox",
    "version": "2024-05-25",
    "client_id_env": "MONITE_CLIENT_ID",
    "client_secret_env": "MONITE_CLIENT_SECRET",
}
PROFILE = parse_profile("ci", BASE, "test")
CREDS = ClientCredentials("client-a", Secret("secret-a-4f1c9e7b2d"), PROFILE.credentials.describe())


def _all_ready(directory: Path, worker: str, writers: int) -> None:
    """A barrier: so that every writer starts on this directory at the same moment."""
    Path(f"{directory}.ready-{worker}").touch()
    deadline = time.monotonic() + 60
    while len(list(directory.parent.glob(f"{directory.name}.ready-*"))) < writers:
        if time.monotonic() > deadline:
            raise SystemExit("the other writers never came")
        time.sleep(0.001)


def main() -> None:
    directories, worker, writers, rounds, start = sys.argv[1:6]
    deadline = time.monotonic() + 60
    while not Path(start).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the start signal never came")
        time.sleep(0.002)
    for directory in directories.split(os.pathsep):
        cache = FileCache(Path(directory))
        _all_ready(Path(directory), worker, int(writers))
        for i in range(int(rounds)):
            token = Token(Secret(f"tok-{worker}-{i}"), "Bearer", 1800, time.time())
            cache.write(PROFILE, CREDS, token)
            got = cache.read(PROFILE, CREDS)
            sys.stdout.write(f"{None if got is None else got.access_token.reveal()}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
