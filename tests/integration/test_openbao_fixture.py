from __future__ import annotations

from tests.support.openbao import BaoServer, health


def test_dev_server_is_unsealed_and_answers(bao_dev: BaoServer) -> None:
    info = health(bao_dev.addr)
    assert info["initialized"] is True
    assert info["sealed"] is False
    assert bao_dev.addr.startswith("http://127.0.0.1:")
