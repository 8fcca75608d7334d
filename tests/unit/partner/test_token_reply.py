"""The upstream token reply is validated strictly before anything prints it."""

from __future__ import annotations

import json

import pytest

from keycourier.errors import UnavailableError
from keycourier.partner.tokens import _upstream_message, parse_token_response


def _reply(token: str) -> bytes:
    return json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).encode()


def test_a_plain_token_is_accepted() -> None:
    token = parse_token_response(_reply("abc.DEF-123_~"), now=1_000_000.0)
    assert token.access_token.reveal() == "abc.DEF-123_~"


@pytest.mark.parametrize(
    "bad", ["abc\n", "abc\nX-Injected: 1", "a b", "\u00e9t\u00e9", "tab\there", ""]
)
def test_control_space_and_non_ascii_tokens_are_refused(bad: str) -> None:
    with pytest.raises(UnavailableError, match="no usable access_token"):
        parse_token_response(_reply(bad), now=1_000_000.0)


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"type": "auth", "message": "bad secret s3cr3t-v4lue\x1b[2J for cid-1\u202e"}},
        {"error": "invalid_client", "error_description": "s3cr3t-v4lue\nX-Forged: 1"},
        {"detail": [{"msg": "client s3cr3t-v4lue\x07"}]},
    ],
)
def test_an_error_body_is_shown_without_echoed_secrets_or_terminal_controls(
    body: dict[str, object],
) -> None:
    shown = _upstream_message(json.dumps(body).encode(), ("s3cr3t-v4lue", "cid-1"))
    assert shown
    assert "s3cr3t" not in shown
    assert "cid-1" not in shown
    assert shown.isprintable()
