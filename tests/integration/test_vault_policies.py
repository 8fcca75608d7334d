"""policies/vault/*.hcl in a real OpenBao: every allowed operation works, the rest is denied."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from keycourier import config, vault
from keycourier.errors import AuthError
from keycourier.ledger import doctor
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
    partner = f"partners/p{uuid.uuid4().hex[:8]}/xero"
    send, recv, aud, helper = (clients[r] for r in ROLES)
    hand = f"keycourier/handovers/{bid}"
    ev = f"keycourier/events/token_issued/x-{bid}"
    # sender: create with cas=0, append with cas, custom_metadata, read back, write-once events
    assert vault.kv_write(send, "secret", hand, {"seq": 1}, cas=0) == 1
    assert vault.kv_write(send, "secret", hand, {"seq": 2}, cas=1) == 2
    vault.kv_write_custom_metadata(send, "secret", hand, {"bundle_id": bid})
    meta = vault.kv_read_metadata(send, "secret", hand)
    assert meta is not None
    assert meta.current_version == 2
    assert vault.kv_read(send, "secret", hand) == {"seq": 2}
    assert vault.kv_write(send, "secret", ev, {"seq": 3}, cas=0) == 1
    # sender: pin a ledger key once, append deny records, list what audit verify --vault walks
    pin = f"keycourier/ledgers/l{uuid.uuid4().hex[:16]}"
    deny = f"keycourier/denied/kc1:{uuid.uuid4().hex}"
    assert vault.kv_write(send, "secret", pin, {"public_key": "ab"}, cas=0) == 1
    assert vault.kv_read(send, "secret", pin) == {"public_key": "ab"}
    assert vault.kv_write(send, "secret", deny, {"seq": 1}, cas=0) == 1
    assert vault.kv_write(send, "secret", deny, {"seq": 2}, cas=1) == 2
    vault.kv_write_custom_metadata(send, "secret", deny, {"fingerprint": "kc1:x"})
    assert bid in vault.kv_list(send, "secret", "keycourier/handovers")
    assert deny.rsplit("/", 1)[1] in vault.kv_list(send, "secret", "keycourier/denied")
    assert "token_issued/" in vault.kv_list(send, "secret", "keycourier/events")
    assert vault.kv_list(send, "secret", "keycourier/events/token_issued")
    # receiver: the same record rights (it records opened/ingested and reads denies)
    assert vault.kv_read(recv, "secret", deny) == {"seq": 2}
    assert vault.kv_read(recv, "secret", pin) == {"public_key": "ab"}
    assert bid in vault.kv_list(recv, "secret", "keycourier/handovers")
    # receiver: read and append handover records, write partner credentials and their metadata
    assert vault.kv_read(recv, "secret", hand) == {"seq": 2}
    assert vault.kv_write(recv, "secret", hand, {"seq": 4}, cas=2) == 3
    assert (
        vault.kv_write(recv, "secret", partner, {"client_id": "A", "client_secret": "B"}, cas=None)
        == 1
    )
    assert (
        vault.kv_write(recv, "secret", partner, {"client_id": "A", "client_secret": "C"}, cas=None)
        == 2
    )
    vault.kv_write_custom_metadata(recv, "secret", partner, {"bundle_id": bid})
    # auditor: read records and metadata (also of partner credentials), list
    assert vault.kv_read(aud, "secret", hand) == {"seq": 4}
    assert vault.kv_read(aud, "secret", ev) == {"seq": 3}
    assert vault.kv_read(aud, "secret", pin) == {"public_key": "ab"}
    assert vault.kv_read(aud, "secret", deny) == {"seq": 2}
    pmeta = vault.kv_read_metadata(aud, "secret", partner)
    assert pmeta is not None
    assert pmeta.custom_metadata == {"bundle_id": bid}
    listed = aud.secrets.kv.v2.list_secrets(path="keycourier/handovers", mount_point="secret")
    assert bid in listed["data"]["keys"]
    # token helper: read the partner credentials
    assert vault.kv_read(helper, "secret", partner) == {"client_id": "A", "client_secret": "C"}
    # optional Transit signing: sender and receiver sign, the auditor verifies
    admin = clients["root"]
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
    partner = f"partners/p{uuid.uuid4().hex[:8]}/quickbooks"
    hand = f"keycourier/handovers/{bid}"
    ev = f"keycourier/events/denied_fingerprint/x-{bid}"
    admin = clients["root"]
    vault.kv_write(admin, "secret", hand, {"seq": 1}, cas=0)
    vault.kv_write(admin, "secret", ev, {"seq": 1}, cas=0)
    pin = f"keycourier/ledgers/l{uuid.uuid4().hex[:16]}"
    vault.kv_write(admin, "secret", pin, {"public_key": "ab"}, cas=0)
    vault.kv_write(admin, "secret", partner, {"client_id": "A", "client_secret": "B"}, cas=None)
    send, recv, aud, helper = (clients[r] for r in ROLES)
    kv = {r: clients[r].secrets.kv.v2 for r in ROLES}
    cases: list[tuple[str, Callable[[], object]]] = [
        (
            "sender reads partner secret",
            lambda: kv["sender"].read_secret_version(
                path=partner, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        (
            "sender writes partner secret",
            lambda: kv["sender"].create_or_update_secret(
                path=partner, secret={"a": "b"}, mount_point="secret"
            ),
        ),
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
            "sender overwrites a write-once event",
            lambda: kv["sender"].create_or_update_secret(
                path=ev, secret={"a": "b"}, mount_point="secret"
            ),
        ),
        (
            "sender replaces a pinned ledger key",
            lambda: kv["sender"].create_or_update_secret(
                path=pin, secret={"public_key": "cd"}, cas=1, mount_point="secret"
            ),
        ),
        (
            "receiver replaces a pinned ledger key",
            lambda: kv["receiver"].create_or_update_secret(
                path=pin, secret={"public_key": "cd"}, mount_point="secret"
            ),
        ),
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
        (
            "sender writes outside keycourier/",
            lambda: kv["sender"].create_or_update_secret(
                path="other/x", secret={"a": "b"}, mount_point="secret"
            ),
        ),
        (
            "receiver reads partner secret back",
            lambda: kv["receiver"].read_secret_version(
                path=partner, mount_point="secret", raise_on_deleted_version=True
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
                f"/v1/secret/metadata/{partner}", json={"delete_version_after": "1s"}
            ),
        ),
        (
            "auditor reads partner secret",
            lambda: kv["auditor"].read_secret_version(
                path=partner, mount_point="secret", raise_on_deleted_version=True
            ),
        ),
        (
            "auditor writes a record",
            lambda: kv["auditor"].create_or_update_secret(
                path=hand, secret={"a": "b"}, cas=1, mount_point="secret"
            ),
        ),
        (
            "auditor writes partner secret",
            lambda: kv["auditor"].create_or_update_secret(
                path=partner, secret={"a": "b"}, mount_point="secret"
            ),
        ),
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
            "token helper writes partner secret",
            lambda: kv["token-helper"].create_or_update_secret(
                path=partner, secret={"a": "b"}, mount_point="secret"
            ),
        ),
        (
            "token helper lists partners",
            lambda: kv["token-helper"].list_secrets(path="partners", mount_point="secret"),
        ),
        (
            "token helper reads partner metadata",
            lambda: kv["token-helper"].read_secret_metadata(path=partner, mount_point="secret"),
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
    for _, fn in cases:
        denied(fn)
    # nothing changed
    assert vault.kv_read(admin, "secret", hand) == {"seq": 1}
    assert vault.kv_read(admin, "secret", pin) == {"public_key": "ab"}
    assert vault.kv_read(admin, "secret", partner) == {"client_id": "A", "client_secret": "B"}


def test_adapter_translates_denial_to_auth_error(clients: dict[str, hvac.Client]) -> None:
    with pytest.raises(AuthError, match="permission denied"):
        vault.kv_read(clients["auditor"], "secret", "partners/x/y")


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
