"""Frozen, slotted value classes for the start-up paths, without the dataclasses module.

``keycourier token`` and ``exec`` are run all day by CI and a cached token is served in a
few milliseconds, so start-up is most of their cost. ``dataclasses`` imports ``inspect``
(and with it ``ast``, ``dis``, ``tokenize``) and rebuilds every ``slots=True`` class, about
a third of those commands' own import time. ``@record`` gives the classes on those paths
what they use of ``@dataclass(frozen=True, slots=True)``: an ``__init__`` with the fields
in order (defaults and ``field(default_factory=..., repr=False)``) that calls
``__post_init__`` when the class has one, ``__repr__``,
``__eq__``, ``__hash__``, ``__match_args__``, immutability and pickling, and it tells type
checkers so (PEP 681). ``fields`` and ``replace`` stand in for the dataclasses functions.
tests/unit/test_record.py holds them to dataclasses' behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a record (as ``dataclasses.FrozenInstanceError``)."""


class Field:
    __slots__ = ("default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool) -> None:  # noqa: ANN401
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def field(
    *,
    default: Any = MISSING,  # noqa: ANN401 - any value
    default_factory: Callable[[], Any] = MISSING,
    repr: bool = True,
) -> Any:  # noqa: ANN401 - stands for the field's value in the class body
    return Field(default, default_factory, repr)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar", "Final", "typing.Final"))


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    cls = obj if isinstance(obj, type) else type(obj)
    found: tuple[Field, ...] = cls.__dict__["__record_fields__"]
    return found


def replace(obj: T, /, **changes: Any) -> T:  # noqa: ANN401 - any field value
    """A copy of record ``obj`` with ``changes`` (as ``dataclasses.replace``, which it calls
    for a dataclass)."""
    if "__record_fields__" not in type(obj).__dict__:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(obj)(**values)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, slotted value class of its annotated fields."""
    own = cls.__dict__
    names = [n for n, a in own.get("__annotations__", {}).items() if not _is_classvar(a)]
    specs: list[Field] = []
    for name in names:
        value = own.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(value, MISSING, True)
        spec.name = name
        specs.append(spec)
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_set": object.__setattr__, "MISSING": MISSING}
    seen_default = False
    for i, spec in enumerate(specs):
        if spec.default is not MISSING:
            env[f"_d{i}"] = spec.default
            params.append(f"{spec.name}=_d{i}")
            seen_default = True
        elif spec.default_factory is not MISSING:
            env[f"_f{i}"] = spec.default_factory
            params.append(f"{spec.name}=MISSING")
            body.append(f" if {spec.name} is MISSING: {spec.name} = _f{i}()")
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default field {spec.name!r} follows a default field")
        else:
            params.append(spec.name)
        body.append(f" _set(self, {spec.name!r}, {spec.name})")
    if "__post_init__" in own:
        body.append(" self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or " pass") + "\n"
    exec(source, env)  # noqa: S102 - generated from the class's own field names
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"

    shown = tuple(s.name for s in specs if s.repr)
    every = tuple(names)

    def __repr__(self: Any) -> str:  # noqa: ANN401, N807
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:  # noqa: ANN401, N807
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in every)

    def __hash__(self: Any) -> int:  # noqa: ANN401, N807
        return hash(tuple(getattr(self, n) for n in every))

    def __getstate__(self: Any) -> tuple[Any, ...]:  # noqa: ANN401, N807
        return tuple(getattr(self, n) for n in every)

    def __setstate__(self: Any, state: tuple[Any, ...]) -> None:  # noqa: ANN401, N807
        for n, v in zip(every, state, strict=True):
            object.__setattr__(self, n, v)

    ns = {k: v for k, v in own.items() if k not in names and k not in ("__dict__", "__weakref__")}
    ns.update(
        __slots__=every,
        __init__=init,
        __eq__=__eq__,
        __hash__=__hash__,
        __getstate__=__getstate__,
        __setstate__=__setstate__,
        __setattr__=_frozen_setattr,
        __delattr__=_frozen_delattr,
        __match_args__=every,
        __record_fields__=tuple(specs),
    )
    if "__repr__" not in own:
        ns["__repr__"] = __repr__
    made: type[T] = type(cls.__name__, cls.__bases__, ns)
    return made
