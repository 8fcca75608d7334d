"""Interop both ways with Debian's `age` (1.1.1) and PyPI's `pyrage` (rage).

Debian's age 1.1.1 has no post-quantum keys and reads passphrases only from
a terminal, so its passphrase cases go through pyrage instead. pyrage's
passphrase encryption picks its own scrypt work factor (about a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from keycourier import age
from keycourier.redact import Secret

AGE = shutil.which("age") or "/usr/bin/age"
needs_age = pytest.mark.skipif(not os.path.exists(AGE), reason="Debian's age is not installed")

SIZES = [0, 200, 65536, 65537, 200_000]


def _age(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([AGE, *args], input=stdin, capture_output=True, timeout=60, check=False)


def _keycourier(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "keycourier", "age", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _identity_file(tmp_path: Path, idents: list[age.X25519Identity], name: str = "ids") -> Path:
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"# key\n{i.to_string()}\n" for i in idents))
    return path


# -- keycourier -> age -------------------------------------------------------------


@needs_age
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("armor", [False, True])
def test_age_decrypts_keycourier(tmp_path: Path, size: int, armor: bool) -> None:
    idents = [age.X25519Identity.generate() for _ in range(3)]
    plaintext = os.urandom(size)
    data = age.encrypt([i.recipient() for i in idents], plaintext, armor=armor)
    src = tmp_path / "f.age"
    src.write_bytes(data)
    for ident in idents:
        res = _age("-d", "-i", str(_identity_file(tmp_path, [ident])), str(src))
        assert res.returncode == 0, res.stderr
        assert res.stdout == plaintext


@needs_age
def test_age_decrypts_keycourier_cli_output_and_rejects_tampering(tmp_path: Path) -> None:
    ident = age.X25519Identity.generate()
    keys = _identity_file(tmp_path, [ident])
    enc = _keycourier("encrypt", "-r", ident.recipient().to_string(), "-a", stdin=b"cli secret")
    assert enc.returncode == 0
    assert _age("-d", "-i", str(keys), stdin=enc.stdout).stdout == b"cli secret"
    binary = age.encrypt([ident.recipient()], b"cli secret")
    tampered = binary[:-1] + bytes([binary[-1] ^ 1])
    assert _age("-d", "-i", str(keys), stdin=tampered).returncode != 0


@needs_age
def test_age_reads_keycourier_keygen_files(tmp_path: Path) -> None:
    key = tmp_path / "k.txt"
    gen = _keycourier("keygen", "-o", str(key))
    assert gen.returncode == 0
    public = gen.stderr.decode().strip().removeprefix("Public key: ")
    # age derives the same recipient from our identity file
    converted = subprocess.run(
        ["age-keygen", "-y", str(key)], capture_output=True, timeout=60, check=False
    )
    if converted.returncode == 0:
        assert converted.stdout.decode().strip() == public
    enc = _age("-r", public, stdin=b"from age")
    assert enc.returncode == 0
    dec = _keycourier("decrypt", "-i", str(key), stdin=enc.stdout)
    assert (dec.returncode, dec.stdout) == (0, b"from age")


# -- age -> keycourier -------------------------------------------------------------


@needs_age
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("armor", [False, True])
def test_keycourier_decrypts_age(tmp_path: Path, size: int, armor: bool) -> None:
    idents = [age.X25519Identity.generate() for _ in range(2)]
    plaintext = os.urandom(size)
    args = ["-r", idents[0].recipient().to_string(), "-r", idents[1].recipient().to_string()]
    res = _age(*args, *(["-a"] if armor else []), stdin=plaintext)
    assert res.returncode == 0, res.stderr
    for ident in idents:
        assert age.decrypt([ident], res.stdout) == plaintext


@needs_age
def test_keycourier_decrypts_age_recipients_file(tmp_path: Path) -> None:
    idents = [age.X25519Identity.generate() for _ in range(3)]
    rfile = tmp_path / "recipients.txt"
    rfile.write_text("# team\n" + "".join(f"{i.recipient().to_string()}\n\n" for i in idents))
    res = _age("-R", str(rfile), "-a", stdin=b"team secret")
    assert res.returncode == 0, res.stderr
    keys = _identity_file(tmp_path, [idents[2]])
    dec = _keycourier("decrypt", "-i", str(keys), stdin=res.stdout)
    assert (dec.returncode, dec.stdout) == (0, b"team secret")
    # and our parser reads the same recipients file age just used
    parsed = age.parse_recipients_file(rfile.read_text())
    assert [r.to_string() for r in parsed] == [i.recipient().to_string() for i in idents]


@needs_age
def test_keycourier_reads_age_keygen_files(tmp_path: Path) -> None:
    key = tmp_path / "age-key.txt"
    gen = subprocess.run(
        ["age-keygen", "-o", str(key)], capture_output=True, timeout=60, check=False
    )
    assert gen.returncode == 0, gen.stderr
    ident = age.parse_identities_file(key.read_text())[0]
    public = gen.stderr.decode().strip().removeprefix("Public key: ")
    assert ident.recipient().to_string() == public
    enc = _age("-r", public, stdin=b"k")
    assert age.decrypt([ident], enc.stdout) == b"k"


# -- pyrage, both ways -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 200, 65537])
@pytest.mark.parametrize("armor", [False, True])
def test_pyrage_x25519_both_ways(size: int, armor: bool) -> None:
    idents = [age.X25519Identity.generate() for _ in range(2)]
    plaintext = os.urandom(size)
    ours = age.encrypt([i.recipient() for i in idents], plaintext, armor=armor)
    for ident in idents:
        assert (
            pyrage.decrypt(ours, [pyrage.x25519.Identity.from_str(ident.to_string())]) == plaintext
        )
    theirs = pyrage.encrypt(
        plaintext,
        [pyrage.x25519.Recipient.from_str(i.recipient().to_string()) for i in idents],
        armored=armor,
    )
    for ident in idents:
        assert age.decrypt([ident], theirs) == plaintext


def test_pyrage_keys_parse_ours_and_back() -> None:
    theirs = pyrage.x25519.Identity.generate()
    ours = age.X25519Identity.parse(str(theirs))
    assert ours.recipient().to_string() == str(theirs.to_public())


@pytest.mark.parametrize("armor", [False, True])
def test_pyrage_decrypts_keycourier_passphrase(armor: bool) -> None:
    data = age.encrypt([age.ScryptRecipient(Secret("interop pass"), 10)], b"pw data", armor=armor)
    assert pyrage.passphrase.decrypt(data, "interop pass") == b"pw data"
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(data, "wrong pass")


def test_keycourier_decrypts_pyrage_passphrase(tmp_path: Path) -> None:
    # pyrage chooses its own (realistic) work factor: one case only.
    data = pyrage.passphrase.encrypt(b"from rage", "interop pass", armored=True)
    assert age.decrypt([age.ScryptIdentity(Secret("interop pass"))], data) == b"from rage"
    pw = tmp_path / "pw.txt"
    pw.write_text("interop pass\n")
    dec = _keycourier("decrypt", "--passphrase-file", str(pw), stdin=b"")
    assert dec.returncode != 0  # stdin is empty: not an age file
    src = tmp_path / "f.age"
    src.write_bytes(data)
    dec = _keycourier("decrypt", "--passphrase-file", str(pw), str(src))
    assert (dec.returncode, dec.stdout) == (0, b"from rage")


@needs_age
def test_the_cli_encrypts_for_age_and_pyrage_with_recipients_and_passphrases(
    tmp_path: Path,
) -> None:
    """The keycourier CLI (not just the library) as the encrypting side: several
    recipients, a recipients file, binary and armored; a passphrase file for pyrage."""
    idents = [age.X25519Identity.generate() for _ in range(2)]
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# team\n{idents[1].recipient().to_string()}\n")
    plaintext = os.urandom(70_000)
    src = tmp_path / "in.bin"
    src.write_bytes(plaintext)
    for armor in ([], ["-a"]):
        out = tmp_path / "out.age"
        enc = _keycourier(
            "encrypt", "-r", idents[0].recipient().to_string(), "-R", str(rfile), *armor,
            "-o", str(out), str(src),
        )  # fmt: skip
        assert enc.returncode == 0, enc.stderr
        for ident in idents:
            keys = _identity_file(tmp_path, [ident])
            res = _age("-d", "-i", str(keys), str(out))
            assert (res.returncode, res.stdout) == (0, plaintext)
            theirs = pyrage.x25519.Identity.from_str(ident.to_string())
            assert pyrage.decrypt(out.read_bytes(), [theirs]) == plaintext
    pw = tmp_path / "pw.txt"
    pw.write_text("cli interop pass\n")
    enc = _keycourier(
        "encrypt", "--passphrase-file", str(pw), "--work-factor", "10", "-a", str(src)
    )
    assert enc.returncode == 0, enc.stderr
    assert pyrage.passphrase.decrypt(enc.stdout, "cli interop pass") == plaintext
