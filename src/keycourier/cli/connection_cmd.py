"""``keycourier connection ...``: create and follow accounting connections.

Thin: each command parses its options, calls one function of
``keycourier.partner.connections`` (its ``workflow`` or its ``client``) and
renders the result. Data goes to stdout (``--json`` for machines), diagnostics
to stderr.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from keycourier.cli.common import emit_json, info, read_secret_source, warn
from keycourier.cli.main import settings_from
from keycourier.cli.record import WarnOnClose, open_recorder
from keycourier.errors import ConfigError, PolicyError, UnavailableError, UsageError
from keycourier.helper.service import ProfileTokenSource
from keycourier.ledger.interface import VaultStatus
from keycourier.partner.connections.client import ConnectionClient, StaticTokenSource
from keycourier.partner.connections.model import endpoint_for_profile, parse_duration, parse_uuid
from keycourier.partner.connections.workflow import (
    WaitPolicy,
    create_connection,
    describe,
    disconnect_connection,
    wait_for_connection,
)
from keycourier.redact import Secret

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.helper.service import ProfileTokenSource
    from keycourier.ledger.interface import Recorder
    from keycourier.partner.connections.client import ConnectionClient, TokenSource
    from keycourier.partner.connections.model import Connection
    from keycourier.partner.connections.workflow import Recorded
    from keycourier.redact import Secret


@dataclass(frozen=True, slots=True)
class _Call:
    settings: Settings
    client: ConnectionClient
    scope_id: str
    profile: str

    @property
    def scope_option(self) -> str:
        """``--entity`` (Monite) or ``--organization`` (Tesouro)."""
        return f"--{self.client.endpoint.spec.scope_name}"

    @property
    def actor(self) -> str:
        return f"profile:{self.profile}"

    def recorder(self) -> Callable[[], Recorder]:
        return _recorder_factory(self.settings)


def _recorder_factory(settings: Settings) -> Callable[[], Recorder]:
    """The command's ledger (``cli.record.open_recorder``), opened at the first event;
    closing it (after the connection changed on the platform) warns instead of failing."""

    def factory() -> Recorder:
        return WarnOnClose(open_recorder(settings))

    return factory


def _pick_profile(settings: Settings, name: str | None) -> str:
    if name is not None:
        return name
    names = sorted(settings.profiles)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(
            "no platform profile is configured",
            hints=["add a [profiles.NAME] table to the config file (see docs/connections.md)"],
        )
    raise UsageError(
        "several profiles are configured; choose one with --profile",
        hints=["profiles: " + ", ".join(names)],
    )


def _token_source(
    settings: Settings, profile: str, token_file: str | None, deadline: float | None = None
) -> TokenSource:

    if token_file is not None:
        raw = read_secret_source(token_file, "partner token").strip()
        if not raw or b"\n" in raw:
            raise UsageError("the partner token file must hold exactly one token")
        where = "standard input" if token_file == "-" else f"the file {token_file}"  # noqa: S105
        return StaticTokenSource(Secret(raw), f"the partner token from {where} (--token-file)")

    return _Warned(ProfileTokenSource(settings, profile, deadline=deadline))


class _Warned:
    """The token helper's source, its warnings shown on stderr as they happen."""

    def __init__(self, inner: ProfileTokenSource) -> None:
        self._inner = inner

    def get(self) -> Secret:

        token = self._inner.get()
        for message in self._inner.warnings:
            warn(message)
        self._inner.warnings.clear()
        return token

    def invalidate(self) -> None:
        self._inner.invalidate()


def _call(
    ctx: click.Context,
    profile: str | None,
    entity: str,
    token_file: str | None,
    deadline: float | None = None,
) -> _Call:
    """``deadline`` (``time.monotonic()`` time) bounds the partner token fetch (``wait``)."""

    settings: Settings = settings_from(ctx)
    name = _pick_profile(settings, profile)
    endpoint = endpoint_for_profile(settings, name)
    scope_id = parse_uuid(entity, f"{endpoint.spec.scope_name} ID")  # organization for Tesouro
    tokens = _token_source(settings, name, token_file, deadline)
    return _Call(settings, ConnectionClient(endpoint, tokens), scope_id, name)


def _conn_id(value: str) -> str:

    return parse_uuid(value, "connection ID")


def _show(conn: Connection) -> None:
    rows = [
        ("connection_id", conn.id),
        ("status", conn.status.value if conn.status else "unknown"),
        ("platform", conn.platform or "-"),
        ("connection_url", conn.connection_url),
    ]
    if conn.last_pull is not None:
        rows.append(("last_pull", conn.last_pull.isoformat()))
    rows.extend(("error", message) for message in conn.errors)
    for key, value in rows:
        click.echo(f"{key}: {value}")


def _recorded_json(items: Sequence[Recorded]) -> list[dict[str, Any]]:
    return [
        {
            "event": r.event,
            "seq": r.outcome.seq,
            "vault": r.outcome.vault_status.value,
            "detail": r.outcome.detail,
        }
        for r in items
    ]


def _say_recorded(items: Sequence[Recorded]) -> None:

    for r in items:
        where = {
            VaultStatus.RECORDED: "in the ledger and in Vault",
            VaultStatus.PENDING: "in the local ledger; Vault pending (run: keycourier sync)",
            VaultStatus.DISABLED: "in the local ledger (no Vault configured)",
        }[r.outcome.vault_status]
        pending = r.outcome.vault_status is VaultStatus.PENDING
        detail = f" ({r.outcome.detail})" if pending and r.outcome.detail else ""
        info(f"recorded {r.event} as event {r.outcome.seq} {where}{detail}")


def _confirmer(yes: bool) -> Callable[[Sequence[Connection]], bool]:
    def confirm(active: Sequence[Connection]) -> bool:

        if yes:
            return True
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise PolicyError(
                "refusing to replace the active connection without confirmation",
                hints=["no terminal to ask on: pass --yes to confirm"],
            )
        for conn in active:
            info(f"active connection: {describe(conn)}")
        return click.confirm("Disconnect it and create a new one?", default=False, err=True)

    return confirm


# --------------------------------------------------------------------------- wait's helpers

STATUS_INTERVAL = 30.0  # seconds between wait's status lines, at most
STATUS_INTERVAL_ENV = "KEYCOURIER_WAIT_STATUS_INTERVAL"  # a shorter one, for tests


def _status_interval(settings: Settings) -> float:
    raw = settings.env.get(STATUS_INTERVAL_ENV)
    if raw is None:
        return STATUS_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= STATUS_INTERVAL:
        raise ConfigError(f"{STATUS_INTERVAL_ENV} must be a number of seconds, 0.05 to 30")
    return value


def _duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m``: whole seconds, rounded down."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class _WaitWatch:
    """What `connection wait` has seen: the last status (a line when it changes), the time
    waited and left (the heartbeat line), and what to do when waiting stops short."""

    def __init__(self, cid: str, limit: float) -> None:
        self.cid = cid
        self.started = time.monotonic()
        self.deadline = self.started + limit
        self.last: Connection | None = None
        self.shown: str | None = None

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def progress(self, conn: Connection) -> None:
        status = conn.status.value if conn.status else "unknown"
        self.last = conn
        if self.shown != status:
            self.shown = status
            info(f"connection {conn.id}: {status}")

    def heartbeat(self) -> str:
        last = self.last
        state = (last.status.value if last.status else "unknown") if last else "no status yet"
        now = time.monotonic()
        return (
            f"still waiting for connection {self.cid}: {state}, "
            f"{_duration(now - self.started)} waited, {_duration(self.left())} left"
        )

    def explain(self, exc: UnavailableError, *, scope: str, get: str, resume: str) -> None:
        """Replace ``exc``'s waiting hints with this wait's: where the connection_url is
        and the exact command that resumes waiting."""
        url = (
            f"send the connection_url to the {scope}'s user again: {self.last.connection_url}"
            if self.last
            else f"see the connection_url with: {get}"
        )
        kept = [h for h in exc.hints if "connection wait" not in h and "connection_url" not in h]
        exc.hints = (*kept, url, f"then resume waiting with: {resume}")


class _Heartbeat:
    """A status line on stderr every ``interval`` seconds until the block ends."""

    def __init__(self, interval: float, line: Callable[[], str]) -> None:
        import threading

        self._interval = interval
        self._line = line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wait-status", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            info(self._line())

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _connection_command(
    ctx: click.Context, call: _Call, sub: str, cid: str, token_file: str | None, *extra: str
) -> str:
    """The exact ``keycourier connection SUB ID ...`` line for this call, shell-quoted."""
    words = ["keycourier"]
    config_path = (ctx.find_root().obj or {}).get("config_path")
    if config_path:
        words += ["--config", str(config_path)]
    words += ["connection", sub, cid, "--profile", call.profile]
    words += [call.scope_option, call.scope_id]
    if token_file is not None:
        words += ["--token-file", token_file]
    return shlex.join([*words, *extra])


# --------------------------------------------------------------------------- options


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--token-file",
        default=None,
        metavar="FILE",
        help="Use this partner token (file or - for stdin) instead of the token helper's "
        "cache; it cannot be refreshed on a 401.",
    )(func)
    func = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)
    func = click.option(
        "--entity",
        "--organization",
        "entity",
        required=True,
        metavar="UUID",
        help="The entity (Monite) or organization (Tesouro) ID.",
    )(func)
    return click.option(
        "--profile",
        default=None,
        metavar="NAME",
        help="Platform profile from the config (default: the only one configured).",
    )(func)


@click.group("connection")
def connection() -> None:
    """Create and follow accounting connections (one per entity/organization).

    The Monite dialect uses /accounting_connections with x-monite-entity-id;
    the Tesouro dialect /accounting-connections with x-organization-id. The
    profile chooses.

    \b
    Example:
      keycourier connection create --profile prod --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6
      keycourier connection wait 9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10 --profile prod \\
          --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6 --timeout 30m
    """


@connection.command("create")
@_common
@click.option("--replace", is_flag=True, help="Disconnect the active connection first.")
@click.option("--yes", is_flag=True, help="Do not ask before --replace disconnects.")
@click.option(
    "--platform",
    type=click.Choice(["xero", "quickbooks_online", "quickbooks"]),
    default=None,
    help="Send {platform} in the body (API versions up to 2024; newer ones take no body).",
)
@click.pass_context
def create(
    ctx: click.Context,
    profile: str | None,
    entity: str,
    as_json: bool,
    token_file: str | None,
    replace: bool,
    yes: bool,
    platform: str | None,
) -> None:
    """Create the accounting connection and print its connection_url.

    Refuses (exit 7) while the entity has an active connection, unless
    --replace. Send the connection_url to the entity's user, then run
    'keycourier connection wait'.

    \b
    Example:
      keycourier connection create --profile prod --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6
      keycourier connection create --profile prod --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6 \\
          --replace --yes --json
    """

    call = _call(ctx, profile, entity, token_file)
    result = create_connection(
        call.client,
        call.scope_id,
        replace=replace,
        confirm_replace=_confirmer(yes),
        platform=platform,
        recorder=call.recorder(),
        actor=call.actor,
    )
    conn = result.connection
    if as_json:
        emit_json(
            {
                "connection": conn.to_json(),
                "replaced": [c.to_json() for c in result.replaced],
                "recorded": _recorded_json(result.recorded),
            }
        )
    else:
        for old in result.replaced:
            info(f"disconnected {old.id}")
        _show(conn)
    _say_recorded(result.recorded)
    if not as_json:
        scope = call.client.endpoint.spec.scope_name
        info(f"send the connection_url to the {scope}'s user, then run:")
        info(f"  keycourier connection wait {conn.id} --profile {shlex.quote(call.profile)} \\")
        info(f"      {call.scope_option} {call.scope_id}")


@connection.command("list")
@_common
@click.pass_context
def list_(
    ctx: click.Context, profile: str | None, entity: str, as_json: bool, token_file: str | None
) -> None:
    """List the entity's accounting connections (all states).

    \b
    Example:
      keycourier connection list --profile prod --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6 --json
    """
    call = _call(ctx, profile, entity, token_file)
    items = call.client.list(call.scope_id)
    if as_json:
        emit_json({"data": [c.to_json() for c in items]})
        return
    if not items:
        info("no accounting connections")
        return
    for c in items:
        status = c.status.value if c.status else "unknown"
        click.echo(f"{c.id}  {status:<13} {c.platform or '-':<18} {c.created_at.isoformat()}")


@connection.command("get")
@click.argument("connection_id", metavar="ID")
@_common
@click.pass_context
def get(
    ctx: click.Context,
    connection_id: str,
    profile: str | None,
    entity: str,
    as_json: bool,
    token_file: str | None,
) -> None:
    """Show one accounting connection.

    \b
    Example:
      keycourier connection get 9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10 --profile prod \\
          --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6
    """
    cid = _conn_id(connection_id)
    call = _call(ctx, profile, entity, token_file)
    conn = call.client.get(call.scope_id, cid)
    if as_json:
        emit_json(conn.to_json())
    else:
        _show(conn)


@connection.command("disconnect")
@click.argument("connection_id", metavar="ID")
@_common
@click.pass_context
def disconnect(
    ctx: click.Context,
    connection_id: str,
    profile: str | None,
    entity: str,
    as_json: bool,
    token_file: str | None,
) -> None:
    """Disconnect an accounting connection (its status becomes disconnected).

    \b
    Example:
      keycourier connection disconnect 9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10 --profile prod \\
          --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6
    """

    cid = _conn_id(connection_id)
    call = _call(ctx, profile, entity, token_file)
    result = disconnect_connection(
        call.client, call.scope_id, cid, recorder=call.recorder(), actor=call.actor
    )
    if as_json:
        emit_json(
            {"connection": result.connection.to_json(), "recorded": _recorded_json(result.recorded)}
        )
    else:
        _show(result.connection)
    _say_recorded(result.recorded)


@connection.command(
    "wait",
    epilog="""\b
Exit codes: 0 connected (prints the platform), 5 deauthorized,
6 timeout (run wait again), 7 disconnected or errors reported.
""",
)
@click.argument("connection_id", metavar="ID")
@_common
@click.option("--timeout", default="30m", show_default=True, help="Give up after (90s, 30m, 2h).")
@click.option(
    "--poll-interval",
    default="2s",
    show_default=True,
    help="First pause between polls; grows 1.5x up to 30s.",
)
@click.pass_context
def wait(
    ctx: click.Context,
    connection_id: str,
    profile: str | None,
    entity: str,
    as_json: bool,
    token_file: str | None,
    timeout: str,
    poll_interval: str,
) -> None:
    """Wait until the connection is connected, then print its platform.

    \b
    Example:
      keycourier connection wait 9b2c7e1a-41f0-4c55-a0f1-6f3b8f2d9e10 --profile prod \\
          --entity 3fa85f64-5717-4562-b3fc-2c963f66afa6 --timeout 30m
    """

    cid = _conn_id(connection_id)
    watch = _WaitWatch(cid, parse_duration(timeout, "--timeout"))
    first = parse_duration(poll_interval, "--poll-interval")
    # the token fetch counts against --timeout too
    call = _call(ctx, profile, entity, token_file, watch.deadline)
    resume = _connection_command(ctx, call, "wait", cid, token_file, "--timeout", timeout)
    try:
        with _Heartbeat(_status_interval(call.settings), watch.heartbeat):
            result = wait_for_connection(
                call.client,
                call.scope_id,
                cid,
                timeout=watch.left(),
                policy=WaitPolicy(first=first, maximum=max(30.0, first)),
                recorder=call.recorder(),
                actor=call.actor,
                on_poll=watch.progress,
            )
    except UnavailableError as exc:  # a timeout or an outage: waiting again is the remedy
        get = _connection_command(ctx, call, "get", cid, token_file)
        watch.explain(exc, scope=call.client.endpoint.spec.scope_name, get=get, resume=resume)
        raise
    conn = result.connection
    if as_json:
        emit_json({"connection": conn.to_json(), "recorded": _recorded_json(result.recorded)})
    else:
        click.echo(conn.platform)
    _say_recorded(result.recorded)
