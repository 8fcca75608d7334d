"""Shared CLI plumbing: secret input, private files, output rendering.

Secret input comes from a file, stdin (``-``), an environment variable or a
terminal prompt; never from argv.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from keycourier.errors import UsageError
from keycourier.files import read_limited
from keycourier.files import write_private as write_private
from keycourier.redact import Secret, printable

MAX_SECRET_FILE_BYTES = 64 * 1024
PASSPHRASE_ENV = "KEYCOURIER_PASSPHRASE"  # noqa: S105 - a variable name
F = TypeVar("F", bound=Callable[..., Any])


def read_secret_source(source: str, what: str, *, limit: int = MAX_SECRET_FILE_BYTES) -> bytes:
    """Read a secret from a path or ``-`` (stdin). Returns raw bytes, unmodified."""
    if source == "-":
        return read_limited(sys.stdin.buffer, what, limit)
    return read_limited(source, f"{what} from {source}", limit)


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


def default_actor() -> str:
    """``user@host``: who acts when no identity says it (revoke, receipt verify)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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


_TRUST_FP = re.compile(r"kc1:[0-9a-fA-F]{32}")
_TRUST_KEY = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")
_TRUST_FORM = (
    "expected kc1: followed by 32 hex characters (the signing fingerprint) or "
    "ed25519: followed by the 44-character base64 signing key"
)
_TRUST_HINT = (
    "'keycourier identity show IDENTITY' on the sender's side prints its signing fingerprint"
)


def parse_trusted_sender(value: str, where: str = "--trust") -> str:
    """A pinned sender, checked for form at the edge: ``kc1:<32 hex>`` (lower-cased) or
    ``ed25519:<base64 key>``. A malformed value is a usage error naming the expected form;
    only a well-formed value that names another signer reaches the integrity check."""
    text = value.strip()
    if _TRUST_FP.fullmatch(text):
        return text.lower()
    if _TRUST_KEY.fullmatch(text):
        return text
    shown = printable(text, 80)
    if text.lower().startswith("age1"):
        why = "is an age recipient (an encryption key), not a sender's signing key"
    elif text.lower().startswith("kc1:"):
        body = text[4:]
        if re.fullmatch(r"[0-9a-fA-F]*", body):
            why = f"has {len(body)} hex characters after kc1: (truncated or extended?)"
        else:
            why = "has characters after kc1: that are not hex"
    elif re.fullmatch(r"[0-9a-fA-F]{32}", text):
        why = "lacks the kc1: prefix"
    elif text.lower().startswith("ed25519:"):
        why = "is not a 44-character base64 Ed25519 key after ed25519:"
    else:
        why = "is not a signing fingerprint or signing key"
    raise UsageError(
        f"{where} {shown!r} {why}: {_TRUST_FORM}",
        hints=[_TRUST_HINT + " (kc1:0123456789abcdef0123456789abcdef, say)"],
    )


def trusted_senders(trust: tuple[str, ...], trust_file: str | None) -> list[str]:
    values = list(trust)
    if trust_file:
        with open(trust_file, encoding="ascii", errors="replace") as fh:
            for number, line in enumerate(fh.read(64 * 1024).splitlines(), start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    values.append(parse_trusted_sender(line, f"{trust_file} line {number}:"))
    if not values:
        raise UsageError(
            "no trusted sender given",
            hints=["pin the sender with --trust kc1:... (see 'keycourier identity show')"],
        )
    return values


def _parse_trust_option(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--trust``, checked at the edge; keycourier's UsageError (exit 2) passes through click."""
    return tuple(parse_trusted_sender(v) for v in values)


def trust_option(f: F) -> F:
    """--trust / --trust-file pinning the senders whose bundles are accepted."""
    return pin_options("sender")(f)


def receiver_trust_option(f: F) -> F:
    """--trust / --trust-file pinning the receiver whose receipts are accepted."""
    return pin_options("receiver")(f)


def pin_options(role: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = click.option(
            "--trust-file",
            type=click.Path(dir_okay=False, exists=True),
            help=f"File of trusted {role} keys or fingerprints, one per line.",
        )(f)
        return click.option(
            "--trust",
            multiple=True,
            metavar=role.upper(),
            callback=_parse_trust_option,
            help=f"A trusted {role}: its 'kc1:' signing fingerprint (32 hex characters) or "
            "'ed25519:<key>' (repeatable).",
        )(f)

    return decorate
