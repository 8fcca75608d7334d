"""Random, valid-looking test credentials (secrets module; never real keys).

Values are drawn until they avoid the policy's own placeholder words and long
runs, so that a random draw cannot trip a rule by chance and make a test flaky.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
from functools import cache

from keycourier.policy import load_policy
from keycourier.policy.rules import longest_repeat_run, longest_sequential_run
from tests.support.random_text import ALNUM

HEX_UPPER = "0123456789ABCDEF"
URLSAFE = ALNUM + "-_"


@cache
def _words() -> tuple[str, ...]:
    return tuple(w.casefold() for w in load_policy(None).param("placeholder", "words"))


def _acceptable(value: str) -> bool:
    folded = value.casefold()
    return (
        not any(w in folded for w in _words())
        and longest_repeat_run(value) <= 3
        and longest_sequential_run(value) <= 3
        and not value.startswith("eyJ")
        and not value.startswith("AB11")
    )


def draw(alphabet: str, length: int, prefix: str = "") -> str:
    while True:
        value = prefix + "".join(secrets.choice(alphabet) for _ in range(length))
        if _acceptable(value):
            return value


def qb_client_id(prefix: str = "AB") -> str:
    return draw(ALNUM, 48, prefix)


def qb_secret() -> str:
    return draw(ALNUM, 40)


def xero_client_id() -> str:
    return draw(HEX_UPPER, 32)


def xero_secret(length: int = 48) -> str:
    return draw(URLSAFE, length)


def intuit_refresh_token() -> str:
    """Shaped like an Intuit refresh token: AB11, an epoch-like number, then letters."""
    digits = "".join(secrets.choice(string.digits) for _ in range(10))
    return "AB11" + digits + "".join(secrets.choice(ALNUM) for _ in range(36))


def fake_jwt() -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64(json.dumps({"alg": "RS256", "kid": secrets.token_hex(4)}).encode())
    payload = b64(json.dumps({"sub": secrets.token_hex(8), "exp": 1}).encode())
    return f"{header}.{payload}.{b64(secrets.token_bytes(64))}"
