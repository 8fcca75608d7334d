"""keycourier processes leave no core file and (Linux) are not dumpable.

Real subprocesses: ``keycourier serve`` against the platform stand-in, ``exec``,
and ``age encrypt`` on both the fast path and click's, each blocked reading
stdin while its /proc entries are read.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier import age
from tests.support.helper_server import (
    base_env,
    kc,
    start_helper,
)
from tests.support.platform_standin import RunningStandin

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux)"
)  # fmt: skip


def core_limit(limits_text: str) -> tuple[str, str]:
    """(soft, hard) of "Max core file size" in a /proc/PID/limits text."""
    for line in limits_text.splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError("no core file size line")


@pytest.fixture(autouse=True)
def core_files_allowed() -> Iterator[None]:
    """Children start with core files allowed (the soft limit raised to the hard one), so a
    limit of 0 in them is keycourier's doing, not the environment's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("core files are forbidden here (hard RLIMIT_CORE 0): nothing to show")
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def test_serve_has_no_core_limit_and_exec_passes_it_on(
    tmp_path: Path, standin: RunningStandin
) -> None:
    env = base_env(tmp_path, standin)
    helper = start_helper(env, tmp_path)
    try:
        limits = Path(f"/proc/{helper.proc.pid}/limits").read_text()
        assert core_limit(limits)[0] == "0"
    finally:
        helper.stop()
    r = kc(env, "exec", "--profile", "ci", "--", "cat", "/proc/self/limits")
    assert r.returncode == 0, r.stderr
    assert core_limit(r.stdout)[0] == "0"  # the command inherits the soft limit


def test_serve_workers_are_not_dumpable(tmp_path: Path, standin: RunningStandin) -> None:
    """Workers are exec'd by the supervisor, which resets the dumpable flag: they forbid it
    again before they touch a token."""
    env = base_env(tmp_path, standin)
    helper = start_helper(env, tmp_path, "--listen", "127.0.0.1:0", "--workers", "2")
    try:
        pid = helper.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 2
        for child in children:
            assert core_limit(Path(f"/proc/{child}/limits").read_text())[0] == "0"
            assert not environ_readable(int(child))
        assert not environ_readable(pid)
    finally:
        helper.stop()


PR_CAPBSET_DROP = 24


def _without_capabilities() -> None:
    """preexec_fn: empty the bounding set, so the program exec'd has no capability, root or not.

    The kernel lets a process read another's /proc/PID/environ when they share a uid, the
    reader's capabilities cover the target's, and the target is dumpable (or the reader has
    CAP_SYS_PTRACE). With no capability on either side, the read tells whether the target
    is dumpable.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails harmlessly where not allowed


PROBE = """
import sys
try:
    open(f"/proc/{sys.argv[1]}/environ", "rb").read()
except PermissionError:
    sys.exit(1)
"""


def environ_readable(pid: int) -> bool:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(pid)],
        preexec_fn=_without_capabilities,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def test_the_probe_reads_a_dumpable_process() -> None:
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=_without_capabilities)
    try:
        time.sleep(0.2)
        assert environ_readable(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["age", "encrypt", "-r", "{r}"],  # the fast path (no click)
        ["age", "encrypt", "--recipient={r}"],  # --opt=value: click's path
    ],
)
def test_a_command_holding_a_secret_is_not_dumpable(argv: list[str]) -> None:
    recipient = age.X25519Identity.generate().recipient().to_string()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", *(a.format(r=recipient) for a in argv)],
        stdin=subprocess.PIPE,  # kept open: the command waits for its input
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_without_capabilities,
    )
    try:
        deadline = time.monotonic() + 30
        readable, limit = True, ""
        while time.monotonic() < deadline and proc.poll() is None:
            limit = core_limit(Path(f"/proc/{proc.pid}/limits").read_text())[0]
            readable = environ_readable(proc.pid)
            if limit == "0" and not readable:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the command ended early"
        assert limit == "0"
        assert not readable, "another process of the same user could read its memory"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
