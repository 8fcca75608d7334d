"""`import keycourier.ledger` and its recorder, checkpoints, state and export modules stay
cheap (no sqlite_utils, hvac, nacl)."""

from __future__ import annotations

import subprocess
import sys


def test_ledger_import_is_cheap() -> None:
    code = (
        "import sys, keycourier.ledger, keycourier.ledger.recorder, keycourier.ledger.checkpoints,"
        "keycourier.ledger.state, keycourier.ledger.export, keycourier.ledger.sync,"
        "keycourier.ledger.verify, keycourier.ledger.interface;"
        "heavy = ('sqlite_utils', 'hvac', 'requests', 'nacl');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
