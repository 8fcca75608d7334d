from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from keycourier import files
from keycourier.errors import ConfigError, UsageError


def test_writes_0600_atomically_and_replaces(tmp_path: Path) -> None:
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "creds.json"
    target.write_text("old")
    target.chmod(0o644)
    files.write_private(target, b"new secret")
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.json"]


def test_fallback_path_without_o_tmpfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "x"
    files.write_private(target, b"data")
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_failed_write_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "x"
    with pytest.raises(FileNotFoundError):
        files.write_private(target, b"data")
    assert not target.exists()


def test_o_tmpfile_path_is_the_one_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard: on Linux the unnamed-file path must work (a silent fallback would hide a bug)."""
    calls: list[str] = []
    real = files._write_named_temp

    def spy(*args: object) -> None:
        calls.append("fallback")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "_write_named_temp", spy)
    files.write_private(tmp_path / "y", b"data")
    assert (tmp_path / "y").read_bytes() == b"data"
    assert calls == []


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_fifo_or_a_device_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    """write_private renames a new file over its target; over /dev/null that replaced the
    device node with a regular file (as root, for the whole machine: it happened here).
    A FIFO, and a symlink to /dev/null (so that a regression cannot damage the real one),
    must be written through and stay what they are."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    files.write_private(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    files.write_private(null, b"discarded")
    assert null.is_symlink()
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_fifo_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can plant a FIFO where a secret is about to be written: refuse it."""
    from keycourier.errors import UsageError

    fifo = tmp_path / "planted"
    os.mkfifo(fifo, 0o666)
    if os.geteuid() == 0:
        os.chown(fifo, 65534, 65534)  # nobody
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    # No reader: the check is made before opening it for writing, so it cannot block
    # (run on a thread so that a regression that blocks fails instead of hanging).
    raised: list[BaseException] = []

    def attempt() -> None:
        try:
            files.write_private(fifo, b"client_secret=do-not-leak")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    writer = threading.Thread(target=attempt, daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "write_private blocked on a FIFO with no reader"
    assert len(raised) == 1
    assert isinstance(raised[0], UsageError)
    assert "a named pipe owned by another user" in str(raised[0])
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_own_stdout_by_name_is_written_through_and_appends(tmp_path: Path) -> None:
    """-o /dev/stdout with stdout redirected to a file (here a symlink to /proc/self/fd/1,
    so that a regression cannot replace the machine's /dev/stdout): the data goes to the
    redirect (appended under >>), and the name stays a symlink."""
    import subprocess
    import sys

    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    out = tmp_path / "out.txt"
    out.write_bytes(b"head\n")
    with open(out, "ab") as redirect:
        done = subprocess.run(
            [sys.executable, "-c", f"from keycourier import files; "
             f"files.write_private({str(link)!r}, b'body\\n')"],
            stdout=redirect, capture_output=False, stderr=subprocess.PIPE, timeout=60,
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"head\nbody\n"
    assert link.is_symlink()


def test_a_symlink_to_a_regular_file_is_replaced_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    link = tmp_path / "creds.json"
    link.symlink_to(victim)
    files.write_private(link, b"secret")
    assert victim.read_bytes() == b"keep me"
    assert not link.is_symlink()
    assert link.read_bytes() == b"secret"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600


def test_a_write_in_place_that_fails_part_way_says_so() -> None:
    import fcntl
    import time

    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: one page

        def close_reader() -> None:
            time.sleep(0.3)
            os.close(read_end)

        closer = threading.Thread(target=close_reader)
        closer.start()
        with pytest.raises(files.PartialWriteError, match="after 4096 of 10000 bytes"):
            files.write_all(write_end, b"x" * 10_000)
        closer.join()
        with pytest.raises(BrokenPipeError) as whole:  # nothing went out: a plain error
            files.write_all(write_end, b"y")
        assert not isinstance(whole.value, files.PartialWriteError)
    finally:
        os.close(write_end)


def test_write_release_keeps_the_event_when_part_went_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a write that released nothing may be voided by release_aborted."""
    from datetime import UTC, datetime

    from keycourier import config
    from keycourier.cli.record import record_event, write_release
    from keycourier.ledger.interface import Event, EventType
    from keycourier.ledger.recorder import open_recorder

    settings = config.load(ledger_path=tmp_path / "l.db", env={"HOME": str(tmp_path)})
    event = Event(type=EventType.SEALED, at=datetime.now(UTC), actor="kc1:" + "a" * 32,
                  bundle_id="b" * 8, fingerprint="kc1:" + "f" * 32)  # fmt: skip
    outcome = record_event(settings, event)

    def partial(path: object, data: bytes) -> None:
        raise files.PartialWriteError(32, "Broken pipe after 10 of 20 bytes")

    monkeypatch.setattr(files, "write_private", partial)
    with pytest.raises(files.PartialWriteError):
        write_release(settings, event, outcome, str(tmp_path / "x"), b"data")

    def nothing(path: object, data: bytes) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(files, "write_private", nothing)
    with pytest.raises(Exception, match="nothing was released"):
        write_release(settings, event, outcome, str(tmp_path / "x"), b"data")

    def refused(path: object, data: bytes) -> None:  # e.g. a planted FIFO
        from keycourier.errors import UsageError

        raise UsageError("refusing to write to x: a named pipe owned by another user")

    monkeypatch.setattr(files, "write_private", refused)
    with pytest.raises(Exception, match="owned by another user; nothing was released"):
        write_release(settings, event, outcome, str(tmp_path / "x"), b"data")
    with open_recorder(settings) as recorder:
        kinds = [str(e.event.type) for e in recorder.history(bundle_id="b" * 8)]
    assert kinds == ["sealed", "release_aborted", "release_aborted"]


def _in_subprocess(code: str, **kwargs: object) -> None:
    import subprocess
    import sys

    options: dict[str, object] = {"stderr": subprocess.PIPE, **kwargs}
    done = subprocess.run(
        [sys.executable, "-c", code], timeout=60, check=False,
        **options,  # type: ignore[call-overload]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_closed_stdout_is_not_mistaken_for_the_target(tmp_path: Path) -> None:
    """With fd 1 (or 2) closed, opening the target reuses that number: it must not count as
    'our own stdout' and be written in place through a symlink."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"AAAAAAAAAAAA-old")
    victim.chmod(0o644)
    link = tmp_path / "out"
    link.symlink_to(victim)
    for fd in (1, 2):
        code = (
            f"import os; os.close({fd}); from keycourier import files; "
            f"files.write_private({str(link)!r}, b'secret')"
        )
        _in_subprocess(code)
        assert victim.read_bytes() == b"AAAAAAAAAAAA-old"
        assert not link.is_symlink()
        assert link.read_bytes() == b"secret"
        assert stat.S_IMODE(link.stat().st_mode) == 0o600
        link.unlink()
        link.symlink_to(victim)


def test_own_stdout_as_a_socket_and_other_special_files(tmp_path: Path) -> None:
    """-o naming our own stdout writes to it whatever it is (here a socket, as under
    systemd); a socket or other node that is not ours is refused, never renamed over."""
    import socket

    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        _in_subprocess(
            f"from keycourier import files; files.write_private({str(link)!r}, b'to the socket')",
            stdout=ours,
        )
        theirs.settimeout(10)
        assert theirs.recv(100) == b"to the socket"
    assert link.is_symlink()

    _assert_socket_node_refused(tmp_path / "sock")


def test_a_device_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a planted FIFO, a character device someone else owns (their pty, say) is
    refused; /dev/null and our own terminal are fine."""
    from keycourier.errors import UsageError

    if os.geteuid() == 0:
        device = tmp_path / "their-tty"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a null device
        os.chown(device, 65534, 65534)
    else:
        _, replica = os.openpty()
        device = Path(os.ttyname(replica))
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    link = tmp_path / "out"
    link.symlink_to(device)
    with pytest.raises(UsageError, match="a device owned by another user"):
        files.write_private(link, b"secret")
    assert link.is_symlink()


def test_a_plain_name_for_our_stderr_file_is_still_written_atomically(tmp_path: Path) -> None:
    """Only a link (/dev/stderr, /proc/self/fd/2) to our stderr file means 'write to it';
    a plain name of the same file (a hard link, or the log itself) gets a new 0600 file."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"log line\n")
    other_name = tmp_path / "hard"
    os.link(log, other_name)
    with open(log, "ab") as stderr:
        _in_subprocess(
            f"from keycourier import files; files.write_private({str(other_name)!r}, b's')",
            stderr=stderr,
        )
    assert log.read_bytes() == b"log line\n"
    assert other_name.read_bytes() == b"s"
    assert stat.S_IMODE(other_name.stat().st_mode) == 0o600


def test_without_proc_or_o_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc: the device is reopened by name (and must be the same inode). No O_PATH
    (the probe cannot open a socket): a socket is still refused, not renamed over."""

    real_open = os.open

    def no_proc(path: object, flags: int, *args: int) -> int:
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    monkeypatch.setattr(os, "open", no_proc)
    files.write_private(null, b"discarded")
    assert null.is_symlink()
    monkeypatch.setattr(os, "open", real_open)

    monkeypatch.setattr(files, "_PROBE_FLAGS", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    _assert_socket_node_refused(tmp_path / "sock")


def _assert_socket_node_refused(node: Path) -> None:
    import socket

    from keycourier.errors import UsageError

    server = socket.socket(socket.AF_UNIX)
    with server:
        server.bind(str(node))
        with pytest.raises(UsageError, match="not a regular file, a character device or a pipe"):
            files.write_private(node, b"secret")
    assert stat.S_ISSOCK(os.stat(node).st_mode)


def test_read_limited_reads_a_path_or_a_stream_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert files.read_limited(path, "the file", 10) == b"x" * 10
    assert files.read_limited(str(path), "the file", 10) == b"x" * 10
    with path.open("rb") as fh:
        assert files.read_limited(fh, "the file", 10) == b"x" * 10


def test_read_limited_refuses_one_byte_more_with_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    with pytest.raises(UsageError, match=r"^the file is larger than 10 bytes$"):
        files.read_limited(path, "the file", 10)
    with pytest.raises(ConfigError, match="larger than 10 bytes"):
        files.read_limited(path, "the file", 10, error=ConfigError)


def test_read_limited_can_hand_an_oversized_head_to_a_parser(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    assert files.read_limited(path, "the file", 10, refuse_larger=False) == b"x" * 11


def test_read_limited_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read the key .*: No such file or directory$"):
        files.read_limited(tmp_path / "missing", "the key k", 10, error=ConfigError)
    with pytest.raises(UsageError, match="Is a directory"):
        files.read_limited(tmp_path, "the file", 10)
