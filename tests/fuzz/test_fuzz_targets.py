"""The atheris targets of scripts/fuzz_targets.py run here without atheris, so they cannot rot.

The script is imported with a stand-in ``atheris`` module (``instrument_imports``
a no-op) unless the real one is installed. Each target gets its seed corpus
(which must go the whole way: open, decrypt, canonical-form check), the seeds
with the allowed no-op edits, truncations, byte flips and random bytes. A target
either returns or reports a finding (AssertionError); keycourier's own errors
must be swallowed inside it, so any exception at all fails this test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier import age, bundle, receipt
from tests.fuzz.samples import NOW, PLAINTEXT

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_targets.py"


def _stand_in_atheris() -> types.ModuleType:
    mod = types.ModuleType("atheris")
    mod.instrument_imports = lambda **_: contextlib.nullcontext()  # type: ignore[attr-defined]

    def refuse(*_: object) -> None:
        raise AssertionError("the test must not start libFuzzer")

    mod.Setup = refuse  # type: ignore[attr-defined]
    mod.Fuzz = refuse  # type: ignore[attr-defined]
    return mod


@pytest.fixture(scope="module")
def harness() -> Iterator[types.ModuleType]:
    saved = dict(sys.modules)
    if importlib.util.find_spec("atheris") is None:
        sys.modules["atheris"] = _stand_in_atheris()
    spec = importlib.util.spec_from_file_location("kc_fuzz_targets", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        yield mod
    finally:
        for name in set(sys.modules) - set(saved):
            if name == "atheris" or name == "kc_fuzz_targets":
                del sys.modules[name]


def _seeds(harness: types.ModuleType, target: str, where: Path) -> list[bytes]:
    harness.seed(target, where)
    found = [p.read_bytes() for p in sorted(where.iterdir())]
    assert found, f"no seed corpus for {target}"
    return found


def _variants(seeds: list[bytes], rng: random.Random) -> Iterator[bytes]:
    yield b""
    for s in seeds:
        yield s[:1]
        yield s[: len(s) // 2]
        yield s[:-1]
        yield s.replace(b"\n", b"\r\n")  # an allowed no-op: must still open and pass
        yield s + b"\n"
        for _ in range(6):
            flipped = bytearray(s)
            i = rng.randrange(1, len(s))  # keep the age target's sample-picking byte
            flipped[i] ^= 1 << rng.randrange(8)
            yield bytes(flipped)
    for n in (1, 2, 17, 300, 4096):
        yield rng.randbytes(n)
    for s in seeds:
        yield s[:1] + rng.randbytes(200)


def test_the_targets_are_the_bundle_receipt_and_age_parsers(harness: types.ModuleType) -> None:
    assert set(harness.TARGETS) == {"bundle", "receipt", "age"}
    assert callable(harness.main)


@pytest.mark.parametrize("target", ["bundle", "receipt", "age"])
def test_target_runs_on_seeds_and_junk(
    harness: types.ModuleType, target: str, tmp_path: Path
) -> None:
    func = harness.TARGETS[target]
    seeds = _seeds(harness, target, tmp_path / "corpus")
    # The seeds must reach the acceptance check, not stop at the first parser error.
    for s in seeds:
        if target == "bundle":
            sample = harness.BUNDLE
            opened = bundle.open_verified(
                s, identity=sample.receiver, trusted=sample.trusted, now=NOW
            )
            assert opened.credentials.client_secret.reveal() == sample.client_secret
        elif target == "receipt":
            verified = receipt.verify(s, harness.RECEIPT.bundle, harness.RECEIPT.trusted)
            assert verified.receipt.action == "ingested"
        else:
            name = harness.AGE_NAMES[s[0] % len(harness.AGE_NAMES)]
            assert age.decrypt(harness.AGE[name].identities, s[1:]) == PLAINTEXT
    rng = random.Random(0x6B63)  # fixed: a failure here reproduces
    ran = 0
    for data in [*seeds, *_variants(seeds, rng)]:
        try:
            result = func(data)
        except Exception as exc:  # noqa: BLE001 - any exception is a finding
            pytest.fail(f"{target} target on {data[:60]!r}... raised {type(exc).__name__}: {exc}")
        assert result is None
        ran += 1
    assert ran >= 19
