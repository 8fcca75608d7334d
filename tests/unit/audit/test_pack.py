"""Evidence packs: built from a tree, verified offline, and refused when altered."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier.audit import pack
from keycourier.errors import IntegrityError, UsageError
from keycourier.tlog import checkpoint, merkle, note

ORIGIN = "keycourier.example/ledger/abc"
SIGNER = note.Signer(ORIGIN, bytes(range(32)))
POLICY = '{"rules":{}}'
DIGEST = "sha256:" + hashlib.sha256(POLICY.encode()).hexdigest()
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def body(i: int, digest: str = DIGEST) -> str:
    return json.dumps(
        {"seq": i + 1, "type": "sealed", "policy_digest": digest, "ledger": "abc"},
        sort_keys=True,
        separators=(",", ":"),
    )


BODIES = [body(i) for i in range(37)]


class Tree:
    def __init__(self, bodies: list[str]) -> None:
        self.h: dict[tuple[int, int], bytes] = {}
        for i, b in enumerate(bodies):
            for lv, ix, v in merkle.stored_after_append(i, merkle.leaf_hash(b.encode()), self.read):
                self.h[(lv, ix)] = v

    def read(self, level: int, index: int) -> bytes:
        return self.h[(level, index)]


TREE = Tree(BODIES)


def contents(indices: list[int], **over: object) -> pack.PackContents:
    size = len(BODIES)
    root = merkle.root_hash(size, TREE.read)
    note_text = note.sign(checkpoint.Checkpoint(ORIGIN, size, root).text(), [SIGNER])
    fields: dict[str, object] = {
        "origin": ORIGIN,
        "tree_size": size,
        "root_hash": root,
        "checkpoint_note": note_text,
        "verifier_key": SIGNER.verifier.vkey(),
        "indices": indices,
        "bodies": [BODIES[i] for i in indices],
        "proof": merkle.batch_proof(indices, size, TREE.read),
        "policies": {DIGEST: POLICY},
        "policies_missing": [],
        "selection": {"bundle": ["b1"]},
    }
    fields.update(over)
    return pack.PackContents(**fields)  # type: ignore[arg-type]


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "evidence.zip"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("indices", [[0], [36], [3, 4, 5, 20], list(range(37))])
def test_a_pack_verifies_with_the_pinned_key(tmp_path: Path, indices: list[int]) -> None:
    path = write(tmp_path, pack.build(contents(indices), now=NOW))
    report = pack.verify(path, key=SIGNER.verifier.vkey())
    assert report.events == len(indices)
    assert report.tree_size == 37
    assert report.policies == 1
    assert report.key_pinned
    assert pack.verify(path, key=None).key_pinned is False


def test_the_same_events_give_the_same_bytes() -> None:
    assert pack.build(contents([1, 2]), now=NOW) == pack.build(contents([1, 2]), now=NOW)


def _rewrite(data: bytes, change: Callable[[dict[str, bytes]], None]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    change(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, value in members.items():
            zf.writestr(name, value)
    return out.getvalue()


def _set(name: str, fn: Callable[[bytes], bytes]) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        members[name] = fn(members[name])

    return change


def _drop(name: str) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        del members[name]

    return change


def _add(name: str, value: bytes) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        members[name] = value

    return change


POLICY_FILE = f"policies/sha256-{DIGEST.removeprefix('sha256:')}.json"
ALTERATIONS: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "event edited": (_set("events.txt", lambda b: b.replace(b'"seq":5', b'"seq":6', 1)), "root"),
    "event dropped": (_set("events.txt", lambda b: b.split(b"\n", 1)[1]), "one line"),
    "proof node changed": (_set("proof.txt", lambda b: b[:-3] + b"00\n"), "root"),
    "proof node dropped": (_set("proof.txt", lambda b: b.split(b"\n", 1)[1]), "lacks"),
    "checkpoint edited": (
        _set("checkpoint.txt", lambda b: b.replace(b"\n37\n", b"\n36\n")),
        "signed",
    ),
    "runs shifted": (
        _set("pack.json", lambda b: b.replace(b"[\n      3,", b"[\n      2,")),
        "proof",
    ),
    "policy edited": (_set(POLICY_FILE, lambda b: b + b" "), "digest"),
    "policy dropped": (_drop(POLICY_FILE), "policy"),
    "extra file": (_add("notes.txt", b"hi"), "unexpected"),
    "checkpoint missing": (_drop("checkpoint.txt"), "missing"),
}


@pytest.mark.parametrize("what", sorted(ALTERATIONS))
def test_an_altered_pack_is_refused(tmp_path: Path, what: str) -> None:
    change, reason = ALTERATIONS[what]
    data = _rewrite(pack.build(contents([3, 4, 5, 20]), now=NOW), change)
    path = write(tmp_path, data)
    with pytest.raises(IntegrityError, match=reason) as caught:
        pack.verify(path, key=SIGNER.verifier.vkey())
    assert caught.value.exit_code == 4


def test_another_key_is_refused_even_when_the_pack_carries_it(tmp_path: Path) -> None:
    forger = note.Signer(ORIGIN, bytes(32))
    size = len(BODIES)
    root = merkle.root_hash(size, TREE.read)
    forged = note.sign(checkpoint.Checkpoint(ORIGIN, size, root).text(), [forger])
    data = pack.build(
        contents([1], checkpoint_note=forged, verifier_key=forger.verifier.vkey()), now=NOW
    )
    path = write(tmp_path, data)
    assert pack.verify(path, key=None).events == 1  # self-consistent...
    with pytest.raises(IntegrityError, match="pinned key"):
        pack.verify(path, key=SIGNER.verifier.vkey())  # ...but not by the pinned key


def test_a_missing_policy_must_be_declared(tmp_path: Path) -> None:
    data = pack.build(contents([2], policies={}, policies_missing=[DIGEST]), now=NOW)
    report = pack.verify(write(tmp_path, data), key=SIGNER.verifier.vkey())
    assert report.policies_missing == (DIGEST,)


def test_not_a_zip_and_a_bad_key(tmp_path: Path) -> None:
    path = write(tmp_path, b"PK not really")
    with pytest.raises(IntegrityError, match="not a zip"):
        pack.verify(path, key=None)
    good = write(tmp_path, pack.build(contents([1]), now=NOW))
    with pytest.raises(UsageError, match="--key"):
        pack.verify(good, key="kc1:abc")


HIDDEN = "sha256:" + hashlib.sha256(b'{"rules":{"hidden":1}}').hexdigest()


@pytest.mark.parametrize(
    "listed",
    [
        # a "digest" that is really a second match of a held policy's reference
        [DIGEST + '","seq":1,'],
        ["sha256:" + "0" * 63],
        [5],
        5,
        None,
    ],
)
def test_a_pack_cannot_hide_a_policy_behind_its_list_of_missing_ones(
    tmp_path: Path, listed: object
) -> None:
    bodies = [body(0), body(1, HIDDEN), body(2)]
    tree = Tree(bodies)
    size = len(bodies)
    root = merkle.root_hash(size, tree.read)
    data = pack.build(
        contents(
            [0, 1, 2],
            tree_size=size,
            root_hash=root,
            checkpoint_note=note.sign(checkpoint.Checkpoint(ORIGIN, size, root).text(), [SIGNER]),
            bodies=bodies,
            proof=merkle.batch_proof([0, 1, 2], size, tree.read),
            policies_missing=[],
        ),
        now=NOW,
    )
    path = write(tmp_path, data)
    with pytest.raises(IntegrityError, match="neither holds nor lists"):
        pack.verify(path, key=SIGNER.verifier.vkey())

    def claim(members: dict[str, bytes]) -> None:
        meta = json.loads(members["pack.json"])
        meta["policies_missing"] = listed
        members["pack.json"] = json.dumps(meta).encode()

    with pytest.raises(IntegrityError) as caught:
        pack.verify(write(tmp_path, _rewrite(data, claim)), key=SIGNER.verifier.vkey())
    assert caught.value.exit_code == 4
