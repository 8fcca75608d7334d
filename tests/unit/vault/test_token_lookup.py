"""``lookup_self`` against a stand-in Vault on 127.0.0.1: what it sends and how it reads replies."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from keycourier.errors import UnavailableError
from keycourier.redact import Secret
from keycourier.vault.token_lookup import TokenInfo, lookup_self

TOKEN = "hvs.caller-token-0123456789"  # made up


class StandIn:
    """Answers every ``lookup-self`` with ``status`` and ``body``; remembers the requests."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        return web.Response(status=self.status, body=self.body, content_type="application/json")


def _ask(
    status: int, body: Any, *, namespace: str | None = None, trailing_slash: bool = False
) -> tuple[TokenInfo | None, StandIn]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stand_in = StandIn(status, raw)

    async def main() -> TokenInfo | None:
        app = web.Application()
        app.router.add_get("/v1/auth/token/lookup-self", stand_in.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        addr = f"http://127.0.0.1:{port}" + ("/" if trailing_slash else "")
        try:
            async with aiohttp.ClientSession() as session:
                return await lookup_self(
                    session, addr, Secret(TOKEN), namespace=namespace, cacert=None, timeout=5.0
                )
        finally:
            await runner.cleanup()

    return asyncio.run(main()), stand_in


def test_an_accepted_token_is_read_into_its_policies_ttl_and_names() -> None:
    data = {
        "policies": ["default", "kc-helper"],
        "identity_policies": ["team"],
        "ttl": 120,
        "display_name": "token-ci",
        "accessor": "acc-1",
    }
    info, stand_in = _ask(200, {"data": data}, namespace="team-a", trailing_slash=True)
    assert info == TokenInfo(frozenset({"default", "kc-helper", "team"}), 120, "token-ci", "acc-1")
    [(path, headers)] = stand_in.seen
    assert path == "/v1/auth/token/lookup-self"
    assert headers["X-Vault-Token"] == TOKEN
    assert headers["X-Vault-Namespace"] == "team-a"


def test_no_namespace_header_without_a_namespace() -> None:
    _, stand_in = _ask(200, {"data": {}})
    assert "X-Vault-Namespace" not in stand_in.seen[0][1]


@pytest.mark.parametrize(
    ("data", "ttl", "name", "accessor"),
    [
        ({"ttl": 0, "accessor": "acc-2"}, None, "acc-2", "acc-2"),  # no display name: accessor
        ({"ttl": "60"}, None, "token", "token"),  # neither: "token"
        ({"ttl": 7, "display_name": "n" * 100}, 7, "n" * 64, "n" * 64),
    ],
)
def test_missing_or_odd_fields(
    data: dict[str, Any], ttl: int | None, name: str, accessor: str
) -> None:
    info, _ = _ask(200, {"data": data})
    assert info == TokenInfo(frozenset(), ttl, name, accessor)


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_refused_token_is_none(status: int) -> None:
    assert _ask(status, {"errors": ["permission denied"]})[0] is None


@pytest.mark.parametrize("body", [{"data": None}, {"data": ["x"]}, ["data"], "data"])
def test_a_reply_without_a_data_object_is_none(body: Any) -> None:
    assert _ask(200, body)[0] is None


@pytest.mark.parametrize(("status", "body"), [(500, {}), (503, {}), (200, b"not json")])
def test_an_unusable_answer_is_unavailable(status: int, body: Any) -> None:
    with pytest.raises(UnavailableError):
        _ask(status, body)


def test_no_vault_listening_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await lookup_self(
                session,
                f"http://127.0.0.1:{port}",
                Secret(TOKEN),
                namespace=None,
                cacert=None,
                timeout=5.0,
            )

    with pytest.raises(UnavailableError, match="cannot verify the Vault token"):
        asyncio.run(main())
