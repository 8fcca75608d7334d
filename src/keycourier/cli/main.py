"""Entry point: a lazy command table and the one place errors are rendered.

Subcommands are imported only when invoked, so ``keycourier --help`` and
``keycourier age encrypt`` never pay for hvac, requests, aiohttp or
sqlite_utils.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

import click

from keycourier import __version__
from keycourier.errors import Error, ExitCode

if TYPE_CHECKING:
    from keycourier.config import Settings

# name -> (module, attribute, one-line help). Keep the help here so that
# ``--help`` lists every command without importing any of them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "age": ("keycourier.cli.age_cmd", "age", "Encrypt and decrypt standard age v1 files."),
    "identity": (
        "keycourier.cli.identity_cmd",
        "identity",
        "Create and show keycourier identities.",
    ),
    "seal": ("keycourier.cli.bundle_cmd", "seal", "Check credentials and seal them into a bundle."),
    "inspect": ("keycourier.cli.bundle_cmd", "inspect", "Show a bundle's public manifest."),
    "open": ("keycourier.cli.bundle_cmd", "open_bundle", "Verify, decrypt and release a bundle."),
    "bundle": (
        "keycourier.cli.bundle_cmd",
        "bundle",
        "Low-level bundle tools (extract the age payload).",
    ),
    "check": ("keycourier.cli.policy_cmd", "check", "Run the handover policy without sealing."),
    "policy": (
        "keycourier.cli.policy_cmd",
        "policy",
        "Show the policy in force; deny fingerprints.",
    ),
    "ingest": ("keycourier.cli.provenance_cmd", "ingest", "Open a bundle and store it in Vault."),
    "revoke": ("keycourier.cli.provenance_cmd", "revoke", "Record that a bundle is revoked."),
    "sync": ("keycourier.cli.provenance_cmd", "sync", "Deliver pending ledger events to Vault."),
    "audit": ("keycourier.cli.provenance_cmd", "audit", "Verify, show and export the ledger."),
    "doctor": (
        "keycourier.cli.provenance_cmd",
        "doctor",
        "Check Vault reachability and permissions.",
    ),
    "token": ("keycourier.cli.helper_cmd", "token", "Print a partner access token."),
    "exec": ("keycourier.cli.helper_cmd", "exec_", "Run a command with a partner token injected."),
    "serve": (
        "keycourier.cli.helper_cmd",
        "serve",
        "Run the authenticated token helper on loopback.",
    ),
    "helper": ("keycourier.cli.helper_cmd", "helper", "Manage token helper client keys."),
    "connection": (
        "keycourier.cli.connection_cmd",
        "connection",
        "Create and follow accounting connections.",
    ),
}


# Top-level commands whose process may end without interpreter teardown (see
# run()): they hold no database, no worker thread and no atexit work when they
# return; every file they write is closed (and renamed) before that.
FAST_EXIT_COMMANDS: frozenset[str] = frozenset({"age"})

_resolved: list[str] = []  # top-level commands resolved in this process


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        _resolved.append(cmd_name)
        module = importlib.import_module(entry[0])
        command = getattr(module, entry[1])
        if not isinstance(command, click.Command):  # pragma: no cover - programming error
            raise TypeError(f"{entry[0]}.{entry[1]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


EPILOG = """\b
Exit codes: 0 ok, 1 unexpected, 2 usage, 3 config, 4 integrity,
5 auth, 6 backend unavailable (retry), 7 policy rejection.
Example: keycourier seal --platform quickbooks --client-id AB... \\
           --client-secret-file secret.txt --identity me.kcid -r age1... -o handover.kcb
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keycourier")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default ~/.config/keycourier/config.toml; env KEYCOURIER_CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, config_path: str | None) -> None:
    """keycourier: signed, encrypted, audited handover of partner API credentials."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["config_path"] = config_path


def _say(kind: str, text: str) -> None:
    sys.stderr.write(f"keycourier: {kind}: {text}\n")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn every outcome into a documented exit code."""
    _resolved.clear()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of exiting.
        rc = cli.main(args=argv, prog_name="keycourier", standalone_mode=False)
    except Error as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _say("error", exc.message)
        for hint in exc.hints:
            _say("hint", hint)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        _say("error", "aborted")
        sys.exit(130)
    except click.ClickException as exc:
        _say("error", exc.format_message())
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            _say("hint", f"see '{exc.ctx.command_path} --help'")
        sys.exit(int(ExitCode.USAGE))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("error", "interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(int(ExitCode.UNEXPECTED))
    except OSError as exc:
        # An I/O failure keycourier did not turn into a message itself (a full disk
        # under stdout, say): name the system error only; its filename is not shown.
        _say("error", f"input/output error: {exc.strerror or type(exc).__name__}")
        sys.exit(int(ExitCode.UNEXPECTED))
    except Exception as exc:  # noqa: BLE001 - the one catch-all, by design
        # Never print the exception's message: it could carry a secret.
        if debug:
            import traceback

            traceback.print_exc()
        _say("error", f"unexpected internal error ({type(exc).__name__})")
        _say("hint", "rerun with --debug for a traceback, and report it (see SECURITY.md)")
        sys.exit(int(ExitCode.UNEXPECTED))
    else:
        sys.exit(rc if isinstance(rc, int) else 0)


def run() -> None:
    """The console-script entry: ``main()``, then a quick exit for ``age`` commands.

    Tearing down the interpreter (module dicts, the cryptography and click
    objects) takes about 7 ms here, as long as everything ``keycourier age
    encrypt`` itself does. When the command was one of FAST_EXIT_COMMANDS,
    stdout and stderr are flushed and the process ends with ``os._exit``.
    Anything else, or a flush that fails (a closed pipe), takes the normal
    ``sys.exit`` path. Only for real processes: ``main()`` stays safe to call
    in-process (tests).
    """
    try:
        main()
    except SystemExit as done:
        code = done.code
        fast = bool(_resolved) and set(_resolved) <= FAST_EXIT_COMMANDS
        if not fast or not (code is None or isinstance(code, int)):
            raise
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - let the normal exit path report it
            raise done from None
        import os

        os._exit(code or 0)


def settings_from(
    ctx: click.Context, *, policy_path: str | None = None, ledger_path: str | None = None
) -> Settings:
    """Load settings once per invocation, honouring the global --config flag."""
    from keycourier import config

    root = ctx.find_root()
    obj = root.obj or {}
    return config.load(
        config_path=obj.get("config_path"), policy_path=policy_path, ledger_path=ledger_path
    )
