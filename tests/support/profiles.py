"""A valid token profile table, for tests that vary one key of it."""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "dialect": "monite",
    "base_url": "https://api.sandbox.monite.com/v1",
    "environment": "sandbox",
    "version": "2024-05-25",
    "client_id_env": "MONITE_CLIENT_ID",
    "client_secret_env": "MONITE_CLIENT_SECRET",
}
