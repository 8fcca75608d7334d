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
from keycourier.cli.outcome import exit_code_for, quick_exit, say
from keycourier.errors import ExitCode

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
    "rotate": (
        "keycourier.cli.bundle_cmd",
        "rotate",
        "Seal new credentials that replace a bundle you sent.",
    ),
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
    "receipt": (
        "keycourier.cli.receipt_cmd",
        "receipt",
        "Verify and inspect receivers' signed receipts.",
    ),
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
    "helper": ("keycourier.cli.helper_keys_cmd", "helper", "Manage token helper client keys."),
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
           --client-secret-file secret.txt --environment production \\
           --attested-by "Jane Doe, CTO" --identity me.kcid -r age1... -o handover.kcb
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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn every outcome into a documented exit code."""
    _resolved.clear()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of exiting.
        rc = cli.main(args=argv, prog_name="keycourier", standalone_mode=False)
    except click.exceptions.Abort:
        say("error", "aborted")
        sys.exit(130)
    except click.ClickException as exc:
        say("error", exc.format_message())
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            say("hint", f"see '{exc.ctx.command_path} --help'")
        sys.exit(int(ExitCode.USAGE))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the one catch-all
        sys.exit(exit_code_for(exc, debug=debug))
    else:
        sys.exit(rc if isinstance(rc, int) else 0)


def run() -> None:
    """``main()``, then a quick exit (``outcome.quick_exit``) for ``age`` commands.

    The console script enters through ``keycourier.cli.entry.run``, which
    calls this for every command line its click-free fast path does not take.
    Only for real processes: ``main()`` stays safe to call in-process (tests).
    """
    try:
        main()
    except SystemExit as done:
        code = done.code
        fast = bool(_resolved) and set(_resolved) <= FAST_EXIT_COMMANDS
        if not fast or not (code is None or isinstance(code, int)):
            raise
        quick_exit(code or 0)


def settings_from(
    ctx: click.Context, *, policy_path: str | None = None, ledger_path: str | None = None
) -> Settings:
    """Load settings once per invocation, honouring the global --config flag."""
    # lazy: tomllib and the config parser stay off --help and --version
    from keycourier import config

    root = ctx.find_root()
    obj = root.obj or {}
    return config.load(
        config_path=obj.get("config_path"), policy_path=policy_path, ledger_path=ledger_path
    )
