"""Go's reference transparency-log code as a verifier for keycourier's output.

``tests/support/go/tlogcheck`` is built offline against Debian's
``golang-golang-x-mod-dev`` (``GO111MODULE=off GOPATH=/usr/share/gocode``);
``./scripts/test`` installs both packages. A missing toolchain fails the tests
that need it: they are the only independent check of the log's formats.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "go" / "tlogcheck" / "main.go"
GOPATH = Path("/usr/share/gocode")


@dataclass(frozen=True)
class GoResult:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class TlogCheck:
    binary: Path

    def run(self, request: Mapping[str, object]) -> GoResult:
        proc = subprocess.run(
            [str(self.binary)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return GoResult(proc.returncode, proc.stdout, proc.stderr)


def build_tlogcheck(workdir: Path) -> TlogCheck:
    go = shutil.which("go")
    if go is None or not (GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb").is_dir():
        pytest.fail(
            "Go and golang.org/x/mod are not installed: ./scripts/test installs Debian's "
            "golang-go and golang-golang-x-mod-dev"
        )
    binary = workdir / "tlogcheck"
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOCACHE=str(workdir / "gocache"))
    proc = subprocess.run(
        [go, "build", "-o", str(binary), str(SOURCE)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"go build failed: {proc.stderr}"
    return TlogCheck(binary)
