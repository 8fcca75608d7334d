"""A manifest's bundle_id is checked without the uuid module, to the same verdicts."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from keycourier.bundle.model import _UUID4


def _uuid_module_accepts(text: str) -> bool:
    """The previous check: uuid.UUID parses it, writes it back unchanged, version 4."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return str(parsed) == text and parsed.version == 4


def _mutations(u: uuid.UUID) -> st.SearchStrategy[str]:
    text = str(u)
    hexdigits = "0123456789abcdefABCDEF"
    at = st.integers(0, len(text) - 1)
    return st.one_of(
        st.just(text),
        st.just(text.upper()),
        st.just(u.hex),
        st.just("{" + text + "}"),
        st.just("urn:uuid:" + text),
        st.just(text + "\n"),
        st.tuples(at, st.sampled_from([*hexdigits, "-", "g", " ", ""])).map(
            lambda p: text[: p[0]] + p[1] + text[p[0] + 1 :]
        ),
        st.sampled_from(hexdigits).map(lambda c: text[:14] + c + text[15:]),  # version
        st.sampled_from(hexdigits).map(lambda c: text[:19] + c + text[20:]),  # variant
    )


@given(st.uuids().flatmap(_mutations))
def test_the_pattern_accepts_what_uuid_accepted(text: str) -> None:
    assert (_UUID4.fullmatch(text) is not None) == _uuid_module_accepts(text), text


@given(st.text(alphabet="0123456789abcdef-", min_size=30, max_size=40))
def test_the_pattern_agrees_on_arbitrary_hex_text(text: str) -> None:
    assert (_UUID4.fullmatch(text) is not None) == _uuid_module_accepts(text), text


def test_a_fresh_bundle_id_is_accepted() -> None:
    assert _UUID4.fullmatch(str(uuid.uuid4()))
    assert not _UUID4.fullmatch(str(uuid.uuid1()))  # version 1
