"""One of several processes opening the same bundle on one ledger at the same moment.

Run as ``python -m tests.reliability.open_worker BUNDLE IDENTITY TRUSTED START`` in the
world's directory, with KEYCOURIER_LEDGER and KEYCOURIER_PASSPHRASE set. Everything
before the ledger check (reading, decrypting, verifying) is done first; then it waits
until the file START exists and runs what ``keycourier open`` runs from there (the check
that the bundle was not opened yet and the `opened` event). Prints ``ready``, then
``opened`` or ``refused: <reason>``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from keycourier import config
from keycourier.cli.bundle_cmd import open_for_cli
from keycourier.cli.identities import load_identity_for_cli
from keycourier.errors import PolicyError


def main() -> None:
    bundle, identity, trusted, start = sys.argv[1:5]
    settings = config.load()
    text = Path(bundle).read_bytes()
    ident = load_identity_for_cli(identity, None)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    deadline = time.monotonic() + 60
    while not Path(start).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the start signal never came")
        time.sleep(0.001)
    try:
        open_for_cli(settings, text, ident, [trusted], allow_reopen=False, require_vault=False)
    except PolicyError as exc:
        sys.stdout.write(f"refused: {exc.message}\n")
        return
    sys.stdout.write("opened\n")


if __name__ == "__main__":
    main()
