"""Run ``python -m keycourier ARGS`` on a real pseudo-terminal and answer its prompts.

A small driver runs in its own process (forking the pytest process is not
safe) and gets its instructions on stdin, never in argv. It starts
keycourier with ``pty.fork`` (stdin, stdout and stderr are the terminal),
waits for each expected prompt before typing the answer (getpass flushes
input typed early), kills the child by its PID if a deadline passes, and
reports everything the terminal showed and the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_DRIVER = r"""
import json, os, pty, select, sys, time
spec = json.loads(sys.stdin.read())
pid, fd = pty.fork()
if pid == 0:
    os.chdir(spec["cwd"])
    os.execve(sys.executable, [sys.executable, "-m", "keycourier", *spec["args"]], spec["env"])
seen = b""
deadline = time.monotonic() + spec["timeout"]
answers = [(p.encode(), a.encode()) for p, a in spec["answers"]]
def pump(wait):
    global seen
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return True
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    if not chunk:
        return False
    seen += chunk
    return True
searched = 0
alive = True
while alive and time.monotonic() < deadline:
    if answers and answers[0][0] in seen[searched:]:
        searched = seen.index(answers[0][0], searched) + len(answers[0][0])
        os.write(fd, answers.pop(0)[1] + b"\n")
        continue
    alive = pump(0.05)
if alive:  # the deadline passed: stop the child (by its PID) and report what it showed
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(json.dumps({"code": os.waitstatus_to_exitcode(status),
                             "screen": seen.decode("utf-8", "replace"),
                             "unanswered": len(answers)}))
"""


@dataclass(frozen=True)
class TerminalRun:
    code: int
    screen: str  # everything the terminal showed: output, prompts and echoed input
    unanswered: int


def run_on_terminal(
    args: list[str],
    *,
    cwd: Path,
    answers: Sequence[tuple[str, str]] = (),
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> TerminalRun:
    """``answers``: (prompt text to wait for, line to type) pairs, in order.

    Wait for the whole prompt, trailing space included: click prints the text,
    then getpass flushes pending input and prints the space, so typing on the
    text alone can be thrown away."""
    spec = {
        "args": args,
        "cwd": str(cwd),
        "answers": list(answers),
        "env": {**os.environ, **(env or {})},
        "timeout": timeout,
    }
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(spec).encode(),  # on stdin: the environment may hold secrets
        capture_output=True,
        timeout=timeout + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pty driver failed: {done.stderr.decode(errors='replace')[-500:]}")
    doc = json.loads(done.stdout)
    return TerminalRun(int(doc["code"]), str(doc["screen"]), int(doc["unanswered"]))
