"""App wiring for `siot serve`: broker, NATS connection, store, write path, API, fan-out, the HTTP
server and node clients, started in that order on one AsyncExitStack and stopped in reverse.

Shutdown order matters: node clients stop first, then the API unsubscribes (no new intake), the
store commits and acks what is queued (its acks still go out over NATS), NATS drains, and only
then is nats-server terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.errors import SlowConsumerError

from siot import credentials, nats_client
from siot.api import Api, wait_closed
from siot.broker import (
    DEFAULT_MONITOR_PORT,
    DEFAULT_NATS_HOST,
    DEFAULT_NATS_PORT,
    Broker,
    BrokerConfig,
    BrokerUser,
    TlsFiles,
)
from siot.bus import ChangeBus
from siot.errors import SiotError
from siot.fanout import Fanout
from siot.http.context import DEFAULT_HTTP_HOST, DEFAULT_TOKEN_TTL_S, HttpConfig
from siot.http.server import HttpServer
from siot.local import LocalClient
from siot.logbudget import LogBudget
from siot.node_clients import NODE_CLIENTS
from siot.runtime import AppContext, NodeClient
from siot.store import Store, StoreConfig
from siot.store.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_RESTART_WAL_FRAMES
from siot.store.store import DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_QUEUED_POINTS
from siot.users import attach as attach_users
from siot.write_path import WritePath

logger = logging.getLogger(__name__)

DB_FILE = "siot.db"
STAGE_TIMEOUT_S = 15.0


@dataclass(slots=True)
class ServeConfig:
    """Everything `siot serve` needs; the CLI fills it from flags and SIOT_* variables."""

    data_dir: Path
    instance_id: str | None = None
    nats_url: str | None = None  # set: use that server, start none
    nats_host: str = DEFAULT_NATS_HOST
    nats_port: int = DEFAULT_NATS_PORT
    monitor_port: int = DEFAULT_MONITOR_PORT
    mqtt_port: int = 0
    auth_token: str = ""
    nats_server_bin: str | None = None
    synchronous: str = "NORMAL"
    retention_days: float = 365.0
    retention_max_rows: int = 20_000_000
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    restart_wal_frames: int = DEFAULT_RESTART_WAL_FRAMES
    max_queued_points: int = DEFAULT_MAX_QUEUED_POINTS
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    upstream: str | None = None
    upstream_parent: str | None = None
    # Credentials and TLS (docs/security.md)
    require_credentials: bool = False  # users required even before the first credential
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # clients must present a certificate signed by this CA
    tls_allow_plain: bool = False  # with TLS: plain NATS connections too
    leafnode_port: int = 0
    upstream_credential: str | None = None  # file {"user","secret"} for the --upstream link
    upstream_tls_ca: str | None = None
    # HTTP API (siot/http): off unless a port is given. The CLI's default is 8118; an App built in
    # a program or a test serves HTTP only when asked, so two of them never fight over one port.
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = 0
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    # GET /metrics needs `Authorization: Bearer <metrics_token>` when set; public otherwise.
    metrics_token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class App:
    """One running siot instance. `async with App(config) as app:` returns when it is serving;
    `await app.run_until_stopped()` serves until SIGINT/SIGTERM or `app.stop()`."""

    def __init__(self, config: ServeConfig, node_clients: Sequence[NodeClient] | None = None) -> None:
        """`node_clients`: what to run instead of siot/node_clients.py's list (a test runs the
        rules on a manual clock, say)."""
        self.config = config
        self.node_clients = NODE_CLIENTS if node_clients is None else tuple(node_clients)
        self.broker: Broker | None = None
        self.store: Store | None = None
        self.api: Api | None = None
        self.context: AppContext | None = None
        self.http: HttpServer | None = None
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> App:
        # Handlers go in before anything starts, so a SIGTERM during start-up (node clients can
        # take a while) still leads to an orderly stop once start-up has finished.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        logger.info("siot: shutting down")
        try:
            async with asyncio.timeout(STAGE_TIMEOUT_S * 4):
                await self._stack.aclose()
        except TimeoutError:
            logger.error(
                "siot: shutdown did not finish in time; tasks still running: %s", asyncio.all_tasks()
            )
        logger.info("siot: stopped")

    async def _start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(
            StoreConfig(
                path=str(cfg.data_dir / DB_FILE),
                instance_id=cfg.instance_id,
                synchronous=cfg.synchronous,
                retention_days=cfg.retention_days,
                retention_max_rows=cfg.retention_max_rows,
                checkpoint_interval_s=cfg.checkpoint_interval_s,
                restart_wal_frames=cfg.restart_wal_frames,
                max_queued_points=cfg.max_queued_points,
                max_future_s=cfg.max_future_s,
            )
        )
        url = cfg.nats_url
        auth: dict[str, Any] = {"token": cfg.auth_token or None}
        tls = tls_files(cfg)
        own_tls = credentials.own_tls(tls) if tls else None
        admin = admin_user = None
        if not url:
            nats_dir = cfg.data_dir / "nats"
            users: tuple[BrokerUser, ...] = ()
            if not cfg.auth_token:
                admin = credentials.ensure_admin(cfg.data_dir, "", None)
                admin_user = await asyncio.to_thread(credentials.admin_user, admin.user, admin.secret)
                cached = credentials.load_users_cache(nats_dir)
                if cached or cfg.require_credentials:
                    users = (admin_user, *cached)
                auth = {"user": admin.user, "password": admin.secret}
            broker_cfg = BrokerConfig(
                data_dir=cfg.data_dir / "nats",
                server_name=f"siot-{cfg.instance_id or 'local'}",
                host=cfg.nats_host,
                port=cfg.nats_port,
                monitor_port=cfg.monitor_port,
                mqtt_port=cfg.mqtt_port,
                auth_token=cfg.auth_token,
                binary=cfg.nats_server_bin,
                users=users,
                tls=tls,
                allow_plain=cfg.tls_allow_plain,
                leafnode_port=cfg.leafnode_port,
            )
            self.broker = await self._stack.enter_async_context(Broker(broker_cfg))
            url = broker_cfg.url
            if admin is not None:  # the client commands find the instance as it runs now
                admin = credentials.ensure_admin(cfg.data_dir, url, tls)
        nc = await nats_client.connect(
            url,
            name="siot-daemon",
            tls=own_tls,
            **auth,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            pending_size=64 * 1024 * 1024,
            error_cb=_log_nats_error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_log_reconnected,
        )
        self._stack.push_async_callback(wait_closed, nc)
        self.store = await self._stack.enter_async_context(store)
        await attach_users(self.store)  # before the API and sync: no password escapes hashing
        write_path = WritePath(self.store)
        bus = ChangeBus()
        # The API's commit listener (acks, queued in the fan-out's order) runs before the
        # fan-out's own: a write's ack follows the fan-out of the commits before it.
        fanout = Fanout(nc, self.store, bus)
        self.api = await self._stack.enter_async_context(Api(nc, write_path, fanout))
        await self._stack.enter_async_context(fanout)
        self.context = AppContext(
            config=cfg,
            store=self.store,
            write_path=write_path,
            bus=bus,
            client=LocalClient(write_path, bus),
            nc=nc,
            broker_url=url,
            api=self.api,
            broker=self.broker,
            admin=admin,
            own_tls=own_tls,
        )
        self.context.credentials = await self._stack.enter_async_context(
            credentials.CredentialService(
                self.context,
                self.broker,
                admin_user,
                require=cfg.require_credentials,
                unavailable="this instance runs with --auth-token (one shared token, no users)"
                if cfg.auth_token
                else "",
            )
        )
        if cfg.http_port:
            # Before the node clients: /healthz answers 503 while they start (siot/http/server.py).
            http_config = HttpConfig(
                host=cfg.http_host,
                port=cfg.http_port,
                token_ttl_s=cfg.token_ttl_s,
                ssl_context=credentials.server_tls(tls) if tls else None,
            )
            self.http = await self._stack.enter_async_context(HttpServer(self.context, http_config))
        for node_client in self.node_clients:
            await self._stack.enter_async_context(node_client(self.context))
        self.api.ready = True
        # Everything built during start-up (modules, the tree, node configs) lives as long as the
        # process: moved out of the collector's reach, a full collection scans only what came
        # after, instead of pausing the loop for ~20 ms (seen as the rules benchmark's max).
        gc.collect()
        gc.freeze()
        logger.info("siot: instance %s serving on %s, data in %s", self.store.instance_id, url, cfg.data_dir)

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: nats-server reloads its configuration, which re-reads the TLS certificate and
        key files (a renewed certificate is served to new connections without a restart)."""
        if self.broker is not None:
            task = asyncio.get_running_loop().create_task(self._reload())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        assert self.broker is not None
        context = self.context.own_tls if self.context else None
        tls = self.broker.config.tls
        try:
            if context is not None and tls is not None:
                # The daemon pins the server's certificate: trust the new one too before nats-server
                # serves it (it closes TLS connections on reload; ours reconnects to the new one).
                context.load_verify_locations(tls.cert)
            http_tls = self.http.http.config.ssl_context if self.http else None
            if http_tls is not None and tls is not None:
                http_tls.load_cert_chain(tls.cert, tls.key)
            await self.broker.reload()
        except (SiotError, OSError, ssl.SSLError) as exc:
            logger.error("siot: reload failed: %s", exc)
            return
        logger.info("siot: reloaded nats-server's configuration and certificates")

    async def run_until_stopped(self) -> None:
        await self._stop.wait()


def tls_files(cfg: ServeConfig) -> TlsFiles | None:
    """The TLS files as absolute paths: nats-server reads them again on every reload."""
    if not cfg.tls_cert:
        return None
    absolute = [str(Path(p).resolve()) if p else "" for p in (cfg.tls_cert, cfg.tls_key, cfg.tls_ca)]
    return TlsFiles(*absolute)


_slow_consumer_log = LogBudget(burst=1, interval_s=10.0)


async def _log_nats_error(exc: Exception) -> None:
    if isinstance(exc, SlowConsumerError):
        # One per dropped message under a flood: logged at most every 10 s, with the count.
        held_back = _slow_consumer_log.take()
        if held_back is not None:
            more = f" ({held_back} more dropped since the last report)" if held_back else ""
            logger.warning("nats: %s%s", exc, more)
        return
    logger.warning("nats: %s", exc)


async def _log_disconnected() -> None:
    logger.warning("nats: disconnected")


async def _log_reconnected() -> None:
    logger.info("nats: reconnected")


GIL_SWITCH_INTERVAL_S = 0.0005


def run(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; uses uvloop when it is installed.

    The GIL switch interval drops from 5 ms to 0.5 ms: the store's writer thread and the event
    loop share the GIL, and at the default a loop waiting for it can stall for 5 ms per hand-over,
    which showed as commit stalls of 100+ ms under load (STACK.md).
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    async def main() -> None:
        async with App(config) as app:
            await app.run_until_stopped()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
