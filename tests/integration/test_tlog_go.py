"""Go's golang.org/x/mod/sumdb note and tlog packages accept what keycourier writes,
and refuse it once any part is changed."""

from __future__ import annotations

from typing import Any

import pytest

from keycourier.tlog import checkpoint, merkle, note
from tests.support.gotools import TlogCheck

ORIGIN = "keycourier.example/ledger/5f1d2c"
SIGNER = note.Signer(ORIGIN, bytes(range(32)))
BODIES = [f'{{"seq":{i},"type":"sealed","x":"\u00e9v\u00e9nement {i}"}}' for i in range(23)]


class Tree:
    def __init__(self, bodies: list[str]) -> None:
        self.hashes: dict[tuple[int, int], bytes] = {}
        for i, body in enumerate(bodies):
            leaf = merkle.leaf_hash(body.encode())
            for level, index, value in merkle.stored_after_append(i, leaf, self.read):
                self.hashes[(level, index)] = value

    def read(self, level: int, index: int) -> bytes:
        return self.hashes[(level, index)]


TREE = Tree(BODIES)


def _signed_checkpoint(size: int) -> str:
    cp = checkpoint.Checkpoint(ORIGIN, size, merkle.root_hash(size, TREE.read))
    return note.sign(cp.text(), [SIGNER])


def _request(size: int, indices: list[int], old: int | None = None) -> dict[str, Any]:
    root = merkle.root_hash(size, TREE.read).hex()
    request: dict[str, Any] = {
        "vkey": SIGNER.verifier.vkey(),
        "checkpoint": _signed_checkpoint(size),
        "inclusion": [
            {
                "logIndex": i,
                "treeSize": size,
                "rootHash": root,
                "hashes": [h.hex() for h in merkle.inclusion_proof(i, size, TREE.read)],
                "body": BODIES[i],
            }
            for i in indices
        ],
    }
    if old is not None:
        request["consistency"] = {
            "old": old,
            "new": size,
            "oldRoot": merkle.root_hash(old, TREE.read).hex(),
            "newRoot": root,
            "hashes": [h.hex() for h in merkle.consistency_proof(old, size, TREE.read)],
        }
    return request


@pytest.mark.parametrize("size", [1, 2, 7, 8, 16, 23])
def test_go_verifies_checkpoints_and_proofs(go_tlogcheck: TlogCheck, size: int) -> None:
    old = max(1, size // 3)
    result = go_tlogcheck.run(_request(size, list(range(size)), old=old))
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"checkpoint {ORIGIN} size {size}", "ok"]


def _mutations(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    cp = str(request["checkpoint"])
    text, sigs = cp.split("\n\n")
    cases.append(("checkpoint size", {**request, "checkpoint": cp.replace("\n23\n", "\n22\n")}))
    sig_blob = sigs.rsplit(" ", 1)[1]
    flipped = sig_blob[:10] + ("A" if sig_blob[10] != "A" else "B") + sig_blob[11:]
    cases.append(("signature", {**request, "checkpoint": cp.replace(sig_blob, flipped)}))
    other = note.Signer(ORIGIN, bytes(32)).verifier.vkey()
    cases.append(("verifier key", {**request, "vkey": other}))
    inclusion = list(request["inclusion"])
    first = dict(inclusion[5])
    hashes = list(first["hashes"])
    hashes[1] = "00" * 32
    cases.append(("proof hash", {**request, "inclusion": [{**first, "hashes": hashes}]}))
    cases.append(("leaf body", {**request, "inclusion": [{**first, "body": first["body"] + " "}]}))
    cases.append(("leaf index", {**request, "inclusion": [{**first, "logIndex": 6}]}))
    consistency = dict(request["consistency"])
    c_hashes = list(consistency["hashes"])
    c_hashes[0] = "11" * 32
    cases.append(("consistency", {**request, "consistency": {**consistency, "hashes": c_hashes}}))
    forged_old = merkle.root_hash(7, TREE.read).hex()
    cases.append(("old root", {**request, "consistency": {**consistency, "oldRoot": forged_old}}))
    assert text  # the split found a note text
    return cases


def test_a_mutation_fails_in_go_and_in_keycourier(go_tlogcheck: TlogCheck) -> None:
    request = _request(23, list(range(23)), old=8)
    assert go_tlogcheck.run(request).code == 0
    for what, bad in _mutations(request):
        result = go_tlogcheck.run(bad)
        assert result.code == 1, (what, result.out, result.err)
        assert not _keycourier_accepts(bad), what


def _keycourier_accepts(request: dict[str, Any]) -> bool:
    try:
        verifier = note.parse_vkey(str(request["vkey"]))
        opened = note.open_note(str(request["checkpoint"]), [verifier])
        cp = checkpoint.parse(opened.text)
        for inc in request["inclusion"]:
            if inc["treeSize"] != cp.size or bytes.fromhex(inc["rootHash"]) != cp.root_hash:
                return False
            merkle.verify_inclusion(
                inc["logIndex"],
                inc["treeSize"],
                merkle.leaf_hash(inc["body"].encode()),
                [bytes.fromhex(h) for h in inc["hashes"]],
                cp.root_hash,
            )
        c = request["consistency"]
        merkle.verify_consistency(
            c["old"],
            c["new"],
            bytes.fromhex(c["oldRoot"]),
            bytes.fromhex(c["newRoot"]),
            [bytes.fromhex(h) for h in c["hashes"]],
        )
    except (note.NoteError, checkpoint.CheckpointError, merkle.ProofError):
        return False
    return True
