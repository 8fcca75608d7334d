"""One of several processes appending to one ledger at the same time.

Run as ``python -m tests.reliability.shared_ledger_writer WORKER COUNT MODE EVERY START``
with KEYCOURIER_LEDGER set. It waits until the file START exists (so that all
writers begin together), then records COUNT events of mixed types (sealed,
revoked, token, connection) as actor ``writer-WORKER``, each with ``data.i``.
MODE ``session`` keeps one recorder for all of them; MODE ``each`` opens and
closes a recorder per event, as one CLI command per event does (a checkpoint
at every close). EVERY is the checkpoint interval (``sqlite.CHECKPOINT_EVERY``).
Each acknowledged sequence number is printed, one per line.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from keycourier import config
from keycourier.ledger import sqlite
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.recorder import LedgerRecorder, open_recorder

KINDS = (
    EventType.SEALED,
    EventType.REVOKED,
    EventType.TOKEN_ISSUED,
    EventType.CONNECTION_CREATED,
    EventType.CONNECTION_CONNECTED,
)


def event(worker: str, i: int, bundle: str) -> Event:
    kind = KINDS[i % len(KINDS)]
    return Event(
        type=kind,
        at=datetime.now(UTC),
        actor=f"writer-{worker}",
        bundle_id=bundle if kind in {EventType.SEALED, EventType.REVOKED} else None,
        data={"worker": worker, "i": i},
    )


def main() -> None:
    worker, count, mode, every, start = sys.argv[1:6]
    sqlite.CHECKPOINT_EVERY = int(every)
    settings = config.load()
    deadline = time.monotonic() + 60
    while not Path(start).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the start signal never came")
        time.sleep(0.005)
    recorder: LedgerRecorder | None = None
    bundle = str(uuid.uuid4())
    for i in range(int(count)):
        if i % len(KINDS) == 0:
            bundle = str(uuid.uuid4())
        if recorder is None:
            recorder = open_recorder(settings)
        outcome = recorder.record(event(worker, i, bundle))
        if mode == "each":
            recorder.close()
            recorder = None
        sys.stdout.write(f"{outcome.seq}\n")
        sys.stdout.flush()
    if recorder is not None:
        recorder.close()


if __name__ == "__main__":
    main()
