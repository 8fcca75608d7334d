"""Run keycourier with the ledger too busy to sign a checkpoint.

``python -m tests.support.busy_checkpoint ARGS...`` is ``keycourier ARGS...`` in a
real process whose ledger refuses every checkpoint transaction the way a ledger
held by another writer past the busy timeout does (exit 6, UnavailableError).
Appending still works, so a command's event is committed and only what follows
it fails: the case "bookkeeping after the event" must survive with a warning.
"""

from __future__ import annotations

import sys

from keycourier.errors import UnavailableError
from keycourier.ledger import sqlite


def _busy(self: sqlite.SqliteLedger) -> int | None:
    raise UnavailableError(f"the ledger {self.path} is busy: database is locked")


sqlite.SqliteLedger.checkpoint = _busy  # type: ignore[method-assign]

if __name__ == "__main__":
    from keycourier.cli.entry import run

    sys.argv[0] = "keycourier"
    run()
