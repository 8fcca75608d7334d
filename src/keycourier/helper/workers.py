"""``keycourier serve --workers N``: N worker processes behind one listening socket.

The process started as ``keycourier serve`` becomes the supervisor. It:

* binds the listening socket (TCP, or a 0600 Unix socket) and makes the shared
  rate-limit table (``keycourier.helper.shared_state``); every worker inherits
  both, and the kernel hands each new connection to one of them;
* is the only process that calls the platform: a worker that needs a token
  asks it over a private socket pair, and the supervisor's ``TokenCache``
  makes one upstream call per refresh however many workers ask (single flight);
  so the workers, which parse what clients send, are started without the
  credential variables (the profiles' client ID and secret variables,
  ``VAULT_TOKEN`` and the others ``exec`` removes too);
* is the only ledger writer: it records ``token_issued`` once per upstream
  call, and ``token_handed_out`` once per client and token, whichever workers
  handed it out (they send it their hand-outs);
* answers a worker's ``/metrics`` with the sum over all workers, except for the
  samples only it knows (upstream calls and errors, first hand-outs, token
  ages, events), which are its own;
* restarts a worker that dies, after a back-off (0.25 s, doubling to 10 s; back
  to 0.25 s once a worker has run for 30 s);
* forwards SIGHUP (every worker re-reads the client store at once);
* lets the workers run on uvloop's event loop when it is installed
  (``pip install 'keycourier[uvloop]'``): less CPU per request;
* on SIGTERM or SIGINT, has every worker stop accepting, finish the requests in
  flight and send its last hand-outs, then delivers every queued event to the
  ledger and exits 0.

Messages on a worker's socket pair are JSON lines. Worker to supervisor:
``token`` (a profile's current token), ``event`` (a hand-out), ``metrics``
(the summed page), ``ready``; supervisor to worker: replies (by ``id``) and
``snap`` (the worker's own metrics page).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from keycourier import config
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    UnavailableError,
    UsageError,
)
from keycourier.helper.cache import TokenCache
from keycourier.helper.clients import ClientStore, default_store_path
from keycourier.helper.connections import Limits
from keycourier.helper.credentials import load_credentials
from keycourier.helper.execrun import child_environment, credential_env_names
from keycourier.helper.listen import prepare_socket, tls_context
from keycourier.helper.metrics import EVERY_PROFILE, metrics_text
from keycourier.helper.principals import Principal, RateBucket
from keycourier.helper.recording import BatchRecorder, issued_event, open_recorder
from keycourier.helper.server import serve
from keycourier.helper.server_config import ServerConfig
from keycourier.helper.shared_state import SharedBuckets
from keycourier.helper.state import HelperState
from keycourier.ledger.interface import Event, EventType
from keycourier.partner.profiles import Profile, load_profiles
from keycourier.partner.tokens import Token, UpstreamUnavailableError, fetch_token
from keycourier.redact import Secret

if TYPE_CHECKING:
    import aiohttp

    from keycourier.config import Settings

MAX_WORKERS: Final = 64
MAX_MESSAGE: Final = 4 * 1024 * 1024
BACKOFF_FIRST: Final = 0.25
BACKOFF_MAX: Final = 10.0
STABLE_SECONDS: Final = 30.0  # a worker that ran this long restarts after the first back-off
STOP_GRACE: Final = 30.0  # seconds a worker has to drain after SIGTERM, then SIGKILL
SNAPSHOT_SECONDS: Final = 5.0  # a worker's metrics page, at most this long to arrive
BACKLOG_PER_WORKER: Final = 128
WORKER_ENTRY: Final = (  # exec makes a process dumpable again: forbid it first, as the CLI does
    "import sys; from keycourier.cli.entry import forbid_core_dumps; forbid_core_dumps(); "
    "from keycourier.helper.workers import worker_main; sys.exit(worker_main(sys.argv[1:]))"
)
_PATH_FIELDS: Final = {"socket_path", "tls_cert", "tls_key"}


def parse_workers(value: str) -> int:
    """``--workers``: a number from 1 to 64, or ``auto`` (the CPUs this process may use)."""
    if value == "auto":
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            count = os.cpu_count() or 1
        return max(1, min(MAX_WORKERS, count))
    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise UsageError(f"--workers must be a number from 1 to {MAX_WORKERS}, or auto")
    return int(value)


def _warn(message: str) -> None:
    sys.stderr.write(f"keycourier: warning: {message}\n")
    sys.stderr.flush()


def _send(writer: asyncio.StreamWriter, msg: Mapping[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


# -- the listening socket


def bind(cfg: ServerConfig, workers: int) -> tuple[socket.socket, str]:
    """The socket every worker inherits, and the address to announce.

    A Unix socket is one listening socket that the workers share. For TCP on a system
    with SO_REUSEPORT (Linux), the supervisor only binds the address (reserving the port,
    without listening) and every worker listens on a socket of its own bound to it
    (``worker_listener``): the kernel then spreads new connections evenly over the
    workers. On one shared listening socket the first worker to wake takes every
    pending connection, so a burst of connections (a CI fleet starting, a load test)
    could leave one worker with all of them and the other idle.
    """
    backlog = min(4096, BACKLOG_PER_WORKER * workers)
    if cfg.socket_path is not None:
        prepare_socket(cfg.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(cfg.socket_path))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen on {cfg.socket_path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(cfg.socket_path, 0o600)
        sock.listen(backlog)
        return sock, f"unix:{cfg.socket_path}"
    assert cfg.host is not None  # noqa: S101 - set for TCP by server_config
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        if REUSEPORT:
            sock = _reuseport_socket(family)
            try:
                sock.bind((cfg.host, cfg.port))
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_server((cfg.host, cfg.port), family=family, backlog=backlog)
    except OSError as exc:
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    scheme = "https" if cfg.tls_cert else "http"
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return sock, f"{scheme}://{host}:{port}"


REUSEPORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def _reuseport_socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def worker_listener(inherited: socket.socket) -> socket.socket:
    """The socket a worker accepts on: the inherited one when it is listening (a Unix
    socket, or TCP without SO_REUSEPORT), else a listening socket of the worker's own,
    bound with SO_REUSEPORT to the address the supervisor bound (see ``bind``)."""
    if inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return inherited
    own = _reuseport_socket(socket.AddressFamily(inherited.family))
    try:
        own.bind(inherited.getsockname())
        own.listen(BACKLOG_PER_WORKER)
    except OSError:
        own.close()
        raise
    inherited.close()
    return own


# -- /metrics over several workers


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def merge_metrics(
    pages: Sequence[tuple[int, str]],
    own: Mapping[str, Sequence[tuple[str, float]]],
    *,
    restarts: int,
) -> str:
    """Sum the samples of the workers' ``(slot, page)``; the families in ``own`` are replaced.

    ``keycourier_helper_handouts_repeat_total`` is every hand-out the workers
    counted less the first hand-outs the supervisor recorded;
    ``keycourier_helper_worker_requests_total{worker="SLOT"}`` is each
    worker's own request count, to show how the connections are spread.
    """
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    per_worker: list[str] = []
    for slot, page in pages:
        served = 0.0
        for line in page.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    meta = families.setdefault(parts[2], ([], {}))[0]
                    if line not in meta:
                        meta.append(line)
                continue
            sample, _, value = line.rpartition(" ")
            if not sample:
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            name = sample.split("{", 1)[0]
            samples = families.setdefault(name, ([], {}))[1]
            samples[sample] = samples.get(sample, 0.0) + number
            if name == "keycourier_helper_requests_total":
                served += number
        per_worker.append(
            f'keycourier_helper_worker_requests_total{{worker="{slot}"}} {_fmt(served)}'
        )
    first_name = "keycourier_helper_handouts_first_total"
    repeat_name = "keycourier_helper_handouts_repeat_total"
    handed = sum(families.get(first_name, ([], {}))[1].values()) + sum(
        families.get(repeat_name, ([], {}))[1].values()
    )
    for name, replaced in own.items():
        families.setdefault(name, ([], {}))[1].clear()
        families[name][1].update(replaced)
    if first_name in own and repeat_name in families:
        first = sum(v for _, v in own[first_name])
        families[repeat_name][1].clear()
        families[repeat_name][1][repeat_name] = max(0.0, handed - first)
    lines = [
        "# HELP keycourier_helper_workers Worker processes (serve --workers); every other "
        "sample is their sum, except upstream calls and errors, first hand-outs, token ages "
        "and events, which are the supervisor's own.",
        "# TYPE keycourier_helper_workers gauge",
        f"keycourier_helper_workers {len(pages)}",
        "# HELP keycourier_helper_worker_restarts_total Workers restarted after they died.",
        "# TYPE keycourier_helper_worker_restarts_total counter",
        f"keycourier_helper_worker_restarts_total {restarts}",
        "# HELP keycourier_helper_worker_requests_total Requests by worker (slot number).",
        "# TYPE keycourier_helper_worker_requests_total counter",
        *per_worker,
    ]
    for meta, samples in families.values():
        lines += meta
        lines += [f"{sample} {_fmt(value)}" for sample, value in sorted(samples.items())]
    return "\n".join(lines) + "\n"


# -- the worker side


def _token_error(doc: Mapping[str, Any]) -> Error:
    message = str(doc.get("message", "no token"))[:500]
    kind = doc.get("kind")
    if kind == "auth":
        return AuthError(message)
    if kind == "upstream":
        retry = doc.get("retry_after")
        return UpstreamUnavailableError(
            message, retry_after=float(retry) if isinstance(retry, (int, float)) else None
        )
    if kind == "unavailable":
        return UnavailableError(message)
    return ConfigError(message)


class _SupervisorLink:
    """A worker's end of its socket pair; also the worker's event sink (``EventSink``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.state: HelperState | None = None
        self.failed = 0
        self.closing = False
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.writer.is_closing():
            raise UnavailableError("the helper's supervisor is gone")
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        try:
            _send(self.writer, {**msg, "id": ident})
            return await fut
        finally:
            self._waiting.pop(ident, None)

    async def read_loop(self) -> None:
        try:
            while line := await self.reader.readline():
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("not a JSON object")
                op = msg.get("op")
                if op is None:
                    fut = self._waiting.get(msg.get("id", 0))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif op == "snap" and self.state is not None:
                    # every profile: scoped by the worker that asked
                    page = metrics_text(self.state, EVERY_PROFILE)
                    _send(self.writer, {"id": msg.get("id"), "text": page})
        except (ValueError, ConnectionError) as exc:
            _warn(f"worker {os.getpid()}: bad message from the supervisor ({type(exc).__name__})")
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(UnavailableError("the helper's supervisor is gone"))
            if not self.closing:  # the supervisor went away: stop serving
                os.kill(os.getpid(), signal.SIGTERM)

    # ``EventSink``: hand-outs go to the supervisor, which records each one once.
    # ``token_issued`` is the supervisor's: it made the upstream call.
    def submit(self, event: Event) -> None:

        if event.type is not EventType.TOKEN_HANDED_OUT:
            return
        _send(
            self.writer,
            {
                "op": "event",
                "type": event.type.value,
                "at": event.at.isoformat(),
                "actor": event.actor,
                "fingerprint": event.fingerprint,
                "data": dict(event.data),
            },
        )

    def pending(self) -> int:
        return 0

    async def fetch(self, profile: Profile) -> Token:
        reply = await self.request({"op": "token", "profile": profile.name})
        error = reply.get("error")
        if isinstance(error, dict):
            raise _token_error(error)
        token = Token(
            Secret(str(reply["access_token"])),
            str(reply["token_type"]),
            int(reply["expires_in"]),
            float(reply["issued_at"]),
        )
        held = self.state.cache.peek(profile.name) if self.state is not None else None
        if held is not None and held.fingerprint == token.fingerprint:
            # The supervisor's refresh failed and it still serves this token: keep it here
            # too, and ask again only after the cache's back-off.
            raise UpstreamUnavailableError(
                f"profile {profile.name}: the token refresh failed; the cached token is served"
            )
        return token

    async def metrics(self) -> str:
        return str((await self.request({"op": "metrics"}))["text"])


def _server_config(doc: Mapping[str, Any]) -> ServerConfig:
    known = {f.name for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known:
            continue
        if key in _PATH_FIELDS and value is not None:
            value = Path(value)
        elif key == "limits" and isinstance(value, Mapping):
            value = Limits(**value)
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return ServerConfig(**values)


def _config_doc(cfg: ServerConfig) -> dict[str, Any]:
    return {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in asdict(cfg).items()
    }


async def _worker(chan: socket.socket, listener: socket.socket, table: SharedBuckets) -> None:

    reader, writer = await asyncio.open_unix_connection(sock=chan, limit=MAX_MESSAGE)
    init = json.loads(await reader.readline() or b"null")
    if not isinstance(init, dict):
        raise UnavailableError("the helper's supervisor went away during start-up")
    settings = config.load(config_path=init.get("config_path"))
    profiles = load_profiles(settings.profiles, settings.config_path)
    store = ClientStore(default_store_path(settings))
    store.refresh(max_age=0)
    cfg = _server_config(init["cfg"])
    link = _SupervisorLink(reader, writer)
    state = HelperState(settings, profiles, store, cfg, recorder=link, fetcher=link.fetch)
    link.state = state

    def shared_bucket(principal: Principal, _now: float) -> RateBucket:
        return table.bucket(principal.key, principal.rate)

    state.bucket_factory = shared_bucket
    state.metrics_merge = link.metrics

    def reload_clients() -> None:
        try:
            store.refresh(max_age=0)
        except Error as exc:
            _warn(f"worker {os.getpid()}: the client store was not reloaded: {exc.message}")
            return
        state._forget_callers_if_reloaded()  # the server's own reload step

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload_clients)
    reading = loop.create_task(link.read_loop())
    try:
        await serve(state, lambda _where: _send(writer, {"op": "ready"}), sock=listener)
    finally:
        link.closing = True  # every request has been answered: send what is left and go
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``keycourier[uvloop]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_main(argv: Sequence[str]) -> int:
    """A worker process: ``argv`` holds its socket pair, the listener and the rate table fds."""
    try:
        chan_fd, listen_fd, table_fd = (int(a) for a in argv)
    except ValueError:
        sys.stderr.write("keycourier: error: a helper worker is started by keycourier serve\n")
        return 2
    chan = socket.socket(fileno=chan_fd)
    try:
        listener = worker_listener(socket.socket(fileno=listen_fd))
    except OSError as exc:
        sys.stderr.write(f"keycourier: error: helper worker {os.getpid()} cannot listen: {exc}\n")
        return 6
    table = SharedBuckets.attach(table_fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler is in place
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_worker(chan, listener, table))
    except Error as exc:
        sys.stderr.write(f"keycourier: error: helper worker {os.getpid()}: {exc.message}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 0
    return 0


# -- the supervisor side


class _Slot:
    """One worker position: the process in it now, and its socket pair."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.ready = False
        self.first_ready = asyncio.Event()
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.writer is None or self.writer.is_closing():
            raise UnavailableError("worker gone")
        self.next_id += 1
        ident = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ident] = fut
        try:
            _send(self.writer, {**msg, "id": ident})
            return await asyncio.wait_for(fut, SNAPSHOT_SECONDS)
        finally:
            self.waiting.pop(ident, None)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        cfg: ServerConfig,
        profiles: Mapping[str, Profile],
        listener: socket.socket,
        where: str,
        table: SharedBuckets,
        recorder: BatchRecorder,
        *,
        workers: int,
        announce: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.cfg = cfg
        self.profiles = dict(profiles)
        self.listener = listener
        self.where = where
        self.table = table
        self.recorder = recorder
        self.announce = announce
        self.slots = [_Slot(i) for i in range(workers)]
        self.cache = TokenCache(self._fetch, background_refresh=False, on_issued=self._issued)
        self.session: aiohttp.ClientSession | None = None
        self.stopping = asyncio.Event()
        self.failure: Error | None = None
        self.restarts = 0
        self.handouts_first = 0
        self._handed: dict[tuple[str, str], float] = {}
        self._expiry: dict[str, float] = {}  # token fingerprint -> expires_at
        self._tasks: set[asyncio.Task[None]] = set()
        # Workers never call the platform or Vault with our credentials: they do not get them.

        self.worker_env = child_environment(settings.env, {}, credential_env_names(settings))

    # -- tokens and events

    async def _fetch(self, profile: Profile) -> Token:

        loop = asyncio.get_running_loop()
        creds = await loop.run_in_executor(None, load_credentials, profile, self.settings)
        return await fetch_token(profile, creds, session=self.session, clock=time.time)

    def _issued(self, profile: Profile, token: Token) -> None:

        self._expiry[token.fingerprint] = token.expires_at
        self.recorder.submit(
            issued_event(profile.name, token, environment=profile.environment.value)
        )

    async def _answer_token(self, slot: _Slot, msg: Mapping[str, Any]) -> None:
        reply: dict[str, Any] = {"id": msg.get("id")}
        profile = self.profiles.get(str(msg.get("profile")))
        if profile is None:
            reply["error"] = {"kind": "other", "message": "no such profile"}
        else:
            try:
                token = (await self.cache.get(profile)).token
            except Error as exc:
                kind = (
                    "auth"
                    if isinstance(exc, AuthError)
                    else "upstream"
                    if isinstance(exc, UpstreamUnavailableError)
                    else "unavailable"
                    if isinstance(exc, UnavailableError)
                    else "other"
                )
                retry = exc.retry_after if isinstance(exc, UpstreamUnavailableError) else None
                reply["error"] = {"kind": kind, "message": exc.message, "retry_after": retry}
            else:
                reply.update(
                    access_token=token.access_token.reveal(),
                    token_type=token.token_type,
                    expires_in=token.expires_in,
                    issued_at=token.issued_at,
                )
        if slot.writer is not None:
            _send(slot.writer, reply)

    def _event(self, msg: Mapping[str, Any]) -> None:

        actor, fp, data = msg.get("actor"), msg.get("fingerprint"), msg.get("data")
        if (
            msg.get("type") != EventType.TOKEN_HANDED_OUT.value
            or not isinstance(actor, str)
            or not isinstance(fp, str)
            or not isinstance(data, dict)
        ):
            _warn("a helper worker sent a malformed event; ignored")
            return
        key = (actor, fp)
        if key in self._handed:
            return  # another worker handed this token to this client first
        now = time.time()
        self._handed[key] = self._expiry.get(fp, now + 86400)
        if len(self._handed) > 10_000:  # forget hand-outs of expired tokens
            self._handed = {k: v for k, v in self._handed.items() if v > now}
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        self.handouts_first += 1
        try:
            at = datetime.fromisoformat(str(msg.get("at")))
        except ValueError:
            at = datetime.fromtimestamp(now).astimezone()
        self.recorder.submit(
            Event(type=EventType.TOKEN_HANDED_OUT, at=at, actor=actor, fingerprint=fp, data=data)
        )

    # -- metrics

    async def _answer_metrics(self, slot: _Slot, msg: Mapping[str, Any]) -> None:
        live = [s for s in self.slots if s.ready]
        pages = await asyncio.gather(
            *(s.request({"op": "snap"}) for s in live), return_exceptions=True
        )
        texts = [
            (s.index, str(p["text"]))
            for s, p in zip(live, pages, strict=True)
            if isinstance(p, dict) and "text" in p
        ]
        stats = self.cache.stats
        own: dict[str, list[tuple[str, float]]] = {
            "keycourier_helper_upstream_calls_total": [
                ("keycourier_helper_upstream_calls_total", stats.upstream_calls)
            ],
            "keycourier_helper_upstream_errors_total": [
                ("keycourier_helper_upstream_errors_total", stats.upstream_errors)
            ],
            "keycourier_helper_handouts_first_total": [
                ("keycourier_helper_handouts_first_total", self.handouts_first)
            ],
            "keycourier_helper_token_age_seconds": [
                (f'keycourier_helper_token_age_seconds{{profile="{name}"}}', round(age, 3))
                for name, age in sorted(self.cache.token_ages().items())
            ],
            "keycourier_helper_events_pending": [
                ("keycourier_helper_events_pending", self.recorder.pending())
            ],
            "keycourier_helper_events_failed_total": [
                ("keycourier_helper_events_failed_total", self.recorder.failed)
            ],
        }
        text = merge_metrics(texts, own, restarts=self.restarts)
        if slot.writer is not None:
            _send(slot.writer, {"id": msg.get("id"), "text": text})

    # -- workers

    def _spawn_task(self, coro: Any) -> None:  # noqa: ANN401 - a coroutine
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _channel(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("not a JSON object")
                op = msg.get("op")
                if op == "token":
                    self._spawn_task(self._answer_token(slot, msg))
                elif op == "event":
                    self._event(msg)
                elif op == "metrics":
                    self._spawn_task(self._answer_metrics(slot, msg))
                elif op == "ready":
                    slot.ready = True
                    slot.first_ready.set()
                elif op is None:
                    fut = slot.waiting.get(msg.get("id", 0))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (ValueError, ConnectionError) as exc:
            _warn(f"helper worker {slot.index}: bad message ({type(exc).__name__})")
            slot.signal(signal.SIGKILL)
        finally:
            slot.ready = False
            if slot.writer is not None:
                slot.writer.close()
            for fut in slot.waiting.values():
                if not fut.done():
                    fut.set_exception(UnavailableError("worker gone"))

    async def _start(self, slot: _Slot) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = (theirs.fileno(), self.listener.fileno(), self.table.fd)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER_ENTRY,
                *(str(fd) for fd in fds),
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
                env=self.worker_env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_MESSAGE)
        slot.proc, slot.writer = proc, writer
        config_path = self.settings.config_path
        _send(
            writer,
            {
                "config_path": str(config_path) if config_path is not None else None,
                "cfg": _config_doc(self.cfg),
            },
        )
        slot.reading = asyncio.get_running_loop().create_task(self._channel(slot, reader))
        return proc

    async def _run_slot(self, slot: _Slot) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                proc = await self._start(slot)
            except OSError as exc:
                self._fail(UnavailableError(f"cannot start a helper worker: {exc.strerror}"))
                return
            if self.stopping.is_set():
                slot.signal(signal.SIGTERM)
            code = await proc.wait()
            if slot.reading is not None:
                await asyncio.gather(slot.reading, return_exceptions=True)
            if self.stopping.is_set():
                return
            if not slot.first_ready.is_set():  # never came up: the same would happen again
                self._fail(Error(f"helper worker {slot.index} failed to start"))
                return
            self.restarts += 1
            failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
            _warn(
                f"helper worker {slot.index} (pid {proc.pid}) stopped with "
                f"{_describe_exit(code)}; restarting it in {delay:g} s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _fail(self, error: Error) -> None:
        if self.failure is None:
            self.failure = error
        self.stopping.set()

    def _forward(self, sig: int) -> None:
        for slot in self.slots:
            slot.signal(sig)

    def _reload(self) -> None:
        """SIGHUP: to the workers that are up (one still starting reads the store anyway,
        and SIGHUP before its handler is in place would end it)."""
        for slot in self.slots:
            if slot.ready:
                slot.signal(signal.SIGHUP)

    async def main(self) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        runs = [loop.create_task(self._run_slot(slot)) for slot in self.slots]
        try:
            all_up = loop.create_task(self._all_up())
            stop = loop.create_task(self.stopping.wait())
            await asyncio.wait({all_up, stop}, return_when=asyncio.FIRST_COMPLETED)
            if all_up.done() and not self.stopping.is_set():
                self.announce(self.where)
            all_up.cancel()
            await self.stopping.wait()
            self._forward(signal.SIGTERM)
            _done, late = await asyncio.wait(runs, timeout=STOP_GRACE)
            if late:
                _warn("a helper worker did not stop in time; killing it")
                self._forward(signal.SIGKILL)
            await asyncio.gather(*runs)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for slot in self.slots:
                slot.signal(signal.SIGKILL)
            await self.session.close()
        if self.failure is not None:
            raise self.failure

    async def _all_up(self) -> None:
        for slot in self.slots:
            await slot.first_ready.wait()


def run_supervised(
    settings: Settings,
    cfg: ServerConfig,
    *,
    workers: int,
    announce: Callable[[str], None],
) -> dict[str, int]:
    """``serve --workers N`` (N > 1): the same summary as ``server.run``."""

    profiles = load_profiles(settings.profiles, settings.config_path)
    if not profiles:
        raise ConfigError(
            "no profiles configured", hints=["add a [profiles.NAME] table (docs/token-helper.md)"]
        )
    ClientStore(default_store_path(settings)).refresh(max_age=0)  # fail now if malformed
    if cfg.tls_cert is not None:
        tls_context(cfg)  # fail now on an unreadable certificate or key
    listener, where = bind(cfg, workers)
    table = SharedBuckets.create()
    recorder: BatchRecorder | None = None
    try:
        recorder = BatchRecorder(lambda: open_recorder(settings), on_error=_warn)
        sup = Supervisor(
            settings,
            cfg,
            profiles,
            listener,
            where,
            table,
            recorder,
            workers=workers,
            announce=announce,
        )
        asyncio.run(sup.main())
    finally:
        listener.close()
        if cfg.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                cfg.socket_path.unlink()
        table.close()
        if recorder is not None:
            recorder.close()
    return {
        "recorded": recorder.recorded,
        "failed": recorder.failed,
        "upstream_calls": sup.cache.stats.upstream_calls,
    }
