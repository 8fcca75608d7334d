"""`keycourier age` through real subprocesses: exit codes, file modes, stdin/stdout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from keycourier import age
from keycourier.redact import Secret
from tests.support import cli

WF = "4"  # scrypt work factor for tests (the CLI default is 18)


def run(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return cli.kc_bytes(
        "age", *args, env={**os.environ, **(env or {})}, cwd=cwd, stdin=stdin, timeout=60
    )


@pytest.fixture
def keyfile(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "key.txt"
    out = run("keygen", "-o", str(path))
    assert out.returncode == 0, out.stderr
    public = out.stderr.decode().strip().removeprefix("Public key: ")
    return path, public


def _one_line_error(out: subprocess.CompletedProcess[bytes]) -> str:
    lines = out.stderr.decode().splitlines()
    assert lines, "no diagnostic on stderr"
    assert lines[0].startswith("keycourier: error: ")
    assert all(line.startswith("keycourier: ") for line in lines)
    assert b"Traceback" not in out.stderr
    return lines[0]


def test_keygen_file_is_0600_with_age_keygen_comments(keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {public}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    assert public.startswith("age1")
    ident = age.parse_identities_file(path.read_text())[0]
    assert ident.recipient().to_string() == public


def test_keygen_refuses_to_overwrite(keyfile: tuple[Path, str]) -> None:
    path, _ = keyfile
    before = path.read_bytes()
    out = run("keygen", "-o", str(path))
    assert out.returncode == 2
    assert "already exists" in _one_line_error(out)
    assert path.read_bytes() == before


def test_keygen_pq_to_stdout() -> None:
    out = run("keygen", "--pq")
    assert out.returncode == 0
    text = out.stdout.decode()
    assert "\nAGE-SECRET-KEY-PQ-1" in text
    public = out.stderr.decode().strip().removeprefix("Public key: ")
    assert public.startswith("age1pq1")
    assert f"# public key: {public}\n" in text


def test_encrypt_decrypt_files_and_stdio(tmp_path: Path, keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    plain = tmp_path / "in.bin"
    plain.write_bytes(os.urandom(70_000))
    enc = tmp_path / "out.age"
    assert run("encrypt", "-r", public, "-o", str(enc), str(plain)).returncode == 0
    assert enc.read_bytes().startswith(b"age-encryption.org/v1\n")
    dec = run("decrypt", "-i", str(path), str(enc))
    assert dec.returncode == 0
    assert dec.stdout == plain.read_bytes()
    # stdin to stdout, armored, recipients file
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# me\n{public}\n")
    armored = run("encrypt", "-R", str(rfile), "-a", stdin=b"piped secret")
    assert armored.returncode == 0
    assert armored.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    back = run("decrypt", "-i", str(path), "-", stdin=armored.stdout)
    assert (back.returncode, back.stdout) == (0, b"piped secret")


def test_decrypt_output_is_0600_and_atomic(tmp_path: Path, keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    data = age.encrypt([age.parse_recipient(public)], b"x" * 200_000)
    enc = tmp_path / "f.age"
    enc.write_bytes(data)
    out = tmp_path / "plain.txt"
    assert run("decrypt", "-i", str(path), "-o", str(out), str(enc)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes() == b"x" * 200_000


@pytest.mark.parametrize("cut", [1, 100, 70_000])
def test_failed_decrypt_leaves_no_output(
    tmp_path: Path, keyfile: tuple[Path, str], cut: int
) -> None:
    path, public = keyfile
    data = age.encrypt([age.parse_recipient(public)], b"y" * 200_000)
    enc = tmp_path / "f.age"
    enc.write_bytes(data[:-cut])
    out = tmp_path / "plain.txt"
    res = run("decrypt", "-i", str(path), "-o", str(out), str(enc))
    assert res.returncode == 4
    _one_line_error(res)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".plain")] == []


def test_failed_decrypt_keeps_an_existing_output_untouched(
    tmp_path: Path, keyfile: tuple[Path, str]
) -> None:
    path, _ = keyfile
    other = age.X25519Identity.generate().recipient()
    enc = tmp_path / "f.age"
    enc.write_bytes(age.encrypt([other], b"not for you"))
    out = tmp_path / "plain.txt"
    out.write_bytes(b"previous")
    res = run("decrypt", "-i", str(path), "-o", str(out), str(enc))
    assert res.returncode == 4
    assert "no identity matched" in _one_line_error(res)
    assert out.read_bytes() == b"previous"


def test_tampered_file_exits_4(tmp_path: Path, keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    data = bytearray(age.encrypt([age.parse_recipient(public)], b"secret"))
    data[-5] ^= 1
    res = run("decrypt", "-i", str(path), stdin=bytes(data))
    assert res.returncode == 4
    assert res.stdout == b""
    _one_line_error(res)


def test_usage_errors_exit_2(tmp_path: Path, keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    for args in (
        ["encrypt"],
        ["encrypt", "-r", "age1notakey"],
        ["encrypt", "-r", public, "--passphrase-file", str(path)],
        ["encrypt", "-R", str(tmp_path / "missing.txt")],
        ["decrypt", "-i", str(tmp_path / "missing.txt")],
        ["encrypt", "-r", public, str(tmp_path / "missing-input")],
        ["decrypt", "--bogus-flag"],
    ):
        res = run(*args)
        assert res.returncode == 2, (args, res.stderr)
        _one_line_error(res)


def test_bad_identity_file_does_not_echo_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    secret_like = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    bad.write_text(secret_like + "\n")
    res = run("decrypt", "-i", str(bad), stdin=b"age-encryption.org/v1\n")
    assert res.returncode == 2
    assert secret_like[16:40].encode() not in res.stderr


def test_passphrase_file_and_env(tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_text("correct horse battery staple\n")
    src = tmp_path / "in.txt"
    src.write_bytes(b"passphrase protected")
    enc = tmp_path / "f.age"
    res = run(
        "encrypt", "--passphrase-file", str(pw), "--work-factor", WF, "-o", str(enc), str(src)
    )
    assert res.returncode == 0, res.stderr
    assert b"-> scrypt " in enc.read_bytes()
    dec = run("decrypt", "--passphrase-file", str(pw), str(enc))
    assert (dec.returncode, dec.stdout) == (0, b"passphrase protected")
    env = {"KEYCOURIER_PASSPHRASE": "correct horse battery staple"}
    assert run("decrypt", str(enc), env=env).stdout == b"passphrase protected"
    # --passphrase-file - with the input on a file: the passphrase comes from stdin
    dec2 = run(
        "decrypt", "--passphrase-file", "-", str(enc), stdin=b"correct horse battery staple\n"
    )
    assert (dec2.returncode, dec2.stdout) == (0, b"passphrase protected")
    wrong = run("decrypt", str(enc), env={"KEYCOURIER_PASSPHRASE": "wrong"})
    assert wrong.returncode == 4
    assert wrong.stdout == b""


def test_passphrase_from_stdin_refused_when_input_is_stdin(tmp_path: Path) -> None:
    res = run("encrypt", "--passphrase-file", "-", "--work-factor", WF, stdin=b"pw\nplaintext")
    assert res.returncode == 2
    assert "stdin" in _one_line_error(res)
    res = run("decrypt", "--passphrase-file", "-", stdin=b"pw\n")
    assert res.returncode == 2


def test_no_passphrase_source_is_a_usage_error(tmp_path: Path) -> None:
    enc = tmp_path / "f.age"
    enc.write_bytes(b"age-encryption.org/v1\n")
    res = run("decrypt", str(enc))
    assert res.returncode == 2
    assert "no passphrase" in _one_line_error(res)


def test_binary_ciphertext_to_a_terminal_is_refused(tmp_path: Path) -> None:
    """Run under a pseudo-terminal so stdout really is a tty."""
    pub = age.X25519Identity.generate().recipient().to_string()
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello")
    code = (
        "import os, pty, sys\n"
        "pid, fd = pty.fork()\n"
        "if pid == 0:\n"
        f"    os.execv(sys.executable, [sys.executable, '-m', 'keycourier', 'age', 'encrypt',"
        f" '-r', {pub!r}] + sys.argv[1:] + [{str(src)!r}])\n"
        "out = b''\n"
        "while True:\n"
        "    try:\n"
        "        chunk = os.read(fd, 4096)\n"
        "    except OSError:\n"
        "        break\n"
        "    if not chunk:\n"
        "        break\n"
        "    out += chunk\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.stdout.buffer.write(out)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    refused = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert b"refusing to write binary ciphertext to a terminal" in refused.stdout
    armored = subprocess.run(
        [sys.executable, "-c", code, "-a"], capture_output=True, timeout=60, check=False
    )
    assert armored.returncode == 0
    assert b"-----BEGIN AGE ENCRYPTED FILE-----" in armored.stdout


def test_help_has_examples() -> None:
    for cmd in ("keygen", "encrypt", "decrypt"):
        res = run(cmd, "--help")
        assert res.returncode == 0
        assert b"Example:" in res.stdout
        assert b"keycourier age " + cmd.encode() in res.stdout


def test_passphrase_prompt_on_a_terminal_is_hidden_and_confirmed(tmp_path: Path) -> None:
    """No passphrase file and no KEYCOURIER_PASSPHRASE: encrypt asks twice on the
    terminal without echoing, decrypt asks once; a mismatch is refused."""
    from tests.support.pty_run import run_on_terminal

    (tmp_path / "in.txt").write_bytes(b"credentials\n")
    env = {"KEYCOURIER_PASSPHRASE": ""}
    words = "tty passphrase 4 tests"
    enc = run_on_terminal(
        ["age", "encrypt", "-p", "--work-factor", WF, "-o", "out.age", "in.txt"],
        cwd=tmp_path,
        answers=[("passphrase: ", words), ("confirmation: ", words)],
        env=env,
    )
    assert enc.code == 0, enc.screen
    assert enc.unanswered == 0
    assert words not in enc.screen  # typed with echo off
    dec = run_on_terminal(
        ["age", "decrypt", "-o", "out.txt", "out.age"],
        cwd=tmp_path,
        answers=[("passphrase: ", words)],
        env=env,
    )
    assert dec.code == 0, dec.screen
    assert words not in dec.screen
    assert (tmp_path / "out.txt").read_bytes() == b"credentials\n"
    mismatch = run_on_terminal(
        ["age", "encrypt", "-p", "--work-factor", WF, "-o", "other.age", "in.txt"],
        cwd=tmp_path,
        answers=[
            ("passphrase: ", words),
            ("confirmation: ", words + "x"),  # a typo: asked again
            ("passphrase: ", words),
            ("confirmation: ", words),
        ],
        env=env,
        timeout=20,
    )
    assert mismatch.code == 0, mismatch.screen
    assert mismatch.unanswered == 0
    assert "do not match" in mismatch.screen
    assert (
        age.decrypt([age.ScryptIdentity(Secret(words))], (tmp_path / "other.age").read_bytes())
        == b"credentials\n"
    )


def test_large_files_decrypt_whole_and_fail_cleanly(
    tmp_path: Path, keyfile: tuple[Path, str]
) -> None:
    """A file past the read-ahead threshold (16 MiB; that read-ahead is chosen for it is
    tested in tests/unit/age/test_read_ahead.py) decrypts whole from a path and from stdin
    redirected from the file; a chunk changed in the third 4 MiB block is exit 4 with no
    output left behind."""
    import hashlib
    import io

    path, public = keyfile
    size = 20 * 1024 * 1024 + 12345
    plaintext = os.urandom(size)
    enc = tmp_path / "big.age"
    with open(enc, "wb") as dst:
        age.encrypt_stream([age.parse_recipient(public)], io.BytesIO(plaintext), dst)
    out = tmp_path / "plain.bin"
    res = run("decrypt", "-i", str(path), "-o", str(out), str(enc))
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(plaintext).digest()
    with open(enc, "rb") as stdin:
        piped = subprocess.run(
            [sys.executable, "-m", "keycourier", "age", "decrypt", "-i", str(path)],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert piped.returncode == 0, piped.stderr
    assert hashlib.sha256(piped.stdout).digest() == hashlib.sha256(plaintext).digest()

    data = bytearray(enc.read_bytes())
    data[len(data) - size + 9 * 1024 * 1024] ^= 0x40
    enc.write_bytes(bytes(data))
    bad_out = tmp_path / "bad.bin"
    res = run("decrypt", "-i", str(path), "-o", str(bad_out), str(enc))
    assert res.returncode == 4
    assert "changed" in _one_line_error(res)
    assert not bad_out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")] == []


def test_output_to_a_fifo_or_a_device_is_written_in_place(
    tmp_path: Path, keyfile: tuple[Path, str]
) -> None:
    """-o onto a named pipe, or a symlink to /dev/null, writes through it instead of
    renaming a temp file over it (which replaced /dev/null itself when run as root)."""
    import threading

    path, public = keyfile
    enc = tmp_path / "f.age"
    enc.write_bytes(age.encrypt([age.parse_recipient(public)], b"to the pipe"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def drain() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    res = run("decrypt", "-i", str(path), "-o", str(fifo), str(enc))
    reader.join(10)
    assert res.returncode == 0, res.stderr
    assert got == [b"to the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    for args in (["decrypt", "-i", str(path)], ["encrypt", "-r", public]):
        source = enc if args[0] == "decrypt" else tmp_path / "f.age"
        res = run(*args, "-o", str(null), str(source))
        assert res.returncode == 0, res.stderr
        assert null.is_symlink()
        assert stat.S_ISCHR(os.stat(null).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
