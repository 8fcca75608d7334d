"""Ingest as a library workflow, against a memory recorder and a memory KV store: the
occupancy and rotation rules decide before anything is opened, the write is check-and-set,
and the events say what was stored where."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

import pytest

from keycourier import api
from keycourier.handover import ingesting
from keycourier.vault.errors import CasMismatchError
from keycourier.vault.kv import KvMetadata
from tests.support.handover import nothing_denied
from tests.support.random_text import ALNUM

PATH = "handed-over/acme/qbo"


class MemoryKv:
    """KV v2 as ingest sees it: versions per path, custom metadata, check-and-set."""

    mount = "secret"

    def __init__(self) -> None:
        self.versions: dict[str, list[dict[str, str]]] = {}
        self.custom: dict[str, dict[str, str]] = {}
        self.before_write: Callable[[], None] | None = None

    def read_metadata(self, path: str) -> KvMetadata | None:
        stored = self.versions.get(path)
        if not stored:
            return None
        return KvMetadata(
            current_version=len(stored),
            versions={i + 1: {} for i in range(len(stored))},
            custom_metadata=dict(self.custom.get(path, {})),
        )

    def write(self, path: str, data: Mapping[str, str], *, cas: int) -> int:
        if self.before_write is not None:
            meanwhile, self.before_write = self.before_write, None
            meanwhile()
        stored = self.versions.setdefault(path, [])
        if cas != len(stored):
            raise CasMismatchError("check-and-set parameter did not match")
        stored.append(dict(data))
        return len(stored)

    def write_metadata(self, path: str, custom: Mapping[str, str]) -> None:
        self.custom[path] = dict(custom)


def credentials() -> api.HandoverFacts:
    return api.HandoverFacts(
        platform="quickbooks",
        client_id="AB" + "".join(secrets.choice(ALNUM) for _ in range(48)),
        client_secret=api.Secret("".join(secrets.choice(ALNUM) for _ in range(40))),
        environment="production",
        attested_by="Jane Doe, CTO",
    )


@pytest.fixture(scope="module")
def platform() -> api.KeycourierIdentity:
    return api.KeycourierIdentity.generate()


@pytest.fixture(scope="module")
def acme() -> api.KeycourierIdentity:
    return api.KeycourierIdentity.generate()


@pytest.fixture(scope="module")
def other() -> api.KeycourierIdentity:
    return api.KeycourierIdentity.generate()


def sealed_by(
    sender: api.KeycourierIdentity,
    platform: api.KeycourierIdentity,
    *,
    supersedes: str | None = None,
    partner: str = "Acme Corp",
) -> api.Sealed:
    return api.seal(
        api.SealRequest(
            facts=credentials(),
            sender=sender,
            recipients=[platform.public().recipient],
            policy=api.load_policy(None),
            denied=nothing_denied,
            partner=partner,
            supersedes=supersedes,
        ),
        recorder=api.MemoryRecorder(),
    )


def request(
    sealed: api.Sealed,
    platform: api.KeycourierIdentity,
    senders: list[api.KeycourierIdentity],
    **changes: object,
) -> ingesting.IngestRequest:
    return ingesting.IngestRequest(
        text=sealed.text,
        identity=platform,
        trusted=[s.public().signing_fingerprint for s in senders],
        policy=api.load_policy(None),
        denied=nothing_denied,
        vault_path=str(changes.pop("vault_path", PATH)),
        **changes,  # type: ignore[arg-type]
    )


def kinds(recorder: api.MemoryRecorder) -> list[str]:
    return [str(s.event.type) for s in recorder.events]


def test_ingest_stores_the_credentials_and_records_open_then_ingest(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    sealed = sealed_by(acme, platform)
    done = ingesting.ingest(request(sealed, platform, [acme]), recorder=recorder, store=store)
    assert kinds(recorder) == ["opened", "ingested"]
    assert (done.vault_path, done.kv_version) == (f"secret/{PATH}", 1)
    stored = store.versions[PATH][0]
    assert stored["client_secret"] == done.opened.bundle.credentials.client_secret.reveal()
    assert store.custom[PATH]["bundle_id"] == sealed.manifest.bundle_id
    assert store.custom[PATH]["sealed_by"] == acme.public().signing_fingerprint
    assert done.event.data["vault_path"] == f"secret/{PATH}"
    assert done.event.data["kv_version"] == 1
    assert "signature" in done.event.data
    assert done.superseded is None
    assert stored["client_secret"] not in repr(recorder.events)


def test_the_same_sender_may_replace_what_it_stored(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    for _ in range(2):
        sealed = sealed_by(acme, platform)
        done = ingesting.ingest(request(sealed, platform, [acme]), recorder=recorder, store=store)
    assert done.kv_version == 2
    assert done.event.data["replaced"]["overwrite"] is False


def test_another_senders_path_is_refused_before_anything_is_opened(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity, other: api.KeycourierIdentity
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    first = sealed_by(acme, platform)
    ingesting.ingest(request(first, platform, [acme, other]), recorder=recorder, store=store)
    theirs = sealed_by(other, platform, partner="Other Inc")
    with pytest.raises(api.PolicyError) as caught:
        ingesting.ingest(request(theirs, platform, [acme, other]), recorder=recorder, store=store)
    assert caught.value.exit_code == api.ExitCode.POLICY
    assert kinds(recorder) == ["opened", "ingested"]  # the second bundle was not opened
    assert len(store.versions[PATH]) == 1

    warnings: list[str] = []
    done = ingesting.ingest(
        request(theirs, platform, [acme, other], allow_overwrite=True),
        recorder=recorder,
        store=store,
        warn=warnings.append,
    )
    assert done.kv_version == 2
    assert done.event.data["replaced"]["overwrite"] is True
    assert warnings == list(done.warnings)
    assert any("replacing version 1" in w for w in warnings)


def test_a_write_by_someone_else_meanwhile_is_refused(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    store.before_write = lambda: store.versions.setdefault(PATH, []).append({"x": "1"})
    sealed = sealed_by(acme, platform)
    with pytest.raises(api.PolicyError) as caught:
        ingesting.ingest(request(sealed, platform, [acme]), recorder=recorder, store=store)
    assert "written by someone else" in caught.value.message
    assert any("--allow-reopen" in hint for hint in caught.value.hints)
    assert kinds(recorder) == ["opened"]  # opened, but nothing stored or claimed
    assert store.versions[PATH] == [{"x": "1"}]


def test_a_rotation_records_the_superseded_bundle(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    old = sealed_by(acme, platform)
    ingesting.ingest(request(old, platform, [acme]), recorder=recorder, store=store)
    new = sealed_by(acme, platform, supersedes=old.manifest.bundle_id)
    done = ingesting.ingest(request(new, platform, [acme]), recorder=recorder, store=store)
    assert kinds(recorder) == ["opened", "ingested", "opened", "ingested", "superseded"]
    assert done.superseded is not None
    retired, _ = done.superseded
    assert retired.bundle_id == old.manifest.bundle_id
    assert retired.data["replaced_kv_version"] == 1
    assert retired.data["kv_version"] == 2
    assert done.event.data["supersedes"] == {
        "bundle_id": old.manifest.bundle_id,
        "replaced_kv_version": 1,
    }


@pytest.mark.parametrize("where", ["platform/acme/qbo", "handed-over/../platform/x", "/abs"])
def test_a_path_outside_handed_over_is_refused_first(
    platform: api.KeycourierIdentity, acme: api.KeycourierIdentity, where: str
) -> None:
    recorder, store = api.MemoryRecorder(), MemoryKv()
    sealed = sealed_by(acme, platform)
    with pytest.raises(api.UsageError):
        ingesting.ingest(
            request(sealed, platform, [acme], vault_path=where), recorder=recorder, store=store
        )
    assert recorder.events == []
    assert store.versions == {}
