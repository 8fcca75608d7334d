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

from keycourier.bundle.identity import KeycourierIdentity, PublicIdentity
from keycourier.bundle.parsing import Inspection
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
from keycourier.handover.sealing import RejectedError, Sealed, SealRequest, seal
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome, VaultStatus
from keycourier.ledger.memory import MemoryRecorder
from keycourier.ledger.service import LedgerRecorder, open_recorder
from keycourier.ledger.service import denied_lookup as deny_list
from keycourier.policy import HandoverFacts, Policy, Report, SandboxContext, load_policy
from keycourier.redact import Secret
from keycourier.vault.kv import VaultKv

__all__ = [
    "AuthError",
    "CheckRequest",
    "CheckedBundle",
    "ConfigError",
    "DecidingRecorder",
    "Denied",
    "DenyRequest",
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
    "OpenRequest",
    "Opened",
    "Policy",
    "PolicyError",
    "PublicIdentity",
    "ReceiverPolicyError",
    "RecordOutcome",
    "Recorder",
    "RejectedError",
    "Report",
    "RevokeRequest",
    "Revoked",
    "SandboxContext",
    "SealRequest",
    "Sealed",
    "Secret",
    "Settings",
    "UnavailableError",
    "UsageError",
    "VaultKv",
    "VaultSettings",
    "VaultStatus",
    "check",
    "deny",
    "deny_list",
    "ingest",
    "inspect_bundle",
    "load_policy",
    "open_bundle",
    "open_recorder",
    "read_identity",
    "revoke",
    "seal",
    "write_private",
]
