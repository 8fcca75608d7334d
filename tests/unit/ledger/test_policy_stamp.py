"""The recorder stamps events with the policy its caller gives it and never loads one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier import config
from keycourier.cli import record as cli_record
from keycourier.helper import recording as helper_recording
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.recorder import open_recorder
from keycourier.policy import load_policy

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def token_event() -> Event:
    return Event(type=EventType.TOKEN_ISSUED, at=NOW, actor="profile:ci", data={"profile": "ci"})


def stored_digest(settings: config.Settings) -> str | None:
    with open_recorder(settings) as recorder:
        return recorder.history_by_data("profile", "ci")[-1].event.policy_digest


@pytest.fixture
def broken_policy(tmp_path: Path) -> config.Settings:
    """Settings whose policy file cannot be loaded."""
    path = tmp_path / "policy.toml"
    path.write_text("this is = = not toml")
    return config.Settings.local(tmp_path / "ledger.db", policy_path=path)


def test_without_a_policy_the_recorder_stamps_nothing_and_reads_no_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("# the shipped policy, unchanged\n")
    settings = config.Settings.local(tmp_path / "ledger.db", policy_path=path)
    assert load_policy(path).digest  # a policy the recorder could have loaded
    with open_recorder(settings) as recorder:
        recorder.record(token_event())
    assert stored_digest(settings) is None


def test_the_callers_policy_stamps_events_that_name_none_and_its_text_is_kept(
    tmp_path: Path,
) -> None:
    settings = config.Settings.local(tmp_path / "ledger.db")
    policy = load_policy(None)
    with open_recorder(settings, policy=policy) as recorder:
        recorder.record(token_event())
        named = Event(
            type=EventType.SEALED, at=NOW, actor="a", bundle_id="b", policy_digest="sha256:00"
        )
        recorder.record(named)
        assert recorder.ledger.policy_text(policy.digest) == policy.canonical
        assert recorder.ledger.policy_text("sha256:00") is None
        assert [s.event.policy_digest for s in recorder.history()] == [policy.digest, "sha256:00"]


@pytest.mark.parametrize("opener", [cli_record.open_recorder, helper_recording.open_recorder])
def test_the_command_line_and_the_helper_stamp_the_policy_in_force(
    tmp_path: Path, opener: object
) -> None:
    settings = config.Settings.local(tmp_path / "ledger.db")
    recorder = opener(settings)  # type: ignore[operator]
    recorder.record(token_event())
    recorder.close()
    assert stored_digest(settings) == load_policy(None).digest


@pytest.mark.parametrize("opener", [cli_record.open_recorder, helper_recording.open_recorder])
def test_an_unloadable_policy_never_costs_a_token_or_connection_its_event(
    broken_policy: config.Settings, opener: object
) -> None:
    recorder = opener(broken_policy)  # type: ignore[operator]
    recorder.record(token_event())
    recorder.close()
    assert stored_digest(broken_policy) is None


def test_the_memory_recorder_stamps_like_the_ledger() -> None:
    from keycourier.ledger.memory import MemoryRecorder

    policy = load_policy(None)
    plain = MemoryRecorder()
    plain.record(token_event())
    assert plain.events[0].event.policy_digest is None
    stamped = MemoryRecorder(policy=policy)
    stamped.record(token_event())
    assert stamped.events[0].event.policy_digest == policy.digest


def test_the_api_recorder_stamps_the_policy_in_force_and_keeps_its_text(tmp_path: Path) -> None:
    from keycourier import api

    settings = config.Settings.local(tmp_path / "ledger.db")
    policy = load_policy(None)
    with api.open_recorder(settings) as recorder:
        recorder.record(token_event())
        assert recorder.ledger.policy_text(policy.digest) == policy.canonical
    assert stored_digest(settings) == policy.digest
