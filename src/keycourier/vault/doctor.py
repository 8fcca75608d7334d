"""``keycourier doctor``: is Vault reachable, unsealed, KV v2, audited, and is the token enough?"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keycourier._record import record
from keycourier.errors import AuthError, Error, ExitCode, UnavailableError
from keycourier.vault.client import connect
from keycourier.vault.errors import translate

if TYPE_CHECKING:
    from keycourier.config import Settings


class Role(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"
    AUDITOR = "auditor"
    TOKEN_HELPER = "token-helper"  # noqa: S105 - a role name


# What each role needs, as (path under the mount, capabilities); "x" stands for any name.
ROLE_NEEDS: Mapping[Role, tuple[tuple[str, frozenset[str]], ...]] = {
    Role.SENDER: (
        ("data/keycourier/handovers/x/events/x", frozenset({"create", "read"})),
        ("metadata/keycourier/handovers/x", frozenset({"read", "list"})),
        ("data/keycourier/denied/x/events/x", frozenset({"create", "read"})),
        ("metadata/keycourier/denied/x", frozenset({"read", "list"})),
        ("data/keycourier/events/x/x", frozenset({"create", "read"})),
        ("metadata/keycourier/events/x/x", frozenset({"read", "list"})),
        ("data/keycourier/ledgers/x", frozenset({"create", "read"})),
        ("data/keycourier/checkpoints/x/x", frozenset({"create", "read"})),
        ("metadata/keycourier/checkpoints/x", frozenset({"read", "list"})),
        ("data/keycourier/machines/x", frozenset({"create", "read"})),
    ),
    Role.RECEIVER: (
        ("data/keycourier/handovers/x/events/x", frozenset({"create", "read"})),
        ("metadata/keycourier/handovers/x", frozenset({"read", "list"})),
        ("data/keycourier/denied/x/events/x", frozenset({"create", "read"})),
        ("data/keycourier/events/x/x", frozenset({"create", "read"})),
        ("data/keycourier/ledgers/x", frozenset({"create", "read"})),
        ("data/keycourier/checkpoints/x/x", frozenset({"create", "read"})),
        ("data/keycourier/machines/x", frozenset({"create", "read"})),
        ("data/handed-over/x", frozenset({"create", "update"})),
        ("metadata/handed-over/x", frozenset({"read", "update"})),
    ),
    Role.AUDITOR: (
        ("data/keycourier/handovers/x/events/x", frozenset({"read"})),
        ("metadata/keycourier/handovers/x", frozenset({"read", "list"})),
        ("data/keycourier/denied/x/events/x", frozenset({"read"})),
        ("data/keycourier/events/x/x", frozenset({"read"})),
        ("data/keycourier/ledgers/x", frozenset({"read"})),
        ("data/keycourier/checkpoints/x/x", frozenset({"read"})),
        ("metadata/handed-over/x", frozenset({"read", "list"})),
    ),
    Role.TOKEN_HELPER: (("data/platform/x", frozenset({"read"})),),
}


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@record
class Check:
    name: str
    status: Status
    detail: str
    exit_code: ExitCode = ExitCode.OK


@record
class DoctorReport:
    addr: str | None
    checks: tuple[Check, ...]

    @property
    def exit_code(self) -> ExitCode:
        codes = [c.exit_code for c in self.checks if c.status == Status.FAIL]
        if not codes:
            return ExitCode.OK
        # unavailable beats auth beats config: fix reachability first
        for code in (ExitCode.UNAVAILABLE, ExitCode.AUTH, ExitCode.CONFIG):
            if code in codes:
                return code
        return codes[0]


def _get(client: Any, url: str) -> Any:  # noqa: ANN401 - hvac returns dicts or Responses
    return client.adapter.get(url)


def run(settings: Settings, role: Role | None) -> DoctorReport:
    vs = settings.vault
    if not vs.addr:
        return DoctorReport(
            None,
            (
                Check(
                    "vault", Status.SKIP, "no Vault configured: local ledger only (set VAULT_ADDR)"
                ),
            ),
        )
    checks: list[Check] = []
    import hvac

    probe = hvac.Client(
        url=vs.addr,
        namespace=vs.namespace,
        timeout=vs.timeout,
        verify=str(vs.cacert) if vs.cacert else True,
    )
    try:
        seal = probe.sys.read_seal_status()
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        err = translate(exc, "the seal-status check")
        checks.append(Check("reachable", Status.FAIL, err.message, err.exit_code))
        return DoctorReport(vs.addr, tuple(checks))
    version = str(seal.get("version", "?"))
    checks.append(Check("reachable", Status.OK, f"{vs.addr} answers (server {version})"))
    if not seal.get("initialized", True):
        checks.append(
            Check("sealed", Status.FAIL, "Vault is not initialised", ExitCode.UNAVAILABLE)
        )
        return DoctorReport(vs.addr, tuple(checks))
    if seal.get("sealed"):
        checks.append(
            Check("sealed", Status.FAIL, "Vault is sealed: unseal it", ExitCode.UNAVAILABLE)
        )
        return DoctorReport(vs.addr, tuple(checks))
    checks.append(Check("sealed", Status.OK, "unsealed"))

    try:
        client = connect(settings)
        me = client.auth.token.lookup_self()["data"]
    except Error as err:
        checks.append(Check("token", Status.FAIL, err.message, err.exit_code))
        return DoctorReport(vs.addr, tuple(checks))
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        bad = translate(exc, "the token look-up")
        checks.append(Check("token", Status.FAIL, bad.message, bad.exit_code))
        return DoctorReport(vs.addr, tuple(checks))
    policies = ", ".join(
        sorted(set(me.get("policies") or []) | set(me.get("identity_policies") or []))
    )
    ttl = me.get("ttl")
    checks.append(
        Check(
            "token", Status.OK, f"{vs.auth} log-in ok; policies: {policies or 'none'}; ttl {ttl}s"
        )
    )

    checks.append(_kv_check(client, vs.mount))
    checks.append(_audit_check(client))
    if role is not None:
        checks.append(_capability_check(client, vs.mount, role))
    return DoctorReport(vs.addr, tuple(checks))


def _kv_check(client: Any, mount: str) -> Check:  # noqa: ANN401
    try:
        resp = _get(client, f"/v1/sys/internal/ui/mounts/{mount}")
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        err = translate(exc, f"the mount check of {mount}/")
        status = Status.WARN if isinstance(err, AuthError) else Status.FAIL
        code = ExitCode.OK if status == Status.WARN else err.exit_code
        return Check("kv mount", status, err.message, code)
    data = (resp or {}).get("data") or {}
    kind = data.get("type")
    kv_version = str((data.get("options") or {}).get("version") or "1")
    if kind != "kv":
        return Check(
            "kv mount", Status.FAIL, f"{mount}/ is not a KV mount ({kind})", ExitCode.CONFIG
        )
    if kv_version != "2":
        return Check(
            "kv mount",
            Status.FAIL,
            f"{mount}/ is KV version {kv_version}; keycourier needs 2",
            ExitCode.CONFIG,
        )
    return Check("kv mount", Status.OK, f"{mount}/ is KV version 2")


def _audit_check(client: Any) -> Check:  # noqa: ANN401
    try:
        resp = _get(client, "/v1/sys/audit")
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        err = translate(exc, "the audit-device listing")
        if isinstance(err, UnavailableError):
            return Check("audit device", Status.FAIL, err.message, err.exit_code)
        return Check(
            "audit device",
            Status.WARN,
            "unknown: this token may not list audit devices (needs sudo)",
        )
    devices = (resp or {}).get("data") or {}
    if not devices:
        return Check(
            "audit device",
            Status.WARN,
            "no audit device enabled; OpenBao 2.4+ enables them only in the server configuration "
            "file (keycourier does not try through the API)",
        )
    return Check("audit device", Status.OK, "enabled: " + ", ".join(sorted(devices)))


def _capability_check(client: Any, mount: str, role: Role) -> Check:  # noqa: ANN401
    needs = ROLE_NEEDS[role]
    paths = [f"{mount}/{p}" for p, _ in needs]
    try:
        resp = client.adapter.post("/v1/sys/capabilities-self", json={"paths": paths})
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        err = translate(exc, "sys/capabilities-self")
        return Check(f"role {role}", Status.FAIL, err.message, err.exit_code)
    body = (resp or {}).get("data") or resp or {}
    missing: list[str] = []
    for (_path, caps), full in zip(needs, paths, strict=True):
        have = set(body.get(full) or [])
        if "root" in have:
            continue
        lacking = sorted(caps - have)
        if lacking:
            missing.append(f"{full}: {','.join(lacking)}")
    if missing:
        return Check(
            f"role {role}",
            Status.FAIL,
            f"the token lacks: {'; '.join(missing)} (see policies/vault/{role}.hcl)",
            ExitCode.AUTH,
        )
    return Check(f"role {role}", Status.OK, f"the token's policies allow what a {role} needs")
