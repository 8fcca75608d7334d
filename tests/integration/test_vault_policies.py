"""policies/vault/*.hcl in a real OpenBao: every allowed operation works, the rest is denied."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from keycourier import config
from keycourier.errors import AuthError
from keycourier.vault import doctor
from keycourier.vault.kv import (
    kv_list,
    kv_read,
    kv_read_metadata,
    kv_write,
    kv_write_custom_metadata,
)
from tests.support.openbao import BaoServer

POLICIES = Path(__file__).resolve().parents[2] / "policies" / "vault"
ROLES = ("sender", "receiver", "auditor", "token-helper")


@pytest.fixture(scope="module")
def clients(bao_dev: BaoServer) -> Iterator[dict[str, hvac.Client]]:
    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    suffix = uuid.uuid4().hex[:8]
    out: dict[str, hvac.Client] = {"root": admin}
    for role in ROLES:
        name = f"kc-{role}-{suffix}"
        admin.sys.create_or_update_policy(name=name, policy=(POLICIES / f"{role}.hcl").read_text())
        token = admin.auth.token.create(policies=[name], ttl="15m")["auth"]["client_token"]
        out[role] = hvac.Client(url=bao_dev.addr, token=token)
    yield out
    for role in ROLES:
        admin.sys.delete_policy(name=f"kc-{role}-{suffix}")


def denied(fn: Callable[[], object]) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        fn()


def test_allowed_operations(clients: dict[str, hvac.Client]) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    creds = f"handed-over/p{uuid.uuid4().hex[:8]}/xero"
    platform = f"platform/p{uuid.uuid4().hex[:8]}/monite"
    send, recv, aud, helper = (clients[r] for r in ROLES)
    admin = clients["root"]
    legacy = f"keycourier/handovers/{bid}"
    folder = f"{legacy}/events"
    hand = f"{folder}/l1-0000000001-00aa"
    hand2 = f"{folder}/l2-0000000002-00bb"
    ev = f"keycourier/events/token_issued/x-{bid}"
    kv_write(admin, "secret", legacy, {"seq": 0}, cas=0)  # the older layout
    # sender: create write-once event records, read them back and list them
    assert kv_write(send, "secret", hand, {"seq": 1}, cas=0) == 1
    meta = kv_read_metadata(send, "secret", hand)
    assert meta is not None
    assert meta.current_version == 1
    assert kv_read(send, "secret", hand) == {"seq": 1}
    assert kv_read(send, "secret", legacy) == {"seq": 0}
    assert kv_write(send, "secret", ev, {"seq": 3}, cas=0) == 1
    # sender: pin a ledger key once, create deny events, witness checkpoints, pin the
    # machine's ledger, list what audit verify --vault walks
    pin = f"keycourier/ledgers/l{uuid.uuid4().hex[:16]}"
    fp = f"kc1:{uuid.uuid4().hex}"
    deny = f"keycourier/denied/{fp}/events/l1-0000000004-00cc"
    checkpoint = f"keycourier/checkpoints/l{uuid.uuid4().hex[:16]}/0000000004"
    machine = f"keycourier/machines/m{uuid.uuid4().hex[:16]}"
    assert kv_write(send, "secret", pin, {"public_key": "ab"}, cas=0) == 1
    assert kv_read(send, "secret", pin) == {"public_key": "ab"}
    assert kv_write(send, "secret", deny, {"seq": 4}, cas=0) == 1
    assert kv_write(send, "secret", checkpoint, {"seq": 4}, cas=0) == 1
    assert kv_write(send, "secret", machine, {"ledger": "l1"}, cas=0) == 1
    assert kv_read(send, "secret", checkpoint) == {"seq": 4}
    assert f"{bid}/" in kv_list(send, "secret", "keycourier/handovers")
    assert hand.rsplit("/", 1)[1] in kv_list(send, "secret", folder)
    assert f"{fp}/" in kv_list(send, "secret", "keycourier/denied")
    assert "token_issued/" in kv_list(send, "secret", "keycourier/events")
    assert kv_list(send, "secret", "keycourier/events/token_issued")
    assert kv_list(send, "secret", checkpoint.rsplit("/", 1)[0]) == ["0000000004"]
    # receiver: the same record rights (it records opened/ingested and reads denies)
    assert kv_read(recv, "secret", deny) == {"seq": 4}
    assert kv_read(recv, "secret", pin) == {"public_key": "ab"}
    assert f"{bid}/" in kv_list(recv, "secret", "keycourier/handovers")
    assert kv_read(recv, "secret", hand) == {"seq": 1}
    assert kv_write(recv, "secret", hand2, {"seq": 2}, cas=0) == 1
    assert kv_write(recv, "secret", f"{checkpoint}1", {"seq": 5}, cas=0) == 1
    # receiver: write handed-over credentials with check-and-set, read their versions
    # (metadata, never the data) and set their custom_metadata
    assert kv_read_metadata(recv, "secret", creds) is None
    assert kv_write(recv, "secret", creds, {"client_id": "A", "client_secret": "B"}, cas=0)
    meta = kv_read_metadata(recv, "secret", creds)
    assert meta is not None
    assert meta.current_version == 1
    assert kv_write(recv, "secret", creds, {"client_id": "A", "client_secret": "C"}, cas=1) == 2
    kv_write_custom_metadata(recv, "secret", creds, {"bundle_id": bid})
    # auditor: read records, checkpoints and metadata (also of handed-over credentials), list
    assert kv_read(aud, "secret", hand) == {"seq": 1}
    assert kv_read(aud, "secret", legacy) == {"seq": 0}
    assert kv_read(aud, "secret", ev) == {"seq": 3}
    assert kv_read(aud, "secret", pin) == {"public_key": "ab"}
    assert kv_read(aud, "secret", deny) == {"seq": 4}
    assert kv_read(aud, "secret", checkpoint) == {"seq": 4}
    assert kv_read(aud, "secret", machine) == {"ledger": "l1"}
    pmeta = kv_read_metadata(aud, "secret", creds)
    assert pmeta is not None
    assert pmeta.custom_metadata == {"bundle_id": bid}
    listed = aud.secrets.kv.v2.list_secrets(path="keycourier/handovers", mount_point="secret")
    assert f"{bid}/" in listed["data"]["keys"]
    # token helper: read the platform API credentials (an administrator stores them)
    kv_write(admin, "secret", platform, {"client_id": "M", "client_secret": "N"}, cas=None)
    assert kv_read(helper, "secret", platform) == {"client_id": "M", "client_secret": "N"}
    # optional Transit signing: sender and receiver sign, the auditor verifies
    if "transit/" not in admin.sys.list_mounted_secrets_engines()["data"]:
        admin.sys.enable_secrets_engine("transit", path="transit")
    admin.secrets.transit.create_key("keycourier-provenance", key_type="ed25519")
    data = base64.b64encode(b"0" * 64).decode()
    sig = send.secrets.transit.sign_data("keycourier-provenance", hash_input=data)["data"][
        "signature"
    ]
    assert recv.secrets.transit.sign_data("keycourier-provenance", hash_input=data)["data"][
        "signature"
    ]
    check = aud.secrets.transit.verify_signed_data("keycourier-provenance", data, signature=sig)
    assert check["data"]["valid"] is True
    denied(lambda: helper.secrets.transit.sign_data("keycourier-provenance", hash_input=data))
    denied(lambda: aud.secrets.transit.sign_data("keycourier-provenance", hash_input=data))


def test_denied_operations(clients: dict[str, hvac.Client]) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    creds = f"handed-over/p{uuid.uuid4().hex[:8]}/quickbooks"
    legacy = f"keycourier/handovers/{bid}"
    hand = f"{legacy}/events/l1-0000000001-00aa"
    ev = f"keycourier/events/denied_fingerprint/x-{bid}"
    checkpoint = f"keycourier/checkpoints/l{uuid.uuid4().hex[:16]}/0000000001"
    machine = f"keycourier/machines/m{uuid.uuid4().hex[:16]}"
    admin = clients["root"]
    kv_write(admin, "secret", legacy, {"seq": 0}, cas=0)
    kv_write(admin, "secret", hand, {"seq": 1}, cas=0)
    kv_write(admin, "secret", ev, {"seq": 1}, cas=0)
    kv_write(admin, "secret", checkpoint, {"seq": 1}, cas=0)
    kv_write(admin, "secret", machine, {"ledger": "l1"}, cas=0)
    pin = f"keycourier/ledgers/l{uuid.uuid4().hex[:16]}"
    kv_write(admin, "secret", pin, {"public_key": "ab"}, cas=0)
    kv_write(admin, "secret", creds, {"client_id": "A", "client_secret": "B"}, cas=None)
    send, recv, aud, helper = (clients[r] for r in ROLES)
    kv = {r: clients[r].secrets.kv.v2 for r in ROLES}

    def add_version(role: str, path: str, cas: int | None = 1) -> Callable[[], object]:
        return lambda: kv[role].create_or_update_secret(
            path=path, secret={"a": "b"}, cas=cas, mount_point="secret"
        )

    cases: list[tuple[str, Callable[[], object]]] = [
        (
            "sender reads handed-over credentials",
            lambda: kv["sender"].read_secret_version(
                path=creds, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        ("sender writes handed-over credentials", add_version("sender", creds, None)),
        ("sender adds a version to an event record", add_version("sender", hand)),
        ("receiver adds a version to an event record", add_version("receiver", hand)),
        ("sender writes without cas to an event record", add_version("sender", hand, None)),
        ("sender appends to the older bundle record", add_version("sender", legacy)),
        ("receiver appends to the older bundle record", add_version("receiver", legacy)),
        (
            "sender creates a record outside events/",
            add_version("sender", f"{legacy}/other", 0),
        ),
        ("sender creates a bundle record", add_version("sender", legacy + "x", 0)),
        ("sender rewrites a witnessed checkpoint", add_version("sender", checkpoint)),
        ("receiver rewrites a witnessed checkpoint", add_version("receiver", checkpoint)),
        ("sender rewrites the machine's ledger", add_version("sender", machine)),
        (
            "sender soft-deletes a record",
            lambda: kv["sender"].delete_latest_version_of_secret(path=hand, mount_point="secret"),
        ),
        (
            "sender deletes versions",
            lambda: kv["sender"].delete_secret_versions(
                path=hand, versions=[1], mount_point="secret"
            ),
        ),
        (
            "sender destroys versions",
            lambda: kv["sender"].destroy_secret_versions(
                path=hand, versions=[1], mount_point="secret"
            ),
        ),
        (
            "sender deletes metadata",
            lambda: kv["sender"].delete_metadata_and_all_versions(path=hand, mount_point="secret"),
        ),
        (
            "sender shrinks max_versions",
            lambda: send.adapter.post(f"/v1/secret/metadata/{hand}", json={"max_versions": 1}),
        ),
        (
            "sender shrinks max_versions of the older record",
            lambda: send.adapter.post(f"/v1/secret/metadata/{legacy}", json={"max_versions": 1}),
        ),
        (
            "receiver sets delete_version_after on a record",
            lambda: recv.adapter.post(
                f"/v1/secret/metadata/{hand}", json={"delete_version_after": "1s"}
            ),
        ),
        (
            "sender sets custom_metadata on a record",
            lambda: send.adapter.post(
                f"/v1/secret/metadata/{hand}", json={"custom_metadata": {"a": "b"}}
            ),
        ),
        ("sender overwrites a write-once event", add_version("sender", ev, None)),
        ("sender replaces a pinned ledger key", add_version("sender", pin)),
        ("receiver replaces a pinned ledger key", add_version("receiver", pin, None)),
        (
            "sender deletes a pinned ledger key",
            lambda: kv["sender"].delete_metadata_and_all_versions(path=pin, mount_point="secret"),
        ),
        (
            "token helper reads a pinned ledger key",
            lambda: kv["token-helper"].read_secret_version(
                path=pin, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        ("sender writes outside keycourier/", add_version("sender", "other/x", None)),
        ("sender writes platform credentials", add_version("sender", "platform/x/y", None)),
        ("receiver writes platform credentials", add_version("receiver", "platform/x/y", None)),
        (
            "receiver reads handed-over credentials back",
            lambda: kv["receiver"].read_secret_version(
                path=creds, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        (
            "receiver destroys a record",
            lambda: kv["receiver"].destroy_secret_versions(
                path=hand, versions=[1], mount_point="secret"
            ),
        ),
        (
            "receiver sets delete_version_after",
            lambda: recv.adapter.post(
                f"/v1/secret/metadata/{creds}", json={"delete_version_after": "1s"}
            ),
        ),
        (
            "auditor reads handed-over credentials",
            lambda: kv["auditor"].read_secret_version(
                path=creds, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        ("auditor writes a record", add_version("auditor", hand)),
        ("auditor creates a record", add_version("auditor", hand + "x", 0)),
        ("auditor writes handed-over credentials", add_version("auditor", creds, None)),
        (
            "auditor deletes a record",
            lambda: kv["auditor"].delete_latest_version_of_secret(path=hand, mount_point="secret"),
        ),
        (
            "token helper reads a record",
            lambda: kv["token-helper"].read_secret_version(
                path=hand, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        (
            "token helper reads handed-over credentials",
            lambda: kv["token-helper"].read_secret_version(
                path=creds, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        ("token helper writes handed-over credentials", add_version("token-helper", creds, None)),
        (
            "token helper lists platform credentials",
            lambda: kv["token-helper"].list_secrets(path="platform", mount_point="secret"),
        ),
        (
            "token helper reads credential metadata",
            lambda: kv["token-helper"].read_secret_metadata(path=creds, mount_point="secret"),
        ),
        (
            "sender writes a policy",
            lambda: send.sys.create_or_update_policy(
                name="evil", policy='path "*" { capabilities = ["sudo"] }'
            ),
        ),
        ("auditor lists audit devices", lambda: aud.sys.list_enabled_audit_devices()),
        ("helper mounts an engine", lambda: helper.sys.enable_secrets_engine("kv", path="evil")),
    ]
    assert len(cases) >= 12
    for name, fn in cases:
        try:
            denied(fn)
        except BaseException as exc:
            raise AssertionError(f"not denied: {name}") from exc
    # nothing changed
    assert kv_read(admin, "secret", hand) == {"seq": 1}
    assert kv_read(admin, "secret", legacy) == {"seq": 0}
    assert kv_read(admin, "secret", checkpoint) == {"seq": 1}
    assert kv_read(admin, "secret", pin) == {"public_key": "ab"}
    assert kv_read(admin, "secret", creds) == {"client_id": "A", "client_secret": "B"}
    for path in (hand, legacy):
        meta = kv_read_metadata(admin, "secret", path)
        assert meta is not None
        assert meta.current_version == 1


def test_adapter_translates_denial_to_auth_error(clients: dict[str, hvac.Client]) -> None:
    with pytest.raises(AuthError, match="permission denied"):
        kv_read(clients["auditor"], "secret", "handed-over/x/y")


@pytest.mark.parametrize("role", ROLES)
def test_doctor_capabilities_match_each_policy(
    clients: dict[str, hvac.Client], bao_dev: BaoServer, tmp_path: Path, role: str
) -> None:
    token = str(clients[role].token)
    settings = config.load(
        env={"HOME": str(tmp_path), "VAULT_ADDR": bao_dev.addr, "VAULT_TOKEN": token}
    )
    own = doctor.run(settings, doctor.Role(role))
    assert own.checks[-1].status == doctor.Status.OK, own.checks[-1].detail
    others = [r for r in ROLES if r != role and not (role == "receiver" and r == "sender")]
    for other in others:
        report = doctor.run(settings, doctor.Role(other))
        assert report.checks[-1].status == doctor.Status.FAIL
        assert int(report.exit_code) == 5
