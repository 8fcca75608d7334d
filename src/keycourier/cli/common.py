"""Shared CLI plumbing: secret input, private files, output rendering.

Secret input comes from a file, stdin (``-``), an environment variable or a
terminal prompt; never from argv.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from keycourier.errors import UsageError
from keycourier.files import write_private as write_private
from keycourier.redact import Secret

MAX_SECRET_FILE_BYTES = 64 * 1024
PASSPHRASE_ENV = "KEYCOURIER_PASSPHRASE"  # noqa: S105 - a variable name
F = TypeVar("F", bound=Callable[..., Any])


def read_limited(stream: BinaryIO, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} is larger than {limit} bytes")
    return data


def read_secret_source(source: str, what: str, *, limit: int = MAX_SECRET_FILE_BYTES) -> bytes:
    """Read a secret from a path or ``-`` (stdin). Returns raw bytes, unmodified."""
    if source == "-":
        return read_limited(sys.stdin.buffer, limit, what)
    try:
        with open(source, "rb") as fh:
            return read_limited(fh, limit, what)
    except OSError as exc:
        raise UsageError(f"cannot read {what} from {source}: {exc.strerror}") from None


def _strip_one_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def get_passphrase(
    passphrase_file: str | None,
    *,
    confirm: bool = False,
    stdin_busy: bool = False,
    what: str = "passphrase",
) -> Secret:
    """Passphrase from --passphrase-file, then KEYCOURIER_PASSPHRASE, then a prompt.

    ``stdin_busy`` is true when the command also reads its input from stdin,
    in which case ``--passphrase-file -`` is refused.
    """
    if passphrase_file is not None:
        if passphrase_file == "-" and stdin_busy:  # noqa: S105 - "-" means stdin
            raise UsageError(
                "--passphrase-file - cannot be used while the input also comes from stdin",
                hints=["pass the input as a file argument, or the passphrase in a file"],
            )
        raw = _strip_one_newline(read_secret_source(passphrase_file, what))
    elif os.environ.get(PASSPHRASE_ENV):
        raw = os.environ[PASSPHRASE_ENV].encode("utf-8")
    elif sys.stdin.isatty() and not stdin_busy:
        value = click.prompt(
            f"Enter {what}", hide_input=True, confirmation_prompt=confirm, err=True
        )
        raw = str(value).encode("utf-8")
    else:
        raise UsageError(
            f"no {what} given",
            hints=[f"use --passphrase-file FILE, set {PASSPHRASE_ENV}, or run on a terminal"],
        )
    if not raw:
        raise UsageError(f"the {what} is empty")
    return Secret(raw)


def write_output(path: str | None, data: bytes, *, private: bool) -> None:
    """Write to ``path`` (0600 when private) or to stdout when ``path`` is None or ``-``."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if private:
        write_private(path, data)
    else:
        try:
            Path(path).write_bytes(data)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def emit_json(obj: Mapping[str, Any] | list[Any]) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def info(text: str) -> None:
    """A diagnostic line on stderr."""
    click.echo(f"keycourier: {text}", err=True)


def warn(text: str) -> None:
    click.echo(f"keycourier: warning: {text}", err=True)


# Options shared by bundle_cmd (open) and provenance_cmd (ingest); here so that
# provenance_cmd (audit, sync) does not import bundle_cmd and the policy with it.
def identity_option(f: F) -> F:
    f = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Passphrase of the identity file (else KEYCOURIER_PASSPHRASE or a prompt).",
    )(f)
    return click.option(
        "--identity",
        "identity_path",
        required=True,
        type=click.Path(dir_okay=False, exists=True),
        help="Your keycourier identity file.",
    )(f)


def trust_option(f: F) -> F:
    f = click.option(
        "--trust-file",
        type=click.Path(dir_okay=False, exists=True),
        help="File of trusted sender keys or fingerprints, one per line.",
    )(f)
    return click.option(
        "--trust",
        multiple=True,
        help="A trusted sender: 'ed25519:<key>' or its 'kc1:' fingerprint (repeatable).",
    )(f)
