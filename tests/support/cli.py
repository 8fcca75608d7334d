"""The one way tests run the ``keycourier`` command line: a real subprocess.

``kc`` returns text output, ``kc_bytes`` bytes (for bundles and other binary output). Both
run ``python -m keycourier`` with this interpreter (or ``program``), never raise for a
non-zero exit (tests assert on ``returncode``), and time out. Test modules wrap them with
their own defaults (a passphrase, a ledger, a Vault environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

KEYCOURIER = [sys.executable, "-m", "keycourier"]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "keycourier")


def _run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    cwd: Path | str | None,
    stdin: bytes | str | None,
    timeout: float,
    program: Sequence[str] | None,
    text: bool,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*(program or KEYCOURIER), *args],
        env=dict(os.environ if env is None else env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
    )


def kc(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin: str | None = None,
    timeout: float = 120,
    program: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``keycourier ARGS`` with text output; ``env`` replaces the environment when given."""
    out = _run(args, env=env, cwd=cwd, stdin=stdin, timeout=timeout, program=program, text=True)
    assert isinstance(out.stdout, str)
    return out


def kc_bytes(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin: bytes = b"",
    timeout: float = 120,
    program: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``keycourier ARGS`` with bytes output (and input)."""
    out = _run(args, env=env, cwd=cwd, stdin=stdin, timeout=timeout, program=program, text=False)
    assert isinstance(out.stdout, bytes)
    return out
