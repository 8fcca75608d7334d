"""Run a child process with secrets in its environment; mask them in its output.

* The secrets go into the child's environment only, never its argv (an argv
  that already contains one is refused).
* Credentials keycourier itself reads from the environment (``CREDENTIAL_ENV``,
  the Vault token variable and every profile's client ID/secret variables; see
  ``credential_env_names``) are removed from the child's environment unless
  the caller keeps them by name (``exec --keep-env NAME``).
* SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH received by
  keycourier are forwarded to the child. The child stays in keycourier's
  process group (so it can use the terminal); a Ctrl-C typed at a terminal
  therefore reaches it directly as well as through the forwarder.
* The child's exit code is returned; a child killed by signal N gives 128+N,
  as shells report it.
* With masking on (the default), stdout and stderr go through pipes and a
  ``StreamMasker`` each; with it off, the child inherits them directly.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO, Final

from keycourier.errors import UsageError
from keycourier.helper.masking import StreamMasker
from keycourier.redact import Secret

if TYPE_CHECKING:
    from keycourier.config import Settings

#: Variables that hold (or name the file of) a credential keycourier reads; a child
#: started by ``exec`` does not get them unless kept with ``--keep-env``.
CREDENTIAL_ENV: Final = (
    "VAULT_TOKEN",
    "KEYCOURIER_PASSPHRASE",
    "KEYCOURIER_PROBE_REFRESH_TOKEN",
    "KEYCOURIER_HELPER_KEY",
    "KEYCOURIER_HELPER_KEY_FILE",
    "KEYCOURIER_VAULT_ROLE_ID",
    "KEYCOURIER_VAULT_SECRET_ID_FILE",
)

FORWARDED: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
READ_SIZE: Final = 64 * 1024


def credential_env_names(settings: Settings) -> set[str]:
    """``CREDENTIAL_ENV``, the configured Vault token variable, and every profile's
    client ID and secret variables (read from the raw tables: a malformed profile
    elsewhere in the file must not stop ``exec`` from hiding the others)."""
    names = set(CREDENTIAL_ENV)
    names.add(settings.vault.token_env)
    for table in settings.profiles.values():
        for key in ("client_id_env", "client_secret_env"):
            value = table.get(key) if isinstance(table, Mapping) else None
            if isinstance(value, str) and value:
                names.add(value)
    return names


def child_environment(
    base: Mapping[str, str], inject: Mapping[str, Secret], remove: Collection[str]
) -> dict[str, str]:
    """``base`` without the ``remove`` names, plus the injected secrets."""
    env = {name: value for name, value in base.items() if name not in remove}
    for name, secret in inject.items():
        env[name] = secret.reveal()
    return env


def _pump(src: BinaryIO, dst: BinaryIO, masker: StreamMasker) -> None:
    fd = src.fileno()
    try:
        while True:
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            out = masker.feed(chunk)
            if out:
                dst.write(out)
                dst.flush()
    finally:
        tail = masker.flush()
        if tail:
            dst.write(tail)
        dst.flush()
        src.close()


def run_with_secrets(
    argv: Sequence[str],
    inject: Mapping[str, Secret],
    *,
    conceal: Sequence[Secret] = (),
    mask: bool = True,
    base_env: Mapping[str, str] | None = None,
    remove_env: Collection[str] = (),
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``argv`` with ``inject`` added to its environment and ``remove_env`` taken out;
    return its exit status."""
    # Only when a command is run: ``keycourier token`` reaches this module through
    # cli.helper_ops, and subprocess with threading is a large part of its start-up.
    import subprocess
    import threading

    if not argv:
        raise UsageError("no command given", hints=["keycourier exec --profile P -- CMD ARGS..."])
    values = [s.reveal() for s in (*inject.values(), *conceal) if s]
    for arg in argv:
        if any(v in arg for v in values):
            raise UsageError("a secret appears in the command's arguments; refusing to run it")
    env = child_environment(os.environ if base_env is None else base_env, inject, remove_env)
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    try:
        proc = subprocess.Popen(  # noqa: S603 - the user's own command, no shell
            list(argv),
            env=env,
            stdin=None,
            stdout=subprocess.PIPE if mask else None,
            stderr=subprocess.PIPE if mask else None,
        )
    except FileNotFoundError:
        raise NotRunnableError(f"command not found: {argv[0][:200]}", 127) from None
    except PermissionError:
        raise NotRunnableError(f"command not executable: {argv[0][:200]}", 126) from None

    previous: dict[signal.Signals, object] = {}

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, forward)
    pumps: list[threading.Thread] = []
    try:
        if mask:
            streams = [(s, d) for s, d in ((proc.stdout, out), (proc.stderr, err)) if s is not None]
            for src, dst in streams:
                t = threading.Thread(
                    target=_pump, args=(src, dst, StreamMasker(values)), daemon=True
                )
                t.start()
                pumps.append(t)
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
        for t in pumps:
            t.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    return 128 - code if code < 0 else code


class NotRunnableError(UsageError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
