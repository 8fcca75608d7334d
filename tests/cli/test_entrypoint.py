"""The console-script entry ``run()``: a quick exit for ``age``, the normal exit elsewhere.

Each case is a real process that imports ``run`` the way the installed
``keycourier`` script does, with an ``atexit`` marker: the marker shows which
exit path was taken, and the outputs show that nothing was lost on the quick one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keycourier import age

MARK = "ATEXIT-RAN"
PROGRAM = (
    "import atexit, sys\n"
    f"atexit.register(lambda: sys.stderr.write('{MARK}\\n'))\n"
    "sys.argv = ['keycourier', *sys.argv[1:]]\n"
    "from keycourier.cli.main import run\n"
    "run()\n"
)


def entry(*args: str, stdin: bytes = b"", **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "KEYCOURIER_CONFIG": os.devnull},
    )


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    ident = age.X25519Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(ident.to_string() + "\n")
    path.chmod(0o600)
    return path, ident.recipient().to_string()


def test_age_decrypt_to_a_pipe_takes_the_quick_exit_and_loses_nothing(
    tmp_path: Path, identity: tuple[Path, str]
) -> None:
    key, recipient = identity
    # not a multiple of the chunk or of any stdio buffer size, so a final
    # partial buffer is left to flush
    plaintext = os.urandom(3 * 64 * 1024 + 12_345)
    sealed = tmp_path / "data.age"
    sealed.write_bytes(age.encrypt([age.parse_recipient(recipient)], plaintext))
    out = entry("age", "decrypt", "-i", str(key), str(sealed))
    assert out.returncode == 0, out.stderr
    assert out.stdout == plaintext
    assert MARK.encode() not in out.stderr  # os._exit: no interpreter teardown


def test_age_encrypt_armored_to_stdout_is_complete(identity: tuple[Path, str]) -> None:
    key, recipient = identity
    plaintext = b"client_secret=not-a-real-one\n" * 100
    out = entry("age", "encrypt", "-a", "-r", recipient, stdin=plaintext)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith(b"-----END AGE ENCRYPTED FILE-----")
    ident = age.parse_identities_file(key.read_text())
    assert age.decrypt(ident, out.stdout) == plaintext
    assert MARK.encode() not in out.stderr


def test_age_failures_keep_their_exit_codes_and_message(
    tmp_path: Path, identity: tuple[Path, str]
) -> None:
    key, _ = identity
    junk = tmp_path / "junk.age"
    junk.write_bytes(b"not age at all\n")
    out = entry("age", "decrypt", "-i", str(key), str(junk))
    assert out.returncode == 4
    assert out.stderr.decode().startswith("keycourier: error: not an age file")
    assert MARK.encode() not in out.stderr
    usage = entry("age", "encrypt", "--no-such-flag")
    assert usage.returncode == 2
    assert b"keycourier: error: " in usage.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),  # no command resolved
        ("policy", "show"),  # a command outside FAST_EXIT_COMMANDS
    ],
)
def test_other_commands_take_the_normal_exit(args: tuple[str, ...]) -> None:
    out = entry(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout
    assert out.stderr.decode().splitlines()[-1] == MARK  # atexit handlers ran


def test_a_closed_stdout_falls_back_to_the_normal_exit(
    tmp_path: Path, identity: tuple[Path, str]
) -> None:
    """The reader goes away early: no traceback, a non-zero exit, no hang."""
    key, recipient = identity
    plaintext = os.urandom(4 * 1024 * 1024)
    sealed = tmp_path / "big.age"
    sealed.write_bytes(age.encrypt([age.parse_recipient(recipient)], plaintext))
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, "age", "decrypt", "-i", str(key), str(sealed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert len(first) == 10
    assert code != 0
    assert b"Traceback" not in err


def test_the_exit_path_follows_the_last_command_in_a_process() -> None:
    """An earlier ``age`` command in the same process does not make a later one quick."""
    program = (
        "import atexit, sys\n"
        f"atexit.register(lambda: sys.stderr.write('{MARK}\\n'))\n"
        "from keycourier.cli.main import main, run\n"
        "try:\n"
        "    main(['age', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.argv = ['keycourier', '--version']\n"
        "run()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().splitlines()[-1] == MARK


def test_an_unexpected_error_is_exit_1_without_its_message() -> None:
    """An exception keycourier did not anticipate: exit 1, a one-line notice naming only
    its type (the message could carry a secret), a hint, and no traceback."""
    program = (
        "import sys, click\n"
        "from keycourier.cli import main as m\n"
        "@click.command()\n"
        "def boom() -> None:\n"
        "    raise ValueError('s3cret-value-in-a-message')\n"
        "m.COMMANDS['boom'] = ('__main__', 'boom', 'raise')\n"
        "sys.argv = ['keycourier', *sys.argv[1:]]\n"
        "m.run()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program, "boom"], capture_output=True, timeout=60, check=False
    )
    assert out.returncode == 1
    lines = out.stderr.decode().splitlines()
    assert lines[0] == "keycourier: error: unexpected internal error (ValueError)"
    assert lines[1].startswith("keycourier: hint: rerun with --debug")
    assert b"s3cret" not in out.stderr + out.stdout
    assert b"Traceback" not in out.stderr


def test_age_commands_do_not_import_the_network_or_database_stacks(
    tmp_path: Path, identity: tuple[Path, str]
) -> None:
    """hvac, requests, aiohttp, sqlite_utils, PyNaCl and the read-ahead thread module stay
    off the age path for small files (start-up cost)."""
    key, recipient = identity
    (tmp_path / "in.txt").write_bytes(b"x" * 200)
    program = (
        "import sys\n"
        "from keycourier.cli.main import main\n"
        "args = sys.argv[1:]\n"
        "cut = args.index('::')\n"
        "for argv in (args[:cut], args[cut + 1 :]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as done:\n"
        "        if done.code not in (0, None):\n"
        "            raise\n"
        "heavy = ('hvac', 'requests', 'aiohttp', 'sqlite_utils', 'sqlite3', 'urllib3', 'nacl')\n"
        "lazy = ('keycourier.age._readahead',)  # only for large files\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in lazy))\n"
    )
    sealed = str(tmp_path / "in.age")
    enc = ["age", "encrypt", "-r", recipient, "-o", sealed, str(tmp_path / "in.txt")]
    dec = ["age", "decrypt", "-i", str(key), "-o", str(tmp_path / "out.txt"), sealed]
    out = subprocess.run(
        [sys.executable, "-c", program, *enc, "::", *dec],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.txt").read_bytes() == b"x" * 200
    assert out.stdout.decode().splitlines()[-1] == "[]"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full")
def test_a_full_disk_under_stdout_is_a_one_line_error(
    tmp_path: Path, identity: tuple[Path, str]
) -> None:
    _, recipient = identity
    (tmp_path / "in.bin").write_bytes(os.urandom(300_000))
    with open("/dev/full", "wb") as full:
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM, "age", "encrypt", "-r", recipient, "in.bin"],
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert out.returncode == 1
    first = out.stderr.decode().splitlines()[0]
    assert first == "keycourier: error: input/output error: No space left on device"
    assert b"Traceback" not in out.stderr


def test_quick_exit_flushes_what_is_still_buffered_and_keeps_the_code() -> None:
    """Text left in stdout's and stderr's buffers reaches the pipes; atexit does not run."""
    program = (
        "import atexit, sys\n"
        f"atexit.register(lambda: sys.stderr.write('{MARK}\\\\n'))\n"
        "from keycourier.cli.outcome import quick_exit\n"
        "sys.stdout.write('partial line without a newline')\n"
        "sys.stderr.write('on stderr')\n"
        "quick_exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    assert out.returncode == 3
    assert out.stdout == b"partial line without a newline"
    assert out.stderr == b"on stderr"
