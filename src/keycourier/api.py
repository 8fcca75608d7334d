"""keycourier's public Python API: the names a script imports (docs/api.md).

    from keycourier import api

Everything here is typed (the package ships ``py.typed``) and stable within a major
version; modules not re-exported here are internal. Configuration comes from arguments
first: ``Settings.local(ledger_path)`` reads nothing else, ``Settings.from_env()`` reads
the environment and the config file as the command line does. Errors are
``keycourier.errors`` classes; ``exc.exit_code`` is the code the command line would exit
with.
"""

from __future__ import annotations

from keycourier.audit.evidence import build_pack, verify_pack
from keycourier.audit.report import report_html
from keycourier.bundle.identity import KeycourierIdentity, PublicIdentity
from keycourier.bundle.parsing import Inspection, extract_age
from keycourier.bundle.parsing import inspect as inspect_bundle
from keycourier.bundle.service import CheckedBundle, ReceiverPolicyError, read_identity
from keycourier.config import Settings, VaultSettings
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    ExitCode,
    IntegrityError,
    PolicyError,
    UnavailableError,
    UsageError,
)
from keycourier.files import write_private
from keycourier.handover.checking import CheckRequest, check
from keycourier.handover.denying import Denied, DenyRequest, deny
from keycourier.handover.ingesting import Ingested, IngestRequest, KvStore, ingest
from keycourier.handover.opening import DecidingRecorder, Opened, OpenRequest, open_bundle
from keycourier.handover.revoking import Revoked, RevokeRequest, revoke
from keycourier.handover.sealing import RejectedError, Sealed, SealRequest, rotation_source, seal
from keycourier.helper.service import Obtained, ProfileTokenSource, obtain_token
from keycourier.ledger import recorder as _recorder
from keycourier.ledger.checkpoints import export_checkpoint, ledger_verifier_key, prove_events
from keycourier.ledger.export import export, timeline
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome, VaultStatus
from keycourier.ledger.memory import MemoryRecorder
from keycourier.ledger.recorder import LedgerRecorder
from keycourier.ledger.state import denied_lookup as deny_list
from keycourier.ledger.state import stale, unconfirmed
from keycourier.partner.connections.client import ConnectionClient, StaticTokenSource
from keycourier.partner.connections.model import Connection, ConnectionStatus, endpoint_for_profile
from keycourier.partner.connections.workflow import (
    CreateResult,
    DisconnectResult,
    WaitPolicy,
    WaitResult,
    create_connection,
    disconnect_connection,
    wait_for_connection,
)
from keycourier.policy import (
    HandoverFacts,
    Policy,
    Report,
    SandboxContext,
    load_policy,
    policy_in_force,
)
from keycourier.receipt.service import inspect as inspect_receipt
from keycourier.receipt.service import verify as verify_receipt
from keycourier.redact import Secret
from keycourier.vault.doctor import DoctorReport, Role
from keycourier.vault.doctor import run as doctor
from keycourier.vault.kv import VaultKv


def open_recorder(
    settings: Settings, *, require_vault: bool = False, policy: Policy | None = None
) -> LedgerRecorder:
    """The ledger at ``settings.ledger_path`` plus the Vault mirror when one is configured.

    Events that name no policy are stamped with ``policy``; without one, with the policy in
    force at ``settings.policy_path`` (the packaged policy when that is None), as the
    command line does. Its text is kept in the ledger for evidence packs.
    """
    if policy is None:
        policy = policy_in_force(settings.policy_path)
    return _recorder.open_recorder(settings, require_vault=require_vault, policy=policy)


__all__ = [
    "AuthError",
    "CheckRequest",
    "CheckedBundle",
    "ConfigError",
    "Connection",
    "ConnectionClient",
    "ConnectionStatus",
    "CreateResult",
    "DecidingRecorder",
    "Denied",
    "DenyRequest",
    "DisconnectResult",
    "DoctorReport",
    "Error",
    "Event",
    "EventType",
    "ExitCode",
    "HandoverFacts",
    "IngestRequest",
    "Ingested",
    "Inspection",
    "IntegrityError",
    "KeycourierIdentity",
    "KvStore",
    "LedgerRecorder",
    "MemoryRecorder",
    "Obtained",
    "OpenRequest",
    "Opened",
    "Policy",
    "PolicyError",
    "ProfileTokenSource",
    "PublicIdentity",
    "ReceiverPolicyError",
    "RecordOutcome",
    "Recorder",
    "RejectedError",
    "Report",
    "RevokeRequest",
    "Revoked",
    "Role",
    "SandboxContext",
    "SealRequest",
    "Sealed",
    "Secret",
    "Settings",
    "StaticTokenSource",
    "UnavailableError",
    "UsageError",
    "VaultKv",
    "VaultSettings",
    "VaultStatus",
    "WaitPolicy",
    "WaitResult",
    "build_pack",
    "check",
    "create_connection",
    "deny",
    "deny_list",
    "disconnect_connection",
    "doctor",
    "endpoint_for_profile",
    "export",
    "export_checkpoint",
    "extract_age",
    "ingest",
    "inspect_bundle",
    "inspect_receipt",
    "ledger_verifier_key",
    "load_policy",
    "obtain_token",
    "open_bundle",
    "open_recorder",
    "prove_events",
    "read_identity",
    "report_html",
    "revoke",
    "rotation_source",
    "seal",
    "stale",
    "timeline",
    "unconfirmed",
    "verify_pack",
    "verify_receipt",
    "wait_for_connection",
    "write_private",
]
