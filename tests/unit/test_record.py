"""``@record`` behaves as ``@dataclass(frozen=True, slots=True)`` does where keycourier uses it."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from keycourier._record import FrozenInstanceError, field, fields, record, replace


@record
class Point:
    """A doc string survives."""

    x: int
    y: int = 2
    tags: Mapping[str, str] = field(default_factory=dict)
    hidden: str = field(default="h", repr=False)

    def total(self) -> int:
        return self.x + self.y


@dataclasses.dataclass(frozen=True, slots=True)
class DPoint:
    x: int
    y: int = 2
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hidden: str = dataclasses.field(default="h", repr=False)


def test_construction_defaults_and_factories() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags, p.hidden) == (1, 2, {}, "h")
    assert Point(1).tags is not Point(1).tags  # a fresh dict each time
    assert Point(x=3, y=4, hidden="z").total() == 7
    assert Point.__doc__ == "A doc string survives."
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, {}, "h", 5)  # type: ignore[call-arg]


def test_repr_eq_hash_match_dataclasses() -> None:
    assert repr(Point(1, 3)) == repr(DPoint(1, 3)).replace("DPoint", "Point")
    assert Point(1) == Point(1)
    assert Point(1) != Point(2)
    assert Point(1) != _any(DPoint(1))
    assert hash(Point(1, tags=())) == hash(Point(1, tags=()))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(Point(1))  # a dict field is unhashable, as with dataclasses
    assert Point.__match_args__ == DPoint.__match_args__
    match Point(5, 6):
        case Point(x, y):
            assert (x, y) == (5, 6)


def test_frozen_slotted_and_picklable() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    with pytest.raises(AttributeError):
        _any(p).other = 1
    assert not hasattr(p, "__dict__")
    assert isinstance(FrozenInstanceError(), AttributeError)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(p, protocol=proto)) == p  # noqa: S301 - our own bytes
    assert copy.deepcopy(p) == p
    assert copy.copy(p) == p


def test_fields_and_replace() -> None:
    assert [f.name for f in fields(Point)] == [f.name for f in dataclasses.fields(DPoint)]
    assert [f.repr for f in fields(Point(1))] == [True, True, True, False]
    q = replace(Point(1, tags={"a": "b"}), y=9)
    assert (q.x, q.y, q.tags) == (1, 9, {"a": "b"})
    with pytest.raises(TypeError):
        replace(Point(1), z=1)


def test_post_init_runs_after_the_fields_are_set() -> None:
    @record
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    assert Checked(1).n == 1
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)


def test_a_field_without_default_after_one_with_default_is_refused() -> None:
    with pytest.raises(TypeError):

        @record
        class Bad:
            a: int = 1
            b: int  # type: ignore[misc]


@pytest.mark.parametrize(
    "imports",
    [
        "keycourier.cli.entry, keycourier.cli.helper_ops",  # token and exec
        "keycourier.cli.entry, keycourier.cli.provenance_ops, keycourier.ledger.sqlite, "
        # audit verify
        "keycourier.ledger.recorder, keycourier.ledger.checkpoints, keycourier.ledger.mirror",
    ],
)
def test_the_everyday_paths_do_not_import_dataclasses(imports: str) -> None:
    """What ``@record`` is for: token, exec and audit verify stay free of dataclasses (and
    the inspect, ast and dis modules it brings)."""
    code = (
        "import sys\n"
        f"import {imports}\n"
        "print(sorted(m for m in ('dataclasses', 'inspect') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def _any(value: Any) -> Any:
    return value
