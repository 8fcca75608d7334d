"""Signed receipts that close a handover between two organisations (docs/receipts.md)."""

from __future__ import annotations

from keycourier.receipt.model import (
    FORMAT,
    BundleRef,
    LedgerProof,
    ParsedReceipt,
    Receipt,
    Replaced,
    VaultRecord,
    parse,
    path_matches,
)
from keycourier.receipt.service import (
    IssuedVault,
    ReceiptInspection,
    VerifiedReceipt,
    check_ledger_key,
    inspect,
    issue,
    verify,
)

__all__ = [
    "FORMAT",
    "BundleRef",
    "IssuedVault",
    "LedgerProof",
    "ParsedReceipt",
    "Receipt",
    "ReceiptInspection",
    "Replaced",
    "VaultRecord",
    "VerifiedReceipt",
    "check_ledger_key",
    "inspect",
    "issue",
    "parse",
    "path_matches",
    "verify",
]
