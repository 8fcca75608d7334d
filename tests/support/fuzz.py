"""How many examples the property tests run.

FUZZ_EXAMPLES: the parsers that read outside input (bundle, age header and armor, policy
file, config, the HTTP helper's request handling): 10,000 each in CI.
EXTRA_EXAMPLES: other parsers' never-crash properties: 1,000 in CI.
"""

from __future__ import annotations

import os

_CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
FUZZ_EXAMPLES = 10_000 if _CI else 500
EXTRA_EXAMPLES = 1_000 if _CI else 200
