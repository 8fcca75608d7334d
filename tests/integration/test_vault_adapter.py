"""keycourier.vault against a real OpenBao: log-in methods and the error translation table."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import hvac
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keycourier import config
from keycourier.errors import AuthError, ConfigError, UnavailableError
from keycourier.redact import Secret
from keycourier.vault.client import connect
from keycourier.vault.errors import CasMismatchError
from keycourier.vault.fastkv import FastKV, kv_read_direct
from keycourier.vault.kv import kv_list, kv_read, kv_write
from keycourier.vault.paths import check_path
from tests.support.openbao import BaoServer, free_port


def load(tmp: Path, **env: str) -> config.Settings:
    return config.load(env={"HOME": str(tmp), **env})


def test_token_from_env_and_file(bao_dev: BaoServer, tmp_path: Path) -> None:
    path = "keycourier-adapter/" + uuid.uuid4().hex
    client = connect(load(tmp_path, VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token))
    assert kv_read(client, "secret", path) is None
    assert kv_write(client, "secret", path, {"a": "1"}, cas=0) == 1
    token_file = tmp_path / "token"
    token_file.write_text(bao_dev.token + "\n")
    (tmp_path / ".config" / "keycourier").mkdir(parents=True)
    cfg = tmp_path / ".config" / "keycourier" / "config.toml"
    cfg.write_text(f'[vault]\naddr = "{bao_dev.addr}"\ntoken_file = "{token_file}"\n')
    client = connect(load(tmp_path))
    assert kv_read(client, "secret", path) == {"a": "1"}
    with pytest.raises(CasMismatchError):
        kv_write(client, "secret", path, {"a": "2"}, cas=0)


def test_bad_token_is_auth_error(bao_dev: BaoServer, tmp_path: Path) -> None:
    client = connect(load(tmp_path, VAULT_ADDR=bao_dev.addr, VAULT_TOKEN="kc-wrong-token"))
    with pytest.raises(AuthError) as err:
        kv_read(client, "secret", "anything")
    assert "kc-wrong-token" not in str(err.value)
    assert err.value.exit_code == 5


def test_no_token_is_auth_error(bao_dev: BaoServer, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="no Vault token"):
        connect(load(tmp_path, VAULT_ADDR=bao_dev.addr))


def test_unreachable_is_unavailable(tmp_path: Path) -> None:
    client = connect(load(tmp_path, VAULT_ADDR=f"http://127.0.0.1:{free_port()}", VAULT_TOKEN="t"))
    with pytest.raises(UnavailableError) as err:
        kv_read(client, "secret", "x")
    assert err.value.exit_code == 6


def test_fast_transport_translates_like_hvac(bao_dev: BaoServer, tmp_path: Path) -> None:
    settings = load(tmp_path, VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token)
    fast = FastKV(settings.vault, Secret(bao_dev.token))
    path = "keycourier-adapter/" + uuid.uuid4().hex
    assert fast.write("secret", path, {"n": 1}, cas=0) == 1
    assert fast.write("secret", path, {"n": 2}, cas=1) == 2
    with pytest.raises(CasMismatchError):
        fast.write("secret", path, {"n": 3}, cas=1)
    assert bao_dev.token not in repr(fast)
    fast.close()
    bad = FastKV(settings.vault, Secret("nope"))
    with pytest.raises(AuthError):
        bad.write("secret", path, {"n": 9}, cas=None)
    dead = FastKV(load(tmp_path, VAULT_ADDR=f"http://127.0.0.1:{free_port()}").vault, Secret("t"))
    with pytest.raises(UnavailableError):
        dead.write("secret", path, {"n": 9}, cas=None)


def test_bad_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        connect(load(tmp_path, VAULT_ADDR="ftp://vault", VAULT_TOKEN="t"))
    with pytest.raises(ConfigError):
        connect(load(tmp_path))
    with pytest.raises(ConfigError, match="not a readable file"):
        connect(
            load(
                tmp_path,
                VAULT_ADDR="https://127.0.0.1:1",
                VAULT_TOKEN="t",
                VAULT_CACERT=str(tmp_path / "none"),
            )
        )
    for bad in ("/abs", "a/../b", "a//b", "a b", ""):
        with pytest.raises(ConfigError):
            check_path(bad)


def test_approle_login_with_secret_id_file(bao_dev: BaoServer, tmp_path: Path) -> None:
    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    mount = "approle-" + uuid.uuid4().hex[:8]
    admin.sys.enable_auth_method("approle", path=mount)
    admin.auth.approle.create_or_update_approle("kc", token_policies=["default"], mount_point=mount)
    role_id = admin.auth.approle.read_role_id("kc", mount_point=mount)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id("kc", mount_point=mount)["data"]["secret_id"]
    sid = tmp_path / "secret-id"
    sid.write_text(secret_id)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[vault]\naddr = "{bao_dev.addr}"\nauth = "approle"\nauth_mount = "{mount}"\n'
        f'role_id = "{role_id}"\nsecret_id_file = "{sid}"\n'
    )
    client = connect(config.load(config_path=cfg, env={"HOME": str(tmp_path)}))
    assert client.is_authenticated()
    sid.write_text("wrong-secret-id")
    with pytest.raises(AuthError) as err:
        connect(config.load(config_path=cfg, env={"HOME": str(tmp_path)}))
    assert "wrong-secret-id" not in err.value.message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_jwt_login_for_ci(bao_dev: BaoServer, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    mount = "jwt-" + uuid.uuid4().hex[:8]
    admin.sys.enable_auth_method("jwt", path=mount)
    admin.write(f"auth/{mount}/config", jwt_validation_pubkeys=[pem])
    admin.write(
        f"auth/{mount}/role/ci",
        role_type="jwt",
        user_claim="sub",
        bound_audiences=["keycourier"],
        token_policies=["default"],
    )
    now = int(time.time())
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = _b64(
        json.dumps(
            {"sub": "ci-job", "aud": "keycourier", "iat": now, "nbf": now - 5, "exp": now + 300}
        ).encode()
    )
    signature = key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(f"{header}.{claims}.{_b64(signature)}")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[vault]\naddr = "{bao_dev.addr}"\nauth = "jwt"\nauth_mount = "{mount}"\n'
        f'jwt_role = "ci"\njwt_file = "{jwt_file}"\n'
    )
    client = connect(config.load(config_path=cfg, env={"HOME": str(tmp_path)}))
    assert client.is_authenticated()
    jwt_file.write_text(f"{header}.{claims}.{_b64(b'x' * 256)}")
    with pytest.raises(AuthError):
        connect(config.load(config_path=cfg, env={"HOME": str(tmp_path)}))


def test_namespace_reaches_both_transports(bao_dev: BaoServer, tmp_path: Path) -> None:
    """VAULT_NAMESPACE goes to hvac and to the keep-alive write path alike."""
    from datetime import UTC, datetime

    from keycourier.ledger.interface import Event, EventType, VaultStatus
    from keycourier.ledger.recorder import open_recorder

    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    ns = "kc-ns-" + uuid.uuid4().hex[:8]
    admin.write(f"sys/namespaces/{ns}")
    inner = hvac.Client(url=bao_dev.addr, token=bao_dev.token, namespace=ns)
    inner.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    settings = config.load(
        ledger_path=tmp_path / "l.db",
        env={
            "HOME": str(tmp_path),
            "VAULT_ADDR": bao_dev.addr,
            "VAULT_TOKEN": bao_dev.token,
            "VAULT_NAMESPACE": ns,
        },
    )
    bid = "kcb-" + uuid.uuid4().hex
    with open_recorder(settings) as rec:
        event = Event(EventType.SEALED, datetime.now(UTC), "kc1:a", bundle_id=bid)
        assert rec.record(event).vault_status == VaultStatus.RECORDED
        assert rec.verify(vault=True).ok
    folder = f"keycourier/handovers/{bid}/events"
    assert len(kv_list(inner, "secret", folder)) == 1
    assert kv_list(admin, "secret", folder) == []


def test_direct_read_answers_like_connect_and_kv_read(bao_dev: BaoServer, tmp_path: Path) -> None:
    """kv_read_direct (one http.client GET) gives kv_read's result and errors, without hvac."""
    settings = load(tmp_path, VAULT_ADDR=bao_dev.addr, VAULT_TOKEN=bao_dev.token)
    client = connect(settings)
    path = "keycourier-adapter/" + uuid.uuid4().hex
    assert kv_read_direct(settings, "secret", path) is None  # never written
    kv_write(client, "secret", path, {"client_id": "a", "client_secret": "b"}, cas=0)
    assert kv_read_direct(settings, "secret", path) == {
        "client_id": "a",
        "client_secret": "b",
    }
    assert kv_read_direct(settings, "secret", path) == kv_read(client, "secret", path)
    client.secrets.kv.v2.delete_latest_version_of_secret(path=path, mount_point="secret")
    assert kv_read(client, "secret", path) is None
    assert kv_read_direct(settings, "secret", path) is None  # deleted: as kv_read
    wrong = load(tmp_path, VAULT_ADDR=bao_dev.addr, VAULT_TOKEN="kc-wrong-direct-token")
    with pytest.raises(AuthError) as err:
        kv_read_direct(wrong, "secret", path)
    assert "kc-wrong-direct-token" not in str(err.value)
    with pytest.raises(AuthError, match="no Vault token"):
        kv_read_direct(load(tmp_path, VAULT_ADDR=bao_dev.addr), "secret", path)
    down = load(tmp_path, VAULT_ADDR=f"http://127.0.0.1:{free_port()}", VAULT_TOKEN="t")
    with pytest.raises(UnavailableError):
        kv_read_direct(down, "secret", path)
    with pytest.raises(ConfigError):
        kv_read_direct(settings, "secret", "../escape")
