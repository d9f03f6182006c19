"""App wiring for `siot serve`: broker, NATS connection, store, API and node clients, started in
that order on one AsyncExitStack and stopped in reverse.

Shutdown order matters: node clients stop first, then the API unsubscribes (no new intake), the
store commits and acks what is queued (its acks still go out over NATS), NATS drains, and only
then is nats-server terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import SlowConsumerError

from siot import nats_client
from siot.api import Api, LogBudget, wait_closed
from siot.broker import DEFAULT_MONITOR_PORT, DEFAULT_NATS_HOST, DEFAULT_NATS_PORT, Broker, BrokerConfig
from siot.client import Client
from siot.store import Store, StoreConfig
from siot.store.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_RESTART_WAL_FRAMES
from siot.store.store import DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_QUEUED_POINTS

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
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AppContext:
    """What a node client gets: the config, the store (read-only use), a client library
    instance on the daemon's own NATS connection (all writes go through the API), and the API
    itself (to hook validators onto the ingest path)."""

    config: ServeConfig
    store: Store
    nc: NATS
    client: Client
    broker_url: str
    api: Api
    # Roots of other instances' subtrees replicated here (edges synced up to this instance).
    downstream_roots: set[str] = field(default_factory=set)

    @property
    def instance_id(self) -> str:
        return self.store.instance_id

    def manages(self, node: str) -> bool:
        """Whether this instance's node clients act on `node`. Not for a node inside an edge's
        replicated subtree: the edge runs its own rules, ingest and archive, and running them in
        the cloud as well would fire every action twice."""
        roots = self.downstream_roots
        return not roots or (node not in roots and roots.isdisjoint(self.store.tree.ancestors(node)))


NodeClientFactory = Callable[[AppContext], AbstractAsyncContextManager[Any]]

# Node-type clients started by `siot serve`, in order; each is an async context manager factory.
NODE_CLIENTS: list[NodeClientFactory] = []


def register_node_client(factory: NodeClientFactory) -> NodeClientFactory:
    """Add a node client to every `siot serve`. Usable as a decorator."""
    NODE_CLIENTS.append(factory)
    return factory


# Modules whose import registers their node clients (@register_node_client), in start order.
# Imported when an App starts, not here, because they import this module. Data models come
# before ingest so the validator is in place before ingest sends its first point.
NODE_CLIENT_MODULES: list[str] = [
    "siot.sync.service",  # first: it tells the others which subtrees belong to edges
    "siot.nodes.models",
    "siot.nodes.ingest",
    "siot.nodes.archive",
]
NODE_CLIENT_MODULES.append("siot.nodes.rules.manager")  # rules start last: they act on the others


def load_node_clients() -> None:
    for name in NODE_CLIENT_MODULES:
        importlib.import_module(name)


class App:
    """One running siot instance. `async with App(config) as app:` returns when it is serving;
    `await app.run_until_stopped()` serves until SIGINT/SIGTERM or `app.stop()`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.broker: Broker | None = None
        self.store: Store | None = None
        self.api: Api | None = None
        self.context: AppContext | None = None
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()

    async def __aenter__(self) -> App:
        # Handlers go in before anything starts, so a SIGTERM during start-up (node clients can
        # take a while) still leads to an orderly stop once start-up has finished.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
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
        if not url:
            broker_cfg = BrokerConfig(
                data_dir=cfg.data_dir / "nats",
                server_name=f"siot-{cfg.instance_id or 'local'}",
                host=cfg.nats_host,
                port=cfg.nats_port,
                monitor_port=cfg.monitor_port,
                mqtt_port=cfg.mqtt_port,
                auth_token=cfg.auth_token,
                binary=cfg.nats_server_bin,
            )
            self.broker = await self._stack.enter_async_context(Broker(broker_cfg))
            url = broker_cfg.url
        nc = await nats_client.connect(
            url,
            name="siot-daemon",
            token=cfg.auth_token or None,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            pending_size=64 * 1024 * 1024,
            error_cb=_log_nats_error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_log_reconnected,
        )
        self._stack.push_async_callback(wait_closed, nc)
        self.store = await self._stack.enter_async_context(store)
        self.api = await self._stack.enter_async_context(Api(nc, self.store))
        client = Client(nc)
        await client.load_root()
        self.context = AppContext(
            config=cfg, store=self.store, nc=nc, client=client, broker_url=url, api=self.api
        )
        load_node_clients()
        for factory in NODE_CLIENTS:
            await self._stack.enter_async_context(factory(self.context))
        self.api.ready = True
        # Everything built during start-up (modules, the tree, node configs) lives as long as the
        # process: moved out of the collector's reach, a full collection scans only what came
        # after, instead of pausing the loop for ~20 ms (seen as the rules benchmark's max).
        gc.collect()
        gc.freeze()
        logger.info("siot: instance %s serving on %s, data in %s", self.store.instance_id, url, cfg.data_dir)

    def stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()


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
