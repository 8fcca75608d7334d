"""Turning the end of a command into an exit code and one-line messages, without click.

Shared by ``main()`` (the click CLI) and the console script's fast path, so
both render errors the same way. Messages and hints are shown verbatim, so
keycourier's own errors must never carry a secret; any other exception is
named by its type only, since its message could carry one.
"""

from __future__ import annotations

import os
import sys

from keycourier.errors import Error, ExitCode


def say(kind: str, text: str) -> None:
    sys.stderr.write(f"keycourier: {kind}: {text}\n")


def exit_code_for(exc: Exception | KeyboardInterrupt, *, debug: bool) -> int:
    """Report ``exc`` on stderr and return its exit code (click's own exceptions are
    rendered by ``main()`` before it gets here)."""
    if isinstance(exc, Error):
        if debug:
            _traceback()
        say("error", exc.message)
        for hint in exc.hints:
            say("hint", hint)
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        say("error", "interrupted")
        return 130
    if isinstance(exc, BrokenPipeError):
        return int(ExitCode.UNEXPECTED)
    if isinstance(exc, OSError):
        # An I/O failure keycourier did not turn into a message itself (a full disk
        # under stdout, say): name the system error only; its filename is not shown.
        say("error", f"input/output error: {exc.strerror or type(exc).__name__}")
        return int(ExitCode.UNEXPECTED)
    if debug:
        _traceback()
    say("error", f"unexpected internal error ({type(exc).__name__})")
    say("hint", "rerun with --debug for a traceback, and report it (see SECURITY.md)")
    return int(ExitCode.UNEXPECTED)


def _traceback() -> None:
    import traceback

    traceback.print_exc()


def quick_exit(code: int) -> None:
    """End the process without interpreter teardown, after flushing stdout and stderr.

    Tearing down the interpreter (module dicts, the cryptography and click
    objects) takes about 7 ms, as long as ``keycourier age encrypt`` itself.
    Only for commands that hold no database, worker thread or atexit work when
    they return. If a flush fails (a closed pipe), ``sys.exit`` takes over so
    the normal path reports it.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - let the normal exit path report it
        sys.exit(code)
    os._exit(code)
