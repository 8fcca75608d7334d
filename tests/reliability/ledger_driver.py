"""Kill-test driver: append events to the ledger in a loop, acknowledging each one.

Run as ``python -m tests.reliability.ledger_driver COUNT`` with KEYCOURIER_LEDGER
(and optionally VAULT_ADDR/VAULT_TOKEN) set. After each ``record`` returns it
prints the sequence number and flushes: the parent then knows which events
were acknowledged before it killed this process.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime

from keycourier import config
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.recorder import open_recorder


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with open_recorder(config.load()) as recorder:
        for i in range(count):
            outcome = recorder.record(
                Event(
                    type=EventType.SEALED,
                    at=datetime.now(UTC),
                    actor="kill-test",
                    bundle_id=str(uuid.uuid4()),
                    data={"i": i},
                )
            )
            sys.stdout.write(f"{outcome.seq}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
