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
* The child is started as ``subprocess.Popen`` starts it (the ``PATH`` of the
  child's environment searched as ``Popen`` does, file descriptors other than
  0-2 closed, SIGPIPE and SIGXFSZ back to their defaults), but with
  ``os.posix_spawn``, and its output is pumped by this thread with
  ``select.poll``: ``subprocess`` and ``threading`` with two pump threads cost
  ``keycourier exec`` a tenth of its start-up.
"""

from __future__ import annotations

import os
import select
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


def _executable(name: str, env: Mapping[str, str]) -> list[str]:
    """The paths to try for ``name``, in order: itself when it names a path, else each
    directory of the ``PATH`` in ``env`` (``Popen``'s search, ``os.get_exec_path``)."""
    if os.sep in name:
        return [name]
    return [os.path.join(d, name) for d in os.get_exec_path(env)]


def _inherited_fds() -> list[int]:
    """The inheritable descriptors above 2 (``Popen``'s ``close_fds`` closes them in the
    child; keycourier's own are close-on-exec already)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        fds = []
        for n in names:
            fd = int(n)
            try:
                if fd > 2 and os.get_inheritable(fd):
                    fds.append(fd)
            except OSError:  # the listing's own descriptor, closed by now
                pass
        return fds
    return []


def _above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy numbered 3 or higher when a standard stream of
    keycourier was closed and a pipe took its number (the child's dup2 would then be a
    no-op that leaves the descriptor close-on-exec)."""
    if fd > 2:
        return fd
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def _spawn(argv: Sequence[str], env: Mapping[str, str], redirect: list[tuple[int, int]]) -> int:
    """Start ``argv`` with ``env``, descriptor ``w`` as the child's ``fd`` for each
    ``(w, fd)`` in ``redirect``; its PID. OSError as ``Popen`` raises it (the first
    error other than ENOENT/ENOTDIR of the paths tried, else the last)."""
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, w, fd) for w, fd in redirect]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
    first: OSError | None = None
    last: OSError | None = None
    for path in _executable(argv[0], env):
        try:
            os.stat(path)  # a failed spawn costs a clone of this process: skip the absent
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
            continue
        except OSError:
            pass  # the spawn reports it
        try:
            return os.posix_spawn(
                path,
                list(argv),
                env,
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            last = exc
            if first is None and not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                first = exc
    raise first or last or FileNotFoundError(2, "No such file or directory")


def _write(dst: BinaryIO, data: bytes) -> bool:
    """Write and flush; False when ``dst`` is gone (a closed pipe, a full disk)."""
    try:
        dst.write(data)
        dst.flush()
    except OSError:
        return False
    return True


def _pump(streams: Mapping[int, tuple[BinaryIO, StreamMasker]]) -> None:
    """Copy each pipe to its destination through its masker until every pipe ends.

    A destination that fails stops its pipe only (it is closed, so the child's next
    write there fails as it would without keycourier); the other goes on.
    """
    sinks = dict(streams)
    poller = select.poll()
    for fd in sinks:
        poller.register(fd, select.POLLIN)
    try:
        while sinks:
            for fd, _event in poller.poll():
                dst, masker = sinks[fd]
                chunk = os.read(fd, READ_SIZE)
                out = masker.feed(chunk) if chunk else masker.flush()  # b"": the end
                written = not out or _write(dst, out)
                if chunk and written:
                    continue
                poller.unregister(fd)
                os.close(fd)
                del sinks[fd]
    finally:
        for fd in sinks:
            os.close(fd)


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
    if not argv:
        raise UsageError("no command given", hints=["keycourier exec --profile P -- CMD ARGS..."])
    values = [s.reveal() for s in (*inject.values(), *conceal) if s]
    for arg in argv:
        if any(v in arg for v in values):
            raise UsageError("a secret appears in the command's arguments; refusing to run it")
    env = child_environment(os.environ if base_env is None else base_env, inject, remove_env)
    streams: dict[int, tuple[BinaryIO, StreamMasker]] = {}
    redirect: list[tuple[int, int]] = []
    if mask:
        for fd, dst in ((1, stdout or sys.stdout.buffer), (2, stderr or sys.stderr.buffer)):
            r, w = os.pipe()
            r, w = _above_stdio(r), _above_stdio(w)
            streams[r] = (dst, StreamMasker(values))
            redirect.append((w, fd))
    try:
        try:
            pid = _spawn(argv, env, redirect)
        finally:
            for w, _fd in redirect:  # the child's copies are its stdout and stderr
                os.close(w)
    except OSError as exc:
        for r in streams:
            os.close(r)
        if isinstance(exc, FileNotFoundError):
            raise NotRunnableError(f"command not found: {argv[0][:200]}", 127) from None
        if isinstance(exc, PermissionError):
            raise NotRunnableError(f"command not executable: {argv[0][:200]}", 126) from None
        raise

    reaped = False
    previous: dict[signal.Signals, object] = {}

    def forward(signum: int, _frame: object) -> None:
        if not reaped:  # until then the PID is the child's, even once it has exited
            os.kill(pid, signum)

    try:
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: no handlers, as before
        pass
    try:
        _pump(streams)
        _pid, status = os.waitpid(pid, 0)  # PEP 475: retried after a forwarded signal
        reaped = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class NotRunnableError(UsageError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
