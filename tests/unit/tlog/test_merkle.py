"""The stored-hash Merkle tree against a direct transcription of RFC 6962 section 2.1."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keycourier.tlog import merkle


def _mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


class Store:
    def __init__(self) -> None:
        self.hashes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.writes = 0

    def read(self, level: int, index: int) -> bytes:
        return self.hashes[(level, index)]

    def append(self, data: bytes) -> None:
        entries = merkle.stored_after_append(self.size, merkle.leaf_hash(data), self.read)
        for level, index, value in entries:
            self.hashes[(level, index)] = value
        self.writes += len(entries)
        self.size += 1


LEAVES = [f"leaf {i}".encode() for i in range(70)]


@pytest.fixture(scope="module")
def store() -> Store:
    s = Store()
    for leaf in LEAVES:
        s.append(leaf)
    return s


def test_roots_match_the_rfc_definition_for_every_size(store: Store) -> None:
    for n in range(len(LEAVES) + 1):
        assert merkle.root_hash(n, store.read) == _mth(LEAVES[:n]), n


def test_rfc6962_empty_tree_and_known_root() -> None:
    # The empty tree's root and a one-leaf tree, as RFC 6962 defines them.
    assert merkle.root_hash(0, Store().read).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    s = Store()
    s.append(b"")
    assert merkle.root_hash(1, s.read).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


def test_appends_write_amortised_two_hashes(store: Store) -> None:
    assert store.writes < 2 * store.size


def test_inclusion_proofs_match_and_verify(store: Store) -> None:
    for n in range(1, len(LEAVES) + 1):
        root = _mth(LEAVES[:n])
        for m in range(n):
            proof = merkle.inclusion_proof(m, n, store.read)
            assert proof == _path(m, LEAVES[:n]), (m, n)
            merkle.verify_inclusion(m, n, merkle.leaf_hash(LEAVES[m]), proof, root)


def test_consistency_proofs_match_and_verify(store: Store) -> None:
    for new in range(1, len(LEAVES) + 1):
        new_root = _mth(LEAVES[:new])
        for old in range(1, new + 1):
            proof = merkle.consistency_proof(old, new, store.read)
            assert proof == _subproof(old, LEAVES[:new], True), (old, new)
            merkle.verify_consistency(old, new, _mth(LEAVES[:old]), new_root, proof)


def test_a_changed_hash_anywhere_fails_inclusion(store: Store) -> None:
    n, m = 45, 17
    root = merkle.root_hash(n, store.read)
    leaf = merkle.leaf_hash(LEAVES[m])
    proof = merkle.inclusion_proof(m, n, store.read)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(m, n, leaf, bad, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(m, n, merkle.leaf_hash(b"other"), proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(m + 1, n, leaf, proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(m, n, leaf, proof[:-1], root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(m, n, leaf, [*proof, proof[0]], root)


def test_a_rewritten_history_fails_consistency(store: Store) -> None:
    old, new = 13, 60
    proof = merkle.consistency_proof(old, new, store.read)
    new_root = merkle.root_hash(new, store.read)
    forged_old = _mth([b"rewritten", *LEAVES[1:old]])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(old, new, forged_old, new_root, proof)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes(32)
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old, new, _mth(LEAVES[:old]), new_root, bad)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(new, old, new_root, _mth(LEAVES[:old]), proof)


@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_proof_positions_are_bound(case: tuple[int, int]) -> None:
    n, m = case
    s = Store()
    for leaf in LEAVES[:n]:
        s.append(leaf)
    proof = merkle.inclusion_proof(m, n, s.read)
    root = merkle.root_hash(n, s.read)
    for other in range(n):
        if other != m and LEAVES[other] != LEAVES[m]:
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(other, n, merkle.leaf_hash(LEAVES[m]), proof, root)


@given(
    st.integers(1, 70).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))
    )
)
def test_batch_proofs_recompute_the_root(case: tuple[int, set[int]]) -> None:
    n, chosen = case
    s = Store()
    for leaf in LEAVES[:n]:
        s.append(leaf)
    indices = sorted(chosen)
    nodes = {(lo, hi): h for lo, hi, h in merkle.batch_proof(indices, n, s.read)}
    leaves = [merkle.leaf_hash(LEAVES[i]) for i in indices]
    assert merkle.root_from_batch(n, indices, leaves, nodes) == _mth(LEAVES[:n])
    if nodes:
        first = next(iter(nodes))
        with pytest.raises(merkle.ProofError):
            merkle.root_from_batch(
                n, indices, leaves, {k: v for k, v in nodes.items() if k != first}
            )
        changed = {**nodes, first: bytes(32)}
        assert merkle.root_from_batch(n, indices, leaves, changed) != _mth(LEAVES[:n])
        with pytest.raises(merkle.ProofError):
            merkle.root_from_batch(n, indices, leaves, {**nodes, (0, n + 5): bytes(32)})
    bad_leaves = [merkle.leaf_hash(b"x"), *leaves[1:]]
    assert merkle.root_from_batch(n, indices, bad_leaves, nodes) != _mth(LEAVES[:n])


def test_a_contiguous_batch_needs_few_nodes(store: Store) -> None:
    nodes = merkle.batch_proof(list(range(10, 60)), 70, store.read)
    assert len(nodes) <= 2 * 7


@given(st.integers(min_value=0, max_value=300), st.data())
def test_extending_levels_equals_building_them_whole(size: int, data: st.DataObject) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    first = data.draw(st.integers(min_value=0, max_value=size))
    whole = merkle.levels_of(leaves)
    assert merkle.extend_levels(merkle.levels_of(leaves[:first]), leaves[first:]) == whole
    assert merkle.extend_levels([], leaves) == whole
