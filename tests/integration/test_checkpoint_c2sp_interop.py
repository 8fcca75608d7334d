"""An exported checkpoint is a C2SP signed note: Go's golang.org/x/mod/sumdb/note verifies it.

The Go verifier is built from Debian's golang-go and golang-golang-x-mod-dev (GOPATH mode,
offline). It unwraps the 64-column signature line and opens the note with the verifier key
that `keycourier audit key` prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOPATH = Path("/usr/share/gocode")
VERIFIER = r"""
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	text := string(raw)
	i := strings.Index(text, "\n\n")
	body, sig := text[:i+1], text[i+2:]
	lines := strings.Split(strings.TrimRight(sig, "\n"), "\n")
	msg := body + "\n" + lines[0] + " " + strings.Join(lines[1:], "") + "\n"
	v, err := note.NewVerifier(os.Args[2])
	if err != nil {
		fmt.Println("verifier key:", err)
		os.Exit(2)
	}
	n, err := note.Open([]byte(msg), note.VerifierList(v))
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	fmt.Print(n.Text)
}
"""


@pytest.fixture(scope="module")
def go_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None or not (GOPATH / "src/golang.org/x/mod/sumdb/note").is_dir():
        pytest.skip("needs Debian's golang-go and golang-golang-x-mod-dev")
    src = tmp_path_factory.mktemp("gonote")
    (src / "main.go").write_text(VERIFIER)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": ""}
    env.setdefault("GOCACHE", str(tmp_path_factory.getbasetemp() / "gocache"))
    subprocess.run(
        [go, "build", "-o", str(src / "verify"), "."],
        cwd=src,
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    return src / "verify"


def kc(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCOURIER_LEDGER": str(tmp / "ledger.db"), "HOME": str(tmp)}
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "keycourier", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_go_note_open_verifies_an_exported_checkpoint(go_verifier: Path, tmp_path: Path) -> None:
    for bid in ("kcb-1", "kcb-2"):
        assert kc(tmp_path, "revoke", bid, "--reason", "r").returncode == 0
    assert kc(tmp_path, "audit", "checkpoint", "-o", "cp").returncode == 0
    vkey = kc(tmp_path, "audit", "key").stdout.strip()
    ok = subprocess.run(
        [str(go_verifier), str(tmp_path / "cp"), vkey],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout
    origin, count, _ = ok.stdout.splitlines()
    assert origin.startswith("keycourier/ledger-v1/")
    assert count == "2"
    forged = (tmp_path / "cp").read_text().replace("\n2\n", "\n1\n", 1)
    (tmp_path / "forged").write_text(forged)
    bad = subprocess.run(
        [str(go_verifier), str(tmp_path / "forged"), vkey],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "invalid signature" in bad.stdout
