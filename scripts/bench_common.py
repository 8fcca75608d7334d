"""Shared by the bench scripts: rewrite one marked section of BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEach section is rewritten by the script named in it. "
    "Baselines are measured in\n"
    "the same run as keycourier, interleaved, and targets are ratios (these machines are\n"
    "shared and noisy, so absolute times are only indicative).\n"
)


def write_section(name: str, title: str, body: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\nMeasured {stamp} on {where}.\n\n{body.rstrip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = BENCH.read_text() if BENCH.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    BENCH.write_text(text)
