from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keycourier.redact import printable


def test_printable_text_is_left_alone() -> None:
    assert printable("Zahlung für Müller GmbH: 100 €") == "Zahlung für Müller GmbH: 100 €"


def test_terminal_controls_and_bidi_become_visible_escapes() -> None:
    assert printable("ok\x1b[31mred\u202egnp.exe\n") == "ok\\x1b[31mred\\u202egnp.exe\\x0a"
    assert printable("a\u2028b\x00") == "a\\u2028b\\x00"
    assert printable("\U000e0001x") == "\\U000e0001x"  # never read as \\ue000 + "1x"


def test_long_text_is_cut_with_an_ellipsis() -> None:
    assert printable("a" * 10, limit=4) == "aaaa…"
    assert printable("a" * 4, limit=4) == "aaaa"


def test_secrets_are_scrubbed_before_anything_else() -> None:
    secret = "s3cr3t-\x1bvalue"
    assert printable(f"bad secret {secret}!", scrub=(secret, "")) == "bad secret ****!"


@given(st.text(max_size=300), st.integers(min_value=1, max_value=400))
def test_the_result_is_always_printable_and_bounded(text: str, limit: int) -> None:
    out = printable(text, limit)
    assert out.isprintable()
    shown = out.removesuffix("…") if len(text) > limit else out
    # each of the first `limit` characters is kept or becomes one escape of at most 10
    assert len(shown) <= 10 * min(len(text), limit)


def test_applying_it_twice_changes_nothing_more() -> None:
    once = printable("denied\x1b[2J\u202e")
    assert once == "denied\\x1b[2J\\u202e"
    assert printable(once) == once


def test_letters_that_show_as_nothing_are_escaped() -> None:
    assert printable("a\u3164b\u2800c") == "a\\u3164b\\u2800c"
