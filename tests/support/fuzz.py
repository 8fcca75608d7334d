"""How many examples the parser fuzz tests run: 10,000 each in CI, fewer locally."""

from __future__ import annotations

import os

FUZZ_EXAMPLES = 10_000 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 500
