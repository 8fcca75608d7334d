"""Evidence packs: chosen ledger events that verify offline with one public key.

A pack is a zip file (see docs/audit.md for the normative description):

``pack.json``
    ``{"format", "created_at", "origin", "tree_size", "root_hash", "selection",
    "leaf_runs": [[first index, count], ...], "policies", "policies_missing"}``
``events.txt``
    the chosen events' canonical bodies, one per line, in leaf-index order; the
    leaf hash of a line is ``SHA-256(0x00 || line)``.
``proof.txt``
    a batch inclusion proof: one ``<lo> <hi> <hex hash>`` line per RFC 6962
    subtree ``[lo, hi)`` that holds no chosen event.
``checkpoint.txt``
    the signed checkpoint (C2SP signed note, tlog-checkpoint body) the events are
    proved against.
``verifier.key``
    the log's verifier key (``name+keyid+base64``); an auditor pins it out of band.
``policies/sha256-<hex>.json``
    each handover policy in force for a chosen event, as its canonical JSON
    (whose SHA-256 is the digest the event names).
``README.txt``
    how to verify the pack.

Nothing in a pack is secret: ledger events never hold one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keycourier.errors import IntegrityError, UsageError
from keycourier.tlog import checkpoint, merkle, note

FORMAT = "keycourier-evidence-pack/1"
MAX_PACK_BYTES = 1 << 30  # uncompressed, all members together
MAX_MEMBER_BYTES = 512 << 20
MAX_MEMBERS = 10_000
_FIXED = ("pack.json", "events.txt", "proof.txt", "checkpoint.txt", "verifier.key", "README.txt")
_POLICY_NAME = re.compile(r"policies/sha256-([0-9a-f]{64})\.json")
_POLICY_REF = b'"policy_digest":"sha256:'
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same events give the same bytes

README = """\
keycourier evidence pack
========================

This file proves that the events in events.txt are in the ledger whose signed
checkpoint is checkpoint.txt. Nothing in it is secret.

With keycourier (no ledger and no Vault needed):

    keycourier audit verify-pack THIS_FILE --key 'VERIFIER_KEY'

where VERIFIER_KEY is the ledger's verifier key, obtained out of band from its
owner (`keycourier audit key` on their side); verifier.key inside the pack is a
copy, and a pack checked against its own copy proves only that it is
self-consistent.

With standard tools:

1. checkpoint.txt is a C2SP signed note (https://c2sp.org/signed-note) with a
   tlog-checkpoint body (https://c2sp.org/tlog-checkpoint): origin, tree size,
   base64 root hash. Go's golang.org/x/mod/sumdb/note opens it with the key.
2. Each line of events.txt is one event's canonical JSON body; its leaf hash is
   SHA-256(0x00 || line) (RFC 6962). pack.json "leaf_runs" gives the leaf
   index of each line: runs of [first index, count].
3. proof.txt lists "<lo> <hi> <hex>" hashes of the RFC 6962 subtrees [lo, hi)
   of the checkpoint's tree that hold none of these events. With the leaf
   hashes they recompute the checkpoint's root: MTH(D[lo:hi]) is the listed
   hash when the range has no event, the leaf hash for a single event, and
   SHA-256(0x01 || MTH(left) || MTH(right)) otherwise, splitting at the
   largest power of two smaller than hi - lo.
4. policies/sha256-<hex>.json is the canonical JSON of each handover policy the
   events name; its SHA-256 is <hex>.

`keycourier audit prove --seq N --json` on the ledger gives one event's RFC 6962
audit path in the shape Rekor users know, for Go's tlog.CheckRecord.
"""


@dataclass(frozen=True, slots=True)
class PackContents:
    """What goes into a pack; the caller reads it from the ledger."""

    origin: str
    tree_size: int
    root_hash: bytes
    checkpoint_note: str
    verifier_key: str
    indices: Sequence[int]  # sorted leaf indices of the chosen events
    bodies: Sequence[str]  # their canonical bodies
    proof: Sequence[tuple[int, int, bytes]]  # merkle.batch_proof of the indices
    policies: Mapping[str, str]  # "sha256:<hex>" -> canonical policy JSON
    policies_missing: Sequence[str]
    selection: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PackReport:
    origin: str
    tree_size: int
    events: int
    policies: int
    policies_missing: tuple[str, ...]
    key_pinned: bool
    created_at: str


def _runs(indices: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return runs


def _member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build(contents: PackContents, *, now: datetime) -> bytes:
    """The pack's bytes (a zip file)."""
    if not contents.indices or len(contents.indices) != len(contents.bodies):
        raise UsageError("an evidence pack needs at least one event")
    if any("\n" in body for body in contents.bodies):
        raise UsageError("an event body holds a newline")
    meta = {
        "format": FORMAT,
        "created_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "origin": contents.origin,
        "tree_size": contents.tree_size,
        "root_hash": contents.root_hash.hex(),
        "selection": dict(contents.selection),
        "leaf_runs": _runs(contents.indices),
        "policies": sorted(contents.policies),
        "policies_missing": sorted(contents.policies_missing),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _member(zf, "README.txt", README.encode())
        _member(zf, "pack.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        _member(zf, "checkpoint.txt", contents.checkpoint_note.encode())
        _member(zf, "verifier.key", (contents.verifier_key + "\n").encode())
        _member(zf, "events.txt", "".join(body + "\n" for body in contents.bodies).encode())
        proof_lines = "".join(f"{lo} {hi} {h.hex()}\n" for lo, hi, h in contents.proof)
        _member(zf, "proof.txt", proof_lines.encode())
        for digest, text in sorted(contents.policies.items()):
            _member(zf, f"policies/sha256-{digest.removeprefix('sha256:')}.json", text.encode())
    return buf.getvalue()


def _fail(what: str) -> IntegrityError:
    return IntegrityError(f"the evidence pack does not verify: {what}")


def _read_members(path: Path) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        raise _fail("it is not a zip file") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _fail("it holds too many files")
        total = 0
        members: dict[str, bytes] = {}
        for info in infos:
            name = info.filename
            if name in members:
                raise _fail(f"{name} appears twice")
            if name not in _FIXED and not _POLICY_NAME.fullmatch(name):
                raise _fail(f"it holds an unexpected file {name[:80]!r}")
            if info.file_size > MAX_MEMBER_BYTES:
                raise _fail(f"{name} is too large")
            total += info.file_size
            if total > MAX_PACK_BYTES:
                raise _fail("it is too large")
            try:
                with zf.open(info) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                raise _fail(f"{name} is damaged") from None
            if len(data) != info.file_size:
                raise _fail(f"{name} is damaged")
            members[name] = data
    for name in _FIXED:
        if name not in members:
            raise _fail(f"{name} is missing")
    return members


def _meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _fail("pack.json is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(f"pack.json is not a {FORMAT} description")
    for key, kind in (("origin", str), ("tree_size", int), ("root_hash", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise _fail(f"pack.json has no valid {key}")
    runs = meta.get("leaf_runs")
    if not isinstance(runs, list) or not all(
        isinstance(r, list)
        and len(r) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r)
        for r in runs
    ):
        raise _fail("pack.json has no valid leaf_runs")
    missing = meta.get("policies_missing", [])
    if not isinstance(missing, list) or not all(
        isinstance(d, str) and _DIGEST.fullmatch(d) for d in missing
    ):
        raise _fail("pack.json's policies_missing is not a list of sha256:<64 hex> digests")
    return meta


def _indices(runs: list[list[int]], size: int) -> list[int]:
    out: list[int] = []
    for first, count in runs:
        if count < 1 or first + count > size or (out and first <= out[-1]):
            raise _fail("pack.json's leaf_runs are not sorted runs inside the tree")
        out.extend(range(first, first + count))
    return out


def _proof(raw: bytes) -> dict[tuple[int, int], bytes]:
    nodes: dict[tuple[int, int], bytes] = {}
    try:
        for line in raw.decode("ascii").splitlines():
            lo, hi, hexhash = line.split(" ")
            if not (lo.isdigit() and hi.isdigit()) or len(hexhash) != 64:
                raise ValueError
            key = (int(lo), int(hi))
            if key in nodes:
                raise ValueError
            nodes[key] = bytes.fromhex(hexhash)
    except (ValueError, UnicodeDecodeError):
        raise _fail("proof.txt is malformed") from None
    return nodes


def _missing_policies(members: Mapping[str, bytes], meta: Mapping[str, Any]) -> list[str]:
    """The policies events name that the pack lists as missing; IntegrityError when an event
    names one the pack neither holds nor lists.

    Canonical bodies spell the reference one way (``"policy_digest":"sha256:<hex>"``), so
    every reference is counted, then the references to each known digest: a few scans in C
    over events.txt instead of work per event. A count left over names an unknown policy."""
    events = members["events.txt"]
    present = {m.group(1) for n in members if (m := _POLICY_NAME.fullmatch(n))}
    # both sets hold 64-hex digests only (_meta, _POLICY_NAME): each count below is of a
    # fixed-length pattern, so no reference is counted twice
    listed = {d.removeprefix("sha256:") for d in meta.get("policies_missing", [])}
    uses = {d: events.count(_POLICY_REF + d.encode("ascii") + b'"') for d in present | listed}
    if sum(uses.values()) != events.count(_POLICY_REF):
        raise _fail("an event names a policy the pack neither holds nor lists as missing")
    return sorted(f"sha256:{d}" for d, n in uses.items() if n and d not in present)


def verify(path: Path, *, key: str | None) -> PackReport:
    """Verify everything in the pack at ``path``; IntegrityError names the first failure."""
    members = _read_members(path)
    meta = _meta(members["pack.json"])
    try:
        pinned = note.parse_vkey(key) if key is not None else None
    except note.NoteError as exc:
        raise UsageError(f"--key is not a verifier key: {exc}") from None
    try:
        packed_key: note.Verifier | None = note.parse_vkey(members["verifier.key"].decode("utf-8"))
    except (note.NoteError, UnicodeDecodeError) as exc:
        if pinned is None:
            raise _fail(f"verifier.key: {exc}") from None
        packed_key = None
    verifier = pinned if pinned is not None else packed_key
    if verifier is None:  # pragma: no cover - one of the two parsed above
        raise _fail("no verifier key")
    try:
        opened = note.open_note(members["checkpoint.txt"], [verifier])
        cp = checkpoint.parse(opened.text)
    except note.NoteError as exc:
        who = "the pinned key" if pinned else "the pack's own key"
        raise _fail(f"the checkpoint is not signed by {who} ({exc})") from None
    except checkpoint.CheckpointError as exc:
        raise _fail(f"checkpoint.txt: {exc}") from None
    if cp.origin != meta["origin"] or cp.origin != verifier.name:
        raise _fail("the checkpoint's origin differs from the pack's or the key's")
    if cp.size != meta["tree_size"] or cp.root_hash.hex() != meta["root_hash"]:
        raise _fail("the checkpoint's tree differs from the one pack.json names")
    indices = _indices(meta["leaf_runs"], cp.size)
    lines = members["events.txt"].split(b"\n")
    if lines[-1] != b"" or len(lines) - 1 != len(indices) or not indices:
        raise _fail("events.txt does not hold one line for each leaf index")
    sha256 = hashlib.sha256  # merkle.leaf_hash, without a call per event
    leaves = [sha256(b"\x00" + line).digest() for line in lines[:-1]]
    try:
        root = merkle.root_from_batch(cp.size, indices, leaves, _proof(members["proof.txt"]))
    except merkle.ProofError as exc:
        raise _fail(f"the inclusion proof is invalid ({exc})") from None
    if root != cp.root_hash:
        raise _fail("the events are not in the checkpoint's tree (the root differs)")
    policies = 0
    for name, data in members.items():
        match = _POLICY_NAME.fullmatch(name)
        if match is None:
            continue
        if hashlib.sha256(data).hexdigest() != match.group(1):
            raise _fail(f"{name} does not match its digest")
        policies += 1
    missing = _missing_policies(members, meta)
    return PackReport(
        origin=cp.origin,
        tree_size=cp.size,
        events=len(indices),
        policies=policies,
        policies_missing=tuple(missing),
        key_pinned=pinned is not None,
        created_at=str(meta.get("created_at", "")),
    )
