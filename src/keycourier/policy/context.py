"""What comes with a key: endpoints, redirect URI, realm, Xero tenant.

These are the sandbox indicators the policy inspects. They arrive as command
options or in a small JSON context file; both are parsed here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from keycourier.errors import UsageError
from keycourier.files import read_limited

MAX_CONTEXT_BYTES: Final = 64 * 1024
MAX_FIELD_CHARS: Final = 2048
_REALM = re.compile(r"^[0-9]{1,30}\Z")


@dataclass(frozen=True, slots=True)
class SandboxContext:
    """Indicators that accompany a credential; every field is optional."""

    api_base: str | None = None
    userinfo_host: str | None = None
    redirect_uri: str | None = None
    realm_id: str | None = None
    realm_is_sandbox: bool = False
    xero_tenant_name: str | None = None
    xero_is_demo_company: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_STR_FIELDS: Final = ("api_base", "userinfo_host", "redirect_uri", "realm_id", "xero_tenant_name")
_BOOL_FIELDS: Final = ("realm_is_sandbox", "xero_is_demo_company")


def _check_text(name: str, value: str) -> str:
    if len(value) > MAX_FIELD_CHARS:
        raise UsageError(f"context field {name} is longer than {MAX_FIELD_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UsageError(f"context field {name} contains control characters")
    if name == "realm_id" and not _REALM.match(value):
        raise UsageError("the realm ID must be digits only (the QuickBooks company ID)")
    return value


def make_context(**values: str | bool | None) -> SandboxContext:
    """Build a context from already-typed values, validating each text field."""
    for name in _STR_FIELDS:
        value = values.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise UsageError(f"context field {name} must be text")
            _check_text(name, value)
    return SandboxContext(**values)  # type: ignore[arg-type]


def parse_context(data: bytes, where: str = "context file") -> SandboxContext:
    """Parse the JSON context document; unknown fields and wrong types are refused."""
    if len(data) > MAX_CONTEXT_BYTES:
        raise UsageError(f"{where} is larger than {MAX_CONTEXT_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{where} is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where} must hold a JSON object")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _STR_FIELDS:
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{where}: {key} must be a string")
            values[key] = value
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool) and not (
                key == "xero_is_demo_company" and value is None
            ):
                raise UsageError(f"{where}: {key} must be true or false")
            values[key] = value
        else:
            raise UsageError(
                f"{where}: unknown field {key!r}",
                hints=[f"known fields: {', '.join(_STR_FIELDS + _BOOL_FIELDS)}"],
            )
    try:
        return make_context(**values)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def parse_context_file(path: Path) -> SandboxContext:
    data = read_limited(path, f"context file {path}", MAX_CONTEXT_BYTES, refuse_larger=False)
    return parse_context(data, f"context file {path}")


def merge_contexts(base: SandboxContext, extra: SandboxContext) -> SandboxContext:
    """Combine the context file with options. A conflict is refused, never resolved.

    Boolean indicators combine with OR, so that neither source can hide the
    other's sandbox flag.
    """
    updates: dict[str, Any] = {}
    for name in _STR_FIELDS:
        a, b = getattr(base, name), getattr(extra, name)
        if a is not None and b is not None and a != b:
            raise UsageError(
                f"--{name.replace('_', '-')} conflicts with {name} in the context file"
            )
        updates[name] = a if a is not None else b
    updates["realm_is_sandbox"] = base.realm_is_sandbox or extra.realm_is_sandbox
    flags = [v for v in (base.xero_is_demo_company, extra.xero_is_demo_company) if v is not None]
    updates["xero_is_demo_company"] = any(flags) if flags else None
    return replace(base, **updates)
