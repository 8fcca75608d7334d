"""Loader for the CCTV age test vectors in tests/vectors/age."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "age"
KNOWN_KEYS = {
    "expect",
    "payload",
    "file key",
    "identity",
    "passphrase",
    "armored",
    "compressed",
    "comment",
}


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    payload: str | None
    file_key: bytes
    identities: tuple[str, ...]
    passphrases: tuple[str, ...]
    armored: bool
    data: bytes


def load(path: Path) -> Vector:
    raw = path.read_bytes()
    head, data = raw.split(b"\n\n", 1)
    fields: dict[str, list[str]] = {}
    for line in head.decode("utf-8").split("\n"):
        key, value = line.split(": ", 1)
        assert key in KNOWN_KEYS, f"{path.name}: unknown key {key}"
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        data = zlib.decompress(data)
    return Vector(
        name=path.name,
        expect=fields["expect"][0],
        payload=fields.get("payload", [None])[0],
        file_key=bytes.fromhex(fields["file key"][0]),
        identities=tuple(fields.get("identity", [])),
        passphrases=tuple(fields.get("passphrase", [])),
        armored=fields.get("armored") == ["yes"],
        data=data,
    )


def all_vector_paths() -> list[Path]:
    return sorted(p for p in VECTORS.iterdir() if p.name != "README.md")
