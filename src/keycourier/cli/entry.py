"""The console-script entry: click-free fast paths for the commands run most often.

Importing click and building the command tree costs about 15 to 19 ms, a third
of the start-up of ``keycourier age decrypt`` and most of a cached
``keycourier token``. Command lines of the plainest shape skip it and call
``age_ops``, ``helper_ops``, ``provenance_ops`` or ``bundle_ops`` directly, the
same functions the click commands call:

    --version
    age encrypt (-r RECIPIENT | -R FILE | -a | -o OUT)... [INPUT]
    age decrypt (-i FILE | -o OUT)... [INPUT]
    token (-p PROFILE | --format FORMAT | --env-name NAME | --no-cache)...
    exec (-p PROFILE | --env-name NAME | --keep-env NAME | --no-mask | --no-cache)...
         [--] COMMAND...
    audit verify (--json | --vault | --ledger FILE)...
    inspect [--json] BUNDLE [--json]

(long spellings too), with at least one recipient or identity for age, a
profile for token and exec and one BUNDLE for inspect. Anything else goes to
the full click CLI unchanged: global options, help, passphrases (and so prompts) and work
factors, ``--opt=value``, bundled short flags, ``--`` (except before exec's
COMMAND), a repeated single-valued option, a second INPUT, an empty value or
one starting with ``-`` (other than ``-`` for stdin/stdout where click allows
it), a format click does not know, and any path click would refuse (an
existing directory, an unreadable file). So the fast path only ever takes
command lines click parses to the same values; tests/cli/test_fast_path.py
checks that against click itself.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final, Literal

from keycourier import __version__

if TYPE_CHECKING:  # typing constructs cost start-up time at run time
    _Kind = Literal["multi", "multi-path", "single-path-dash", "flag"]
    _HelperKind = Literal["single", "multi", "flag"]

# option spelling -> (destination, kind); "multi" collects, "single" may appear once
ENCRYPT_OPTIONS: Final[dict[str, tuple[str, _Kind]]] = {
    "-r": ("recipients", "multi"),
    "--recipient": ("recipients", "multi"),
    "-R": ("recipient_files", "multi-path"),
    "--recipients-file": ("recipient_files", "multi-path"),
    "-a": ("armor", "flag"),
    "--armor": ("armor", "flag"),
    "-o": ("output", "single-path-dash"),
    "--output": ("output", "single-path-dash"),
}
DECRYPT_OPTIONS: Final[dict[str, tuple[str, _Kind]]] = {
    "-i": ("identity_files", "multi-path"),
    "--identity": ("identity_files", "multi-path"),
    "-o": ("output", "single-path-dash"),
    "--output": ("output", "single-path-dash"),
}
# option spelling -> (destination, kind) for token and exec: "single" may appear once
TOKEN_OPTIONS: Final[dict[str, tuple[str, _HelperKind]]] = {
    "-p": ("profile", "single"),
    "--profile": ("profile", "single"),
    "--format": ("fmt", "single"),
    "--env-name": ("env_name", "single"),
    "--no-cache": ("no_cache", "flag"),
    "--timeout": ("timeout", "single"),
}
EXEC_OPTIONS: Final[dict[str, tuple[str, _HelperKind]]] = {
    "-p": ("profile", "single"),
    "--profile": ("profile", "single"),
    "--env-name": ("env_name", "single"),
    "--keep-env": ("keep_env", "multi"),
    "--no-mask": ("no_mask", "flag"),
    "--no-cache": ("no_cache", "flag"),
}
AUDIT_VERIFY_OPTIONS: Final[dict[str, tuple[str, _HelperKind]]] = {
    "--json": ("as_json", "flag"),
    "--vault": ("with_vault", "flag"),
    "--ledger": ("ledger_path", "single"),
    "--since": ("since", "single"),
}
# the values of token --format (helper.formats.Format; the test checks click's Choice)
TOKEN_FORMATS: Final = ("raw", "json", "env", "github", "credential-process")


class FastCommand:
    """A parsed fast-path command line. Not a dataclass: importing ``dataclasses``
    (and ``inspect`` with it) would cost about a sixth of what this path saves."""

    __slots__ = ("armor", "command", "identity_files", "input_path", "output", "recipient_files",
                 "recipients")  # fmt: skip

    def __init__(self, command: Literal["encrypt", "decrypt"]) -> None:
        self.command = command
        self.recipients: list[str] = []
        self.recipient_files: list[str] = []
        self.identity_files: list[str] = []
        self.armor = False
        self.output: str | None = None
        self.input_path: str | None = None

    def params(self) -> dict[str, object]:
        """The values under the click command's parameter names, as click would give them."""
        if self.command == "encrypt":
            return {
                "recipients": tuple(self.recipients),
                "recipient_files": tuple(self.recipient_files),
                "use_passphrase": False,
                "passphrase_file": None,
                "work_factor": 18,
                "armor": self.armor,
                "output": self.output,
                "input_path": self.input_path,
            }
        return {
            "identity_files": tuple(self.identity_files),
            "passphrase_file": None,
            "output": self.output,
            "input_path": self.input_path,
        }


def _path_click_accepts(value: str) -> bool:
    """click.Path(dir_okay=False) refuses an existing directory or unreadable file."""
    if not os.path.exists(value):
        return True
    return not os.path.isdir(value) and os.access(value, os.R_OK)


def parse(argv: list[str]) -> FastCommand | None:
    """The fast-path reading of ``argv``, or None to let click handle it."""
    if len(argv) < 2 or argv[0] != "age" or argv[1] not in ("encrypt", "decrypt"):
        return None
    cmd = FastCommand("encrypt" if argv[1] == "encrypt" else "decrypt")
    table = ENCRYPT_OPTIONS if cmd.command == "encrypt" else DECRYPT_OPTIONS
    i = 2
    while i < len(argv):
        arg = argv[i]
        spec = table.get(arg)
        if spec is None:
            if arg.startswith("-") and arg != "-":
                return None  # another option, --, help, --opt=value, bundled flags
            if cmd.input_path is not None:
                return None  # a second INPUT: click's error
            cmd.input_path = arg
            i += 1
            continue
        dest, kind = spec
        if kind == "flag":
            setattr(cmd, dest, True)
            i += 1
            continue
        if i + 1 >= len(argv):
            return None  # a missing value: click's error
        value = argv[i + 1]
        if not value or (value.startswith("-") and not (value == "-" and kind.endswith("dash"))):
            return None
        if kind != "multi" and value != "-" and not _path_click_accepts(value):
            return None
        if kind == "single-path-dash":
            if cmd.output is not None:
                return None
            cmd.output = value
        else:
            getattr(cmd, dest).append(value)
        i += 2
    if not (cmd.recipients or cmd.recipient_files or cmd.identity_files):
        return None  # a passphrase (maybe a prompt) or click's usage error: not here
    return cmd


class HelperCommand:
    """A parsed fast-path ``token`` or ``exec`` command line (see ``FastCommand``)."""

    __slots__ = ("command", "env_name", "exec_args", "fmt", "keep_env", "no_cache", "no_mask",
                 "profile", "timeout")  # fmt: skip

    def __init__(self, command: Literal["token", "exec"]) -> None:
        self.command = command
        self.profile: str | None = None
        self.fmt: str | None = None
        self.env_name: str | None = None
        self.keep_env: list[str] = []
        self.no_cache = False
        self.no_mask = False
        self.timeout: str | None = None
        self.exec_args: list[str] = []

    def params(self) -> dict[str, object]:
        """The values under the click command's parameter names, as click would give them."""
        if self.command == "token":
            return {
                "profile": self.profile,
                "fmt": self.fmt or "raw",
                "env_name": self.env_name,
                "no_cache": self.no_cache,
                "timeout": self.timeout,
            }
        return {
            "profile": self.profile,
            "env_name": self.env_name,
            "no_mask": self.no_mask,
            "no_cache": self.no_cache,
            "keep_env": tuple(self.keep_env),
            "command": tuple(self.exec_args),
        }


def parse_helper(argv: list[str]) -> HelperCommand | None:
    """The fast-path reading of a ``token`` or ``exec`` ``argv``, or None to let click
    handle it."""
    if not argv or argv[0] not in ("token", "exec"):
        return None
    cmd = HelperCommand("token" if argv[0] == "token" else "exec")
    table = TOKEN_OPTIONS if cmd.command == "token" else EXEC_OPTIONS
    i = 1
    while i < len(argv):
        arg = argv[i]
        spec = table.get(arg)
        if spec is None:
            if cmd.command == "token":
                return None  # token takes no argument: click's usage error
            # exec: COMMAND starts after "--" or at the first argument that is no option
            start = i + 1 if arg == "--" else i
            if start == i and arg.startswith("-"):
                return None  # another option, help, --opt=value, bundled flags
            cmd.exec_args = argv[start:]
            break
        dest, kind = spec
        if kind == "flag":
            setattr(cmd, dest, True)
            i += 1
            continue
        if i + 1 >= len(argv):
            return None  # a missing value: click's error
        value = argv[i + 1]
        if not value or value.startswith("-"):
            return None
        if kind == "multi":
            getattr(cmd, dest).append(value)
        elif getattr(cmd, dest) is not None:
            return None  # a repeated option: left to click
        else:
            setattr(cmd, dest, value)
        i += 2
    if cmd.profile is None or (cmd.fmt is not None and cmd.fmt not in TOKEN_FORMATS):
        return None  # click's usage error
    if cmd.command == "exec" and not cmd.exec_args:
        return None  # no COMMAND: click's usage error
    return cmd


class AuditVerifyCommand:
    """A parsed fast-path ``audit verify`` command line (see ``FastCommand``)."""

    __slots__ = ("as_json", "ledger_path", "since", "with_vault")

    def __init__(self) -> None:
        self.with_vault = False
        self.as_json = False
        self.ledger_path: str | None = None
        self.since: str | None = None

    def params(self) -> dict[str, object]:
        """The values under the click command's parameter names, as click would give them."""
        return {
            "with_vault": self.with_vault,
            "as_json": self.as_json,
            "ledger_path": self.ledger_path,
            "since": self.since,
        }


def parse_audit_verify(argv: list[str]) -> AuditVerifyCommand | None:
    """The fast-path reading of an ``audit verify`` ``argv``, or None to let click handle it."""
    if argv[:2] != ["audit", "verify"]:
        return None
    cmd = AuditVerifyCommand()
    i = 2
    while i < len(argv):
        spec = AUDIT_VERIFY_OPTIONS.get(argv[i])
        if spec is None:
            return None  # an argument, another option, help, --opt=value: click's
        dest, kind = spec
        if kind == "flag":
            setattr(cmd, dest, True)
            i += 1
            continue
        if i + 1 >= len(argv) or getattr(cmd, dest) is not None:
            return None  # a missing value or a repeated option
        value = argv[i + 1]
        if not value or value.startswith("-") or not _path_click_accepts(value):
            return None
        setattr(cmd, dest, value)
        i += 2
    return cmd


class InspectCommand:
    """A parsed fast-path ``inspect`` command line (see ``FastCommand``)."""

    __slots__ = ("as_json", "bundle_file")

    def __init__(self) -> None:
        self.as_json = False
        self.bundle_file: str | None = None

    def params(self) -> dict[str, object]:
        """The values under the click command's parameter names, as click would give them."""
        return {"bundle_file": self.bundle_file, "as_json": self.as_json}


def parse_inspect(argv: list[str]) -> InspectCommand | None:
    """The fast-path reading of an ``inspect`` ``argv``, or None to let click handle it."""
    if not argv or argv[0] != "inspect":
        return None
    cmd = InspectCommand()
    for arg in argv[1:]:
        if arg == "--json":
            cmd.as_json = True
        elif not arg or (arg.startswith("-") and arg != "-"):
            return None  # another option, --, help, --opt=value, an empty path
        elif cmd.bundle_file is not None or not _path_click_accepts(arg):
            return None  # a second BUNDLE, or a path click refuses
        else:
            cmd.bundle_file = arg
    return cmd if cmd.bundle_file is not None else None


def _run_inspect(cmd: InspectCommand) -> None:
    """Run a fast-path ``inspect`` and exit as ``main()`` would, without interpreter
    teardown (nothing is left open)."""
    from keycourier.cli import bundle_ops
    from keycourier.cli.outcome import exit_code_for, quick_exit

    try:
        bundle_ops.show_inspection(cmd.bundle_file or "-", as_json=cmd.as_json)
        code = 0
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - rendered as main() does
        code = exit_code_for(exc, debug=False)
    quick_exit(code)


def _run_audit_verify(cmd: AuditVerifyCommand) -> None:
    """Run a fast-path ``audit verify`` and exit as ``main()`` would, without interpreter
    teardown: the ledger is closed when ``verify_ledger`` returns."""
    from keycourier import config
    from keycourier.cli import provenance_ops
    from keycourier.cli.outcome import exit_code_for, quick_exit

    try:
        settings = config.load(ledger_path=cmd.ledger_path)
        provenance_ops.verify_ledger(
            settings, with_vault=cmd.with_vault, as_json=cmd.as_json, since=cmd.since
        )
        code = 0
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - rendered as main() does
        code = exit_code_for(exc, debug=False)
    quick_exit(code)


def _run_helper(cmd: HelperCommand) -> None:
    """Run a fast-path ``token`` or ``exec`` and exit as ``main()`` would, without
    interpreter teardown: by then the command has closed the ledger (when it minted
    a token), the child has exited and its output pumps are joined."""
    from keycourier import config
    from keycourier.cli import helper_ops
    from keycourier.cli.outcome import exit_code_for, quick_exit

    try:
        settings = config.load()
        if cmd.command == "token":
            helper_ops.print_token(
                settings,
                cmd.profile or "",
                cmd.fmt or "raw",
                cmd.env_name,
                no_cache=cmd.no_cache,
                timeout=cmd.timeout,
            )
            code = 0
        else:
            code = helper_ops.exec_with_token(
                settings,
                cmd.profile or "",
                cmd.env_name,
                no_mask=cmd.no_mask,
                no_cache=cmd.no_cache,
                keep_env=cmd.keep_env,
                command=cmd.exec_args,
            )
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - rendered as main() does
        code = exit_code_for(exc, debug=False)
    quick_exit(code)


def run() -> None:
    """Console-script entry: the fast path when ``parse`` takes the command line,
    else the full click CLI (``keycourier.cli.main.run``). Either way, first of all:
    no core dump of a process that may hold a secret (``forbid_core_dumps``)."""
    forbid_core_dumps()
    # click's shell completion is driven by this variable, not by argv
    completing = "_KEYCOURIER_COMPLETE" in os.environ
    argv = sys.argv[1:]
    if not completing and argv == ["--version"]:
        if sys.stdout is not None:  # a closed stdout: nothing to say, as click.echo
            sys.stdout.write(f"keycourier, version {__version__}\n")  # click's version_option
            sys.stdout.flush()
        return
    helper = None if completing else parse_helper(argv)
    if helper is not None:
        _run_helper(helper)
        return
    audit = None if completing else parse_audit_verify(argv)
    if audit is not None:
        _run_audit_verify(audit)
        return
    inspection = None if completing else parse_inspect(argv)
    if inspection is not None:
        _run_inspect(inspection)
        return
    cmd = None if completing else parse(argv)
    if cmd is None:
        from keycourier.cli.main import run as run_click

        run_click()
        return
    from keycourier.cli import age_ops
    from keycourier.cli.outcome import exit_code_for, quick_exit

    try:
        if cmd.command == "encrypt":
            age_ops.encrypt_files(
                recipients=cmd.recipients,
                recipient_files=cmd.recipient_files,
                armor=cmd.armor,
                output=cmd.output,
                input_path=cmd.input_path,
            )
        else:
            age_ops.decrypt_files(
                identity_files=cmd.identity_files, output=cmd.output, input_path=cmd.input_path
            )
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - rendered as main() does
        quick_exit(exit_code_for(exc, debug=False))
    quick_exit(0)


PR_SET_DUMPABLE: Final = 4  # <linux/prctl.h>


def forbid_core_dumps() -> None:
    """No core file of this process and, on Linux, not dumpable: run first, for every command.

    Most commands hold a secret at some point (a partner token, a client
    secret, an identity's private key, a passphrase, a helper client key), and
    a core file or ``/proc/PID/mem`` would hand it over.

    * The soft ``RLIMIT_CORE`` becomes 0 (the hard limit is kept): no core
      file, also for the command ``keycourier exec`` runs, which may raise it
      again for itself.
    * On Linux, ``prctl(PR_SET_DUMPABLE, 0)``: no core dump even through a
      ``core_pattern`` pipe (which ignores ``RLIMIT_CORE``), and other
      processes of the same user can neither ptrace this one nor read its
      ``/proc/PID/mem`` or ``environ`` (``/proc/PID/*`` becomes root's). A
      child is dumpable again once it execs.

    Here, not in a module of its own, and through ``_ctypes`` rather than
    ``ctypes``: a further module lookup costs about 0.5 ms and ``import
    ctypes`` (which builds every C type class) about 2 ms, which the ``age``
    fast path would notice; this costs about 0.7 ms (loading ``resource`` and
    ``_ctypes``). Best effort: what the platform lacks is skipped, nothing
    fails.
    """
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ImportError, ValueError, OSError):
        pass
    if not sys.platform.startswith("linux"):
        return
    try:
        import _ctypes

        class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg] # ctypes.c_int
            _type_ = "i"

        class _CFunction(_ctypes.CFuncPtr):  # what ctypes.CDLL makes for each function
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = _Int

        class _Libc:  # this process's own symbols: libc is already loaded
            _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type] # None: this process

        prctl = _CFunction(("prctl", _Libc()))  # type: ignore[arg-type] # has _handle
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (ImportError, AttributeError, OSError, TypeError):
        pass
