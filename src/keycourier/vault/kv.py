"""KV v2 over hvac: read a version or the metadata, write with check-and-set, list.

Every function takes a logged-in hvac client (``client.connect``) and a mount, checks the
path (``paths.check_path``) and translates any failure (``errors``); a path with nothing
at it is ``None`` (or an empty list), not an error. :class:`VaultKv` binds a client and a
mount for ``ingest`` (it is the ``handover.KvStore`` port).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keycourier.vault.client import connect, ping
from keycourier.vault.errors import call, translate
from keycourier.vault.paths import check_path

if TYPE_CHECKING:
    import hvac

    from keycourier.config import Settings


@dataclass(frozen=True, slots=True)
class KvVersion:
    """One version of a KV v2 secret. ``data`` is None for deleted/destroyed versions."""

    version: int
    data: Mapping[str, Any] | None
    created_time: str
    deletion_time: str
    destroyed: bool
    custom_metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KvMetadata:
    current_version: int
    versions: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    custom_metadata: Mapping[str, Any] = field(default_factory=dict)


def _is_404(fn: Callable[..., Any], *args: object, **kwargs: object) -> tuple[bool, Any]:
    import hvac.exceptions as hx

    try:
        return False, fn(*args, **kwargs)
    except hx.InvalidPath:
        return True, None


def kv_read(client: hvac.Client, mount: str, path: str) -> Mapping[str, Any] | None:
    """The latest data of a KV v2 secret, or None when there is none (or it was deleted)."""
    found = kv_read_version(client, mount, path)
    return None if found is None else found.data


def kv_read_version(
    client: hvac.Client, mount: str, path: str, version: int | None = None
) -> KvVersion | None:
    """One version (default: the latest) or None when absent. Deleted versions have data None."""
    check_path(path)
    where = f"a read of {mount}/{path}"
    try:
        missing, resp = _is_404(
            client.secrets.kv.v2.read_secret_version,
            path=path,
            mount_point=mount,
            version=version,
            raise_on_deleted_version=False,
        )
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return None
    body = resp.get("data") or {}
    meta = body.get("metadata") or {}
    data = body.get("data")
    return KvVersion(
        version=int(meta.get("version") or 0),
        data=data if isinstance(data, dict) else None,
        created_time=str(meta.get("created_time") or ""),
        deletion_time=str(meta.get("deletion_time") or ""),
        destroyed=bool(meta.get("destroyed")),
        custom_metadata=meta.get("custom_metadata"),
    )


def kv_write(
    client: hvac.Client, mount: str, path: str, data: Mapping[str, Any], *, cas: int | None
) -> int:
    """Write a new version (with check-and-set when ``cas`` is given); return its number."""
    check_path(path)
    resp = call(
        f"a write to {mount}/{path}",
        client.secrets.kv.v2.create_or_update_secret,
        path=path,
        secret=dict(data),
        cas=cas,
        mount_point=mount,
    )
    return int(resp["data"]["version"])


def kv_read_metadata(client: hvac.Client, mount: str, path: str) -> KvMetadata | None:
    check_path(path)
    where = f"a metadata read of {mount}/{path}"
    try:
        missing, resp = _is_404(
            client.secrets.kv.v2.read_secret_metadata, path=path, mount_point=mount
        )
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return None
    body = resp.get("data") or {}
    versions = {int(k): v for k, v in (body.get("versions") or {}).items()}
    return KvMetadata(
        current_version=int(body.get("current_version") or 0),
        versions=versions,
        custom_metadata=dict(body.get("custom_metadata") or {}),
    )


def kv_list(client: hvac.Client, mount: str, path: str) -> list[str]:
    """The key names directly under ``path`` (folders end with "/"); empty when there are none."""
    check_path(path)
    where = f"a list of {mount}/{path}"
    try:
        missing, resp = _is_404(client.secrets.kv.v2.list_secrets, path=path, mount_point=mount)
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return []
    keys = (resp.get("data") or {}).get("keys") or []
    return [str(k) for k in keys if isinstance(k, str)]


def kv_write_custom_metadata(
    client: hvac.Client, mount: str, path: str, custom: Mapping[str, str]
) -> None:
    """Set ``custom_metadata`` (only that: the write carries no other metadata parameter)."""
    check_path(path)
    call(
        f"a metadata write to {mount}/{path}",
        client.adapter.post,
        f"/v1/{mount}/metadata/{path}",
        json={"custom_metadata": {str(k): str(v)[:512] for k, v in custom.items()}},
    )


class VaultKv:
    """The KV v2 operations of ingest (``handover.KvStore``) on one mount of a client."""

    def __init__(self, client: hvac.Client, mount: str) -> None:
        self.client = client
        self.mount = mount

    @classmethod
    def connect(cls, settings: Settings) -> VaultKv:
        """The KV mount of ``settings.vault``, logged in as ``connect`` does; checked
        reachable (``ping``) so that a script fails before it opens anything."""
        client = connect(settings)
        ping(client)
        return cls(client, settings.vault.mount)

    def read_metadata(self, path: str) -> KvMetadata | None:
        return kv_read_metadata(self.client, self.mount, path)

    def write(self, path: str, data: Mapping[str, str], *, cas: int) -> int:
        return kv_write(self.client, self.mount, path, data, cas=cas)

    def write_metadata(self, path: str, custom: Mapping[str, str]) -> None:
        kv_write_custom_metadata(self.client, self.mount, path, custom)
