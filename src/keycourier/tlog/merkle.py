"""RFC 6962 / RFC 9162 Merkle trees over stored subtree hashes (stdlib only).

A tree's leaves are hashed as ``SHA-256(0x00 || leaf)`` and its interior nodes as
``SHA-256(0x01 || left || right)``. The tree of ``n`` leaves is the RFC 6962 MTH:
split at the largest power of two smaller than ``n``.

Storage model: the hash of every *complete, aligned* subtree is stored once it is
complete: ``(level, index)`` covers the leaves ``[index * 2**level, (index + 1) * 2**level)``.
Appending leaf ``n`` stores its leaf hash at ``(0, n)`` and then one hash per level
for as long as the new node completes a pair: amortised two writes, at most
``log2(n) + 1``. The root of any size and every proof are then read from at most
``2 * log2(n)`` stored hashes, never recomputed from the leaves.
"""

from __future__ import annotations

import bisect
import hashlib
import operator
from collections.abc import Callable, Mapping, Sequence

HASH_SIZE = 32

# Reads the stored hash of the complete subtree (level, index).
HashReader = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or its parameters are impossible."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def stored_after_append(index: int, leaf: bytes, read: HashReader) -> list[tuple[int, int, bytes]]:
    """The ``(level, index, hash)`` entries to store when leaf number ``index`` is appended.

    ``read`` must already answer for every leaf before ``index``.
    """
    entries = [(0, index, leaf)]
    level, idx, current = 0, index, leaf
    while idx & 1:
        current = node_hash(read(level, idx - 1), current)
        level, idx = level + 1, idx >> 1
        entries.append((level, idx, current))
    return entries


def subtree_hash(lo: int, hi: int, read: HashReader) -> bytes:
    """MTH of the leaves ``[lo, hi)``, where ``lo`` is aligned as RFC 6962 splits are."""
    n = hi - lo
    if n <= 0:
        raise ProofError("an empty range has no subtree hash")
    if n & (n - 1) == 0 and lo % n == 0:
        return read(n.bit_length() - 1, lo // n)
    k = _split(n)
    return node_hash(subtree_hash(lo, lo + k, read), subtree_hash(lo + k, hi, read))


def root_hash(size: int, read: HashReader) -> bytes:
    """The root of the tree of the first ``size`` leaves (SHA-256 of nothing for 0)."""
    if size == 0:
        return hashlib.sha256(b"").digest()
    return subtree_hash(0, size, read)


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """RFC 6962 PATH(index, D[size]): sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    lo, hi = 0, size
    # Walk down recording siblings; reverse at the end so the list runs leaf to root.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(subtree_hash(lo + k, hi, read))
            hi = lo + k
        else:
            proof.append(subtree_hash(lo, lo + k, read))
            lo = lo + k
    proof.reverse()
    return proof


def consistency_proof(old: int, new: int, read: HashReader) -> list[bytes]:
    """RFC 6962 PROOF(old, D[new]), for ``0 < old <= new``."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(subtree_hash(lo, hi, read))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_hash(lo + k, hi, read))
            hi = lo + k
        else:
            proof.append(subtree_hash(lo, lo + k, read))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root that ``proof`` implies for ``leaf`` at ``index``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    current = leaf
    for sibling in proof:
        if len(sibling) != HASH_SIZE:
            raise ProofError("a proof hash is not 32 bytes")
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            current = node_hash(sibling, current)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            current = node_hash(current, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    return current


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows ``leaf`` at ``index`` under ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"leaf {index} is not included in the tree of size {size}")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: raise ProofError unless the tree of ``new`` extends that of ``old``."""
    if old < 0 or new < old:
        raise ProofError(f"no consistency from size {old} to size {new}")
    if any(len(h) != HASH_SIZE for h in proof):
        raise ProofError("a proof hash is not 32 bytes")
    if old == new:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different trees of size {new}")
        return
    if old == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"the tree of size {new} does not extend the old tree of size {old}")
    if sr != new_root:
        raise ProofError(f"the consistency proof does not lead to the root of size {new}")


# -- batch inclusion proofs ------------------------------------------------------------
#
# A batch proof shows many leaves of one tree at once: the hashes of the RFC 6962
# subtrees ``[lo, hi)`` that hold none of the chosen leaves but are needed, with the
# leaves themselves, to recompute the root. For a contiguous run of leaves it is a
# handful of hashes; every single-leaf audit path can be derived from it.


def _mth_of_run(leaves: Sequence[bytes]) -> bytes:
    """MTH of consecutive leaf hashes, bottom-up (the last odd node is carried up)."""
    level = list(leaves)
    sha256 = hashlib.sha256
    while len(level) > 1:
        pairs = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) & 1:
            pairs.append(level[-1])
        level = pairs
    return level[0]


def _check_indices(indices: Sequence[int], size: int) -> None:
    # strictly increasing, checked pairwise in C (a pack proves up to millions of leaves)
    if indices[0] < 0 or indices[-1] >= size or not all(map(operator.lt, indices, indices[1:])):
        raise ProofError("batch proof indices must be sorted, distinct and inside the tree")


def levels_of(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every complete subtree hash over ``leaves``: ``levels[L][i]`` is subtree ``(L, i)``.

    Computed bottom-up (a level's odd last node has no complete parent), so reading
    these levels gives the same roots and proofs as the stored tree of the same leaves.
    """
    return _build_up([list(leaves)])


def extend_levels(levels: Sequence[Sequence[bytes]], more: Sequence[bytes]) -> list[list[bytes]]:
    """``levels_of(first + more)`` from ``levels = levels_of(first)``, hashing ``more`` alone.

    Below level ``A`` (the number of trailing zero bits of ``len(first)``) no pair of
    ``first + more`` straddles the boundary, so those levels are ``first``'s followed by
    ``more``'s; the levels above are rebuilt from level ``A`` (``len(first) >> A`` nodes:
    few when ``len(first)`` is a multiple of a large power of two)."""
    done = len(levels[0]) if levels else 0
    if done == 0:
        return levels_of(more)
    top = (done & -done).bit_length() - 1
    theirs = levels_of(more)
    joined = [
        [
            *(levels[lv] if lv < len(levels) else ()),
            *(theirs[lv] if lv < len(theirs) else ()),
        ]
        for lv in range(top + 1)
    ]
    return _build_up(joined)


def _build_up(levels: list[list[bytes]]) -> list[list[bytes]]:
    """Add the levels above the last one, pairing bottom-up (an odd last node has no parent)."""
    sha256 = hashlib.sha256
    while len(levels[-1]) > 1:
        pairs = iter(levels[-1])  # consecutive pairs; an odd last node is left out
        levels.append(
            [sha256(b"\x01" + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]
        )
    return levels


def batch_proof(
    indices: Sequence[int], size: int, read: HashReader
) -> list[tuple[int, int, bytes]]:
    """``(lo, hi, hash)`` of every subtree needed beside the leaves at sorted ``indices``."""
    if not indices:
        raise ProofError("a batch proof needs at least one leaf")
    _check_indices(indices, size)
    out: list[tuple[int, int, bytes]] = []

    def walk(lo: int, hi: int, a: int, b: int) -> None:
        if a == b:
            out.append((lo, hi, subtree_hash(lo, hi, read)))
            return
        if b - a == hi - lo or hi - lo == 1:
            return
        k = _split(hi - lo)
        m = bisect.bisect_left(indices, lo + k, a, b)
        walk(lo, lo + k, a, m)
        walk(lo + k, hi, m, b)

    walk(0, size, 0, len(indices))
    return out


def root_from_batch(
    size: int,
    indices: Sequence[int],
    leaves: Sequence[bytes],
    nodes: Mapping[tuple[int, int], bytes],
) -> bytes:
    """The root implied by ``leaves`` at sorted ``indices`` and the batch proof ``nodes``.

    ProofError when a needed node is missing, a node is not needed (a proof must be
    exact), or the indices are not sorted, distinct and inside the tree.
    """
    if not indices or len(indices) != len(leaves):
        raise ProofError("a batch proof needs one leaf hash for each index")
    _check_indices(indices, size)
    used = 0

    def mth(lo: int, hi: int, a: int, b: int) -> bytes:
        nonlocal used
        if a == b:
            found = nodes.get((lo, hi))
            if found is None or len(found) != HASH_SIZE:
                raise ProofError(f"the batch proof lacks the subtree [{lo}, {hi})")
            used += 1
            return found
        if b - a == hi - lo:
            return _mth_of_run(leaves[a:b])
        k = _split(hi - lo)
        m = bisect.bisect_left(indices, lo + k, a, b)
        return node_hash(mth(lo, lo + k, a, m), mth(lo + k, hi, m, b))

    root = mth(0, size, 0, len(indices))
    if used != len(nodes):
        raise ProofError("the batch proof holds subtrees that are not needed")
    return root
