"""Bundle domain objects: credentials, manifest, and their strict parsers."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from keycourier.errors import IntegrityError
from keycourier.redact import Secret

FORMAT = "keycourier-bundle/v2"
FORMAT_V1 = "keycourier-bundle/v1"
FORMATS = (FORMAT_V1, FORMAT)  # the versions this reader knows; writers write FORMAT
PAYLOAD_FORMAT = "keycourier-credentials/v1"
MAX_RECIPIENTS = 20

INTEGRITY_MESSAGE = (
    "bundle verification failed: it is damaged or was altered, it is not addressed to this "
    "identity, or its sender is not trusted"
)
INTEGRITY_HINTS = (
    "run 'keycourier inspect BUNDLE' to see who signed it and for whom, without any key",
    "ask the sender for a fresh bundle if it may have been changed in transit",
)


def integrity_error() -> IntegrityError:
    """The one error every cryptographic failure (signature, digest, decryption, binding,
    untrusted sender) raises when opening a bundle."""
    return IntegrityError(INTEGRITY_MESSAGE, hints=INTEGRITY_HINTS)


class StructureError(IntegrityError):
    """A structural fault of a bundle, found without any key and named precisely (exit 4).

    Everything it describes is public (docs/bundle-format.md section 6, step 1), so
    naming it is no oracle. ``line`` is the input line, counted from 1, when one is known.
    """

    def __init__(
        self, message: str, *, line: int | None = None, hints: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hints=hints)
        self.line = line


def manifest_error(why: str) -> StructureError:
    return StructureError(
        f"the bundle's manifest is not readable: {why}",
        hints=("ask the sender for a fresh bundle",),
    )


class Platform(enum.StrEnum):
    QUICKBOOKS = "quickbooks"
    XERO = "xero"


@dataclass(frozen=True, slots=True)
class Credentials:
    platform: str
    client_id: str
    client_secret: Secret


@dataclass(frozen=True, slots=True)
class Attestation:
    by: str
    statement: str


@dataclass(frozen=True, slots=True)
class PolicyStamp:
    digest: str
    verdict: str  # "pass" or "warn"
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    bundle_id: str
    created_at: datetime
    expires_at: datetime
    platform: str
    environment: str
    partner: str | None
    attestation: Attestation | None
    client_id_masked: str
    fingerprint: str
    recipients: tuple[str, ...]
    sender_key: str  # "ed25519:<base64>"
    sender_fingerprint: str
    policy: PolicyStamp
    payload_sha256: str
    payload_size: int
    format: str = FORMAT  # the version it was read as; sealing writes FORMAT
    # the bundle this one replaces (a rotation, docs/rotation.md); absent from the
    # manifest when None, so bundles without it keep their bytes
    supersedes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.supersedes is None else {"supersedes": self.supersedes}
        return {
            **extra,
            "format": self.format,
            "bundle_id": self.bundle_id,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at),
            "platform": self.platform,
            "environment": self.environment,
            "partner": self.partner,
            "attestation": (
                None
                if self.attestation is None
                else {"by": self.attestation.by, "statement": self.attestation.statement}
            ),
            "client_id_masked": self.client_id_masked,
            "fingerprint": self.fingerprint,
            "recipients": list(self.recipients),
            "sender": {"signing_key": self.sender_key, "fingerprint": self.sender_fingerprint},
            "policy": {
                "digest": self.policy.digest,
                "verdict": self.policy.verdict,
                "warnings": list(self.policy.warnings),
            },
            "payload": {"type": "age-v1", "sha256": self.payload_sha256, "size": self.payload_size},
        }


def manifest_parts(m: Manifest) -> tuple[bytes, bytes]:
    """The canonical manifest without its ``payload`` member, cut where that member goes.

    ``head + tail`` is ``canonical_json`` of ``to_dict()`` minus "payload" (the
    bytes the binding digest covers) and ``head + payload_member(...) + tail``
    is the whole canonical manifest. Written out by hand because a seal needs
    both forms and the generic encoder costs about as much as a signature;
    keys are in sorted order and strings go through the same C escaper the
    ``json`` encoder uses. The tests compare both forms with ``canonical_json``
    over generated manifests, and a reader rejects anything non-canonical.
    """
    att, pol = m.attestation, m.policy
    attestation = (
        "null" if att is None else f'{{"by":{_q(att.by)},"statement":{_q(att.statement)}}}'
    )
    partner = "null" if m.partner is None else _q(m.partner)
    head = (
        f'{{"attestation":{attestation},"bundle_id":{_q(m.bundle_id)}'
        f',"client_id_masked":{_q(m.client_id_masked)}'
        f',"created_at":{_q(format_time(m.created_at))},"environment":{_q(m.environment)}'
        f',"expires_at":{_q(format_time(m.expires_at))},"fingerprint":{_q(m.fingerprint)}'
        f',"format":{_q(m.format)},"partner":{partner}'
    )
    text = (
        f'{head},"platform":{_q(m.platform)},"policy":{{"digest":{_q(pol.digest)}'
        f',"verdict":{_q(pol.verdict)},"warnings":[{",".join(map(_q, pol.warnings))}]}}'
        f',"recipients":[{",".join(map(_q, m.recipients))}]'
        f',"sender":{{"fingerprint":{_q(m.sender_fingerprint)},"signing_key":{_q(m.sender_key)}}}'
        + ("" if m.supersedes is None else f',"supersedes":{_q(m.supersedes)}')
        + "}"
    ).encode("ascii")
    cut = len(head)  # ASCII: as many bytes as characters
    return text[:cut], text[cut:]


def payload_member(sha256_hex: str, size: int) -> bytes:
    """The canonical ``,"payload":{...}`` member that goes between the parts."""
    return f',"payload":{{"sha256":{_q(sha256_hex)},"size":{int(size)},"type":"age-v1"}}'.encode(
        "ascii"
    )


def canonical_manifest(m: Manifest) -> bytes:
    """``canonical_json(m.to_dict())``, the signed manifest line."""
    head, tail = manifest_parts(m)
    return head + payload_member(m.payload_sha256, m.payload_size) + tail


def format_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, as ``strftime("%Y-%m-%dT%H:%M:%SZ")`` writes it.

    ``isoformat`` gives the same characters for four-digit years at well under
    half the cost of ``strftime`` (a seal formats two times); glibc writes
    years below 1000 without padding, so those keep ``strftime``.
    """
    utc = value.astimezone(UTC)
    if utc.year >= 1000:
        return utc.isoformat()[:19] + "Z"  # drops any fraction and the "+00:00"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_FP = re.compile(r"^kc1:[0-9a-f]{32}\Z")
_KEY = re.compile(r"^ed25519:[A-Za-z0-9+/]{43}=\Z")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_RULE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")
_RECIPIENT = re.compile(r"^age1(?:pq1)?[02-9ac-hj-np-z]{20,4000}\Z")
# a version 4 UUID as str(uuid.UUID(...)) writes it (RFC 4122 variant: 8, 9, a or b);
# not through the uuid module, whose import brings platform with it
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_UUID4_FULL = re.compile(r"^" + _UUID4.pattern + r"\Z")


def _bad(field: str) -> StructureError:
    return manifest_error(f"field '{field}' is missing, unknown or of the wrong form")


def _printable(value: object, max_len: int, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len or not value.isprintable():
        raise _bad(field)
    return value


def _parse_time(value: object, field: str) -> datetime:
    """``YYYY-MM-DDTHH:MM:SSZ``: the values and refusals of ``strptime`` with that format.

    The fields are read directly once the shape is checked (20 characters):
    ``strptime`` would import ``_strptime`` and set up the locale on first use,
    several milliseconds of ``keycourier inspect``.
    """
    if not isinstance(value, str) or len(value) != 20 or not _TIME_RE.match(value):
        raise _bad(field)
    try:
        return datetime(
            int(value[0:4]),
            int(value[5:7]),
            int(value[8:10]),
            int(value[11:13]),
            int(value[14:16]),
            int(value[17:19]),
            tzinfo=UTC,
        )
    except ValueError:
        raise _bad(field) from None


def _match(pattern: re.Pattern[str], value: object, field: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise _bad(field)
    return value


def _object(value: object, keys: set[str], field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise _bad(field)
    return value


_MANIFEST_KEYS = {
    "format",
    "bundle_id",
    "created_at",
    "expires_at",
    "platform",
    "environment",
    "partner",
    "attestation",
    "client_id_masked",
    "fingerprint",
    "recipients",
    "sender",
    "policy",
    "payload",
}


def manifest_from_dict(obj: dict[str, Any]) -> Manifest:
    """Strictly parse a manifest object; a deviation is a StructureError naming the field."""
    # version 2 may name the bundle it supersedes; version 1 never does
    keys = _MANIFEST_KEYS | {"supersedes"} if "supersedes" in obj else _MANIFEST_KEYS
    if obj.get("format") == FORMAT_V1:
        keys = _MANIFEST_KEYS
    if set(obj) != keys:
        missing = sorted(keys - set(obj))
        unknown = len(set(obj) - keys)  # not shown: they are the input's strings
        raise manifest_error(
            ", ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"{unknown} unknown field(s)"] if unknown else [])
            )
        )
    if obj["format"] not in FORMATS:
        raise _bad("format")
    bundle_id = obj["bundle_id"]
    if not isinstance(bundle_id, str):
        raise _bad("bundle_id")
    if not _UUID4.fullmatch(bundle_id):
        raise _bad("bundle_id")
    if obj.get("supersedes") == bundle_id:
        raise manifest_error("the bundle says it supersedes itself")
    created = _parse_time(obj["created_at"], "created_at")
    expires = _parse_time(obj["expires_at"], "expires_at")
    if expires <= created:
        raise manifest_error("expires_at is not later than created_at")
    platform = obj["platform"]
    if not isinstance(platform, str) or platform not in {p.value for p in Platform}:
        raise _bad("platform")
    environment = _printable(obj["environment"], 32, "environment")
    partner = None if obj["partner"] is None else _printable(obj["partner"], 128, "partner")
    attestation = None
    if obj["attestation"] is not None:
        att = _object(obj["attestation"], {"by", "statement"}, "attestation")
        attestation = Attestation(
            _printable(att["by"], 128, "attestation.by"),
            _printable(att["statement"], 512, "attestation.statement"),
        )
    masked = _printable(obj["client_id_masked"], 64, "client_id_masked")
    fingerprint = _match(_FP, obj["fingerprint"], "fingerprint")
    recipients = obj["recipients"]
    if (
        not isinstance(recipients, list)
        or not 1 <= len(recipients) <= MAX_RECIPIENTS
        or len(set(map(str, recipients))) != len(recipients)
    ):
        raise _bad("recipients")
    recips = tuple(_match(_RECIPIENT, r, "recipients") for r in recipients)
    sender = _object(obj["sender"], {"signing_key", "fingerprint"}, "sender")
    policy = _object(obj["policy"], {"digest", "verdict", "warnings"}, "policy")
    if policy["verdict"] not in ("pass", "warn"):
        raise _bad("policy.verdict")
    if not isinstance(policy["warnings"], list):
        raise _bad("policy.warnings")
    payload = _object(obj["payload"], {"type", "sha256", "size"}, "payload")
    size = payload["size"]
    if payload["type"] != "age-v1":
        raise _bad("payload.type")
    if not isinstance(size, int) or isinstance(size, bool):
        raise _bad("payload.size")
    return Manifest(
        bundle_id=bundle_id,
        created_at=created,
        expires_at=expires,
        platform=platform,
        environment=environment,
        partner=partner,
        attestation=attestation,
        client_id_masked=masked,
        fingerprint=fingerprint,
        recipients=recips,
        sender_key=_match(_KEY, sender["signing_key"], "sender.signing_key"),
        sender_fingerprint=_match(_FP, sender["fingerprint"], "sender.fingerprint"),
        policy=PolicyStamp(
            digest=_match(_DIGEST, policy["digest"], "policy.digest"),
            verdict=policy["verdict"],
            warnings=tuple(_match(_RULE, w, "policy.warnings") for w in policy["warnings"]),
        ),
        payload_sha256=_match(_HEX64, payload["sha256"], "payload.sha256"),
        payload_size=size,
        format=obj["format"],
        supersedes=(
            None
            if "supersedes" not in obj
            else _match(_UUID4_FULL, obj["supersedes"], "supersedes")
        ),
    )
