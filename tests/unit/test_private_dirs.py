"""Every directory keycourier creates is 0700, whatever the umask; existing ones are left alone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier.files import make_private_dirs
from keycourier.helper.clients import ClientStore
from keycourier.helper.filecache import FileCache, cache_dir
from keycourier.ledger.sqlite import SqliteLedger
from keycourier.partner.profiles import parse_profile
from keycourier.partner.tokens import ClientCredentials, Token
from keycourier.redact import Secret
from tests.support.profiles import BASE


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_missing_level_is_made_0700(tmp_path: Path, permissive_umask: None) -> None:
    target = tmp_path / "a" / "b" / "c"
    make_private_dirs(target)
    for level in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert oct(mode(level)) == oct(0o700), level
    make_private_dirs(target)  # again: nothing to do, no error
    assert oct(mode(target)) == oct(0o700)


def test_a_tighter_umask_still_gives_a_usable_0700(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would give 0500: the owner could not create files in it
    try:
        make_private_dirs(tmp_path / "d")
    finally:
        os.umask(old)
    assert oct(mode(tmp_path / "d")) == oct(0o700)


def test_existing_directories_are_left_as_they_are(tmp_path: Path, permissive_umask: None) -> None:
    mine = tmp_path / "shared"
    mine.mkdir()
    mine.chmod(0o755)
    make_private_dirs(mine / "keycourier")
    assert oct(mode(mine)) == oct(0o755)
    assert oct(mode(mine / "keycourier")) == oct(0o700)


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):  # noqa: PT011 - FileExistsError or NotADirectoryError
        make_private_dirs(tmp_path / "f" / "sub")


def test_ledger_client_store_and_token_cache_dirs(tmp_path: Path, permissive_umask: None) -> None:
    ledger_dir = tmp_path / "data" / "keycourier"
    SqliteLedger(ledger_dir / "ledger.db").close()
    assert oct(mode(tmp_path / "data")) == oct(0o700)
    assert oct(mode(ledger_dir)) == oct(0o700)

    store = ClientStore(tmp_path / "state" / "keycourier" / "helper-clients.json")
    store.add("ci", ["ci"])
    assert oct(mode(tmp_path / "state")) == oct(0o700)
    assert oct(mode(tmp_path / "state" / "keycourier")) == oct(0o700)

    runtime = tmp_path / "run"
    runtime.mkdir()
    runtime.chmod(0o755)  # the user's own directory: left alone
    directory = cache_dir({"XDG_RUNTIME_DIR": str(runtime)})
    assert directory == runtime / "keycourier" / "tokens"
    profile = parse_profile("ci", BASE, "test")
    creds = ClientCredentials(
        "client-a", Secret("secret-a-4f1c9e7b2d"), profile.credentials.describe()
    )
    token = Token(Secret("token-of-a"), "Bearer", 1800, time.time())
    FileCache(directory).write(profile, creds, token)
    assert oct(mode(runtime)) == oct(0o755)
    assert oct(mode(runtime / "keycourier")) == oct(0o700)
    assert oct(mode(directory)) == oct(0o700)


def test_cli_client_add_makes_the_data_dir_0700(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg" / "data")
    env.pop("KEYCOURIER_CONFIG", None)
    env["HOME"] = str(tmp_path)
    r = subprocess.run(
        ["/bin/sh", "-c", 'umask 022 && exec "$0" -m keycourier helper client add ci -p ci',
         sys.executable],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for level in (
        tmp_path / "xdg",
        tmp_path / "xdg" / "data",
        tmp_path / "xdg" / "data" / "keycourier",
    ):
        assert oct(mode(level)) == oct(0o700), level
