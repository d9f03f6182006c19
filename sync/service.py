"""The sync node client started by every `siot serve`: the upstream-side server, one link per
`sync` node under this instance's root, the `--upstream` flag, and `siot.sync.status`.

A `sync` node (points `uri`, `authToken`, `credentialFile`, `tlsCa`, `parent`, `disabled`)
configures an upstream at run time; `--upstream URL [--upstream-parent ID]
[--upstream-credential FILE] [--upstream-tls-ca FILE]` just creates or updates such a node on
start. The edge credential's secret is never a point (points are logged, synced and exported):
the node names the file that holds it, on this machine.
Only sync nodes directly under our own root are acted on: an edge's sync node also reaches the
upstream's tree (it is part of the edge's subtree), and the upstream must not follow it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pydantic
from nats.aio.msg import Msg

from siot.client import Change
from siot.codec import encode
from siot.credfile import CredentialFileError
from siot.credfile import load as load_credential
from siot.nodes.manager import ManagedConfig, NodeManager
from siot.points import Point
from siot.runtime import AppContext
from siot.store import Store
from siot.store.store import SAVE_META
from siot.sync import protocol
from siot.sync.cursors import CursorBook
from siot.sync.link import LinkConfig, UpstreamLink
from siot.sync.server import SyncServer
from siot.sync.status import LinkState, PeerStatus, Role

logger = logging.getLogger(__name__)

NODE_TYPE = "sync"
SESSION_META = "sync_session"  # the meta row holding this data directory's sync session token


async def session_token(store: Store) -> str:
    """The token our links send with every sync request (docs/sync.md, one session per edge id).
    Kept with the data, so a restarted edge - even after a crash, without its bye - is the same
    session and resumes at once, while another instance started with the same --id (another
    data directory) is refused while this one is live."""
    rows = await store.fetch("SELECT value FROM meta WHERE name = ?", (SESSION_META,))
    if rows:
        return str(rows[0][0])
    token = secrets.token_hex(8)
    await store.stage(SAVE_META, [(SESSION_META, token)])
    return token


class SyncNodeConfig(ManagedConfig):
    """Points of a `sync` node. `parent` is the upstream node to attach under (the node's own
    tree parent, which the manager fills in when no `parent` point is set, = the upstream root)."""

    uri: str = ""  # empty while the node is being created: nothing to run yet
    authToken: str = ""
    credentialFile: str = ""  # path of the edge credential {"user","secret"} on this machine
    tlsCa: str = ""  # path of the CA (or certificate) to trust for a tls:// upstream
    windowRows: int = pydantic.Field(protocol.DEFAULT_WINDOW_ROWS, ge=1, le=protocol.MAX_WINDOW_ROWS)
    windowBytes: int = pydantic.Field(protocol.DEFAULT_WINDOW_BYTES, ge=1024, le=protocol.MAX_WINDOW_BYTES)


def split_token(url: str) -> tuple[str, str]:
    """`nats://TOKEN@host:4222` -> (`nats://host:4222`, `TOKEN`); other URLs pass unchanged."""
    parts = urlsplit(url)
    if parts.username and not parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc)), parts.username
    return url, ""


class SyncRunner:
    """One `sync` node: runs an `UpstreamLink` while the node is enabled and ours."""

    def __init__(
        self,
        ctx: AppContext,
        config: SyncNodeConfig,
        book: CursorBook,
        links: dict[str, SyncRunner],
        session: str = "",
    ) -> None:
        self.ctx = ctx
        self.session = session
        self.config = config
        self.book = book
        self.links = links
        self.link: UpstreamLink | None = None
        self.status = PeerStatus(peer="", role=Role.UPSTREAM, node=config.id, uri=config.uri)

    def _link_config(self) -> LinkConfig | None:
        cfg = self.config
        tree = self.ctx.store.tree
        if self.ctx.store.root_id not in tree.live_parents(cfg.id):
            return None  # a downstream edge's sync node, replicated here: not ours to run
        # The node manager fills `parent` with the node's tree parent when no `parent` point is set.
        parent = "" if cfg.parent in tree.parents.get(cfg.id, ()) else cfg.parent
        uri, token = split_token(cfg.uri)
        credential = load_credential(cfg.credentialFile) if cfg.credentialFile else None
        return LinkConfig(
            node=cfg.id,
            uri=uri,
            token=cfg.authToken or token,
            credential=credential,
            tls_ca=cfg.tlsCa,
            parent=parent,
            window_rows=cfg.windowRows,
            window_bytes=cfg.windowBytes,
            session=self.session,
        )

    async def start(self) -> None:
        try:
            link_config = self._link_config()
        except CredentialFileError as exc:
            self.status.error(str(exc))
            self.links[self.config.id] = self
            logger.error("sync: node %s: %s", self.config.id, exc)
            return
        if link_config is None or not link_config.uri:
            return
        if self.config.disabled:
            self.status.state = LinkState.DISABLED
            self.links[self.config.id] = self
            logger.info("sync: node %s is disabled", self.config.id)
            return
        self.link = UpstreamLink(self.ctx.store, self.book, link_config)
        self.links[self.config.id] = self
        await self.link.start()

    async def update(self, config: SyncNodeConfig, change: Change | None) -> None:
        if config == self.config:
            return
        await self.stop()
        self.config = config
        await self.start()

    async def stop(self) -> None:
        self.links.pop(self.config.id, None)
        if self.link is not None:
            await self.link.stop()
            self.link = None

    async def status_wire(self) -> dict[str, Any]:
        if self.link is None:
            return self.status.to_wire(0)
        return self.link.status.to_wire(await self.link.backlog())


async def apply_upstream_flag(ctx: AppContext) -> None:
    """Create or update the `sync` node under our root from `--upstream`/`--upstream-parent`."""
    url = ctx.config.upstream
    if not url:
        return
    uri, token = split_token(url)
    wanted: dict[str, Any] = {"uri": uri, "parent": ctx.config.upstream_parent or "", "disabled": False}
    if token:
        wanted["authToken"] = token
    if ctx.config.upstream_credential:
        wanted["credentialFile"] = str(Path(ctx.config.upstream_credential).resolve())
    if ctx.config.upstream_tls_ca:
        wanted["tlsCa"] = str(Path(ctx.config.upstream_tls_ca).resolve())
    root = ctx.store.root_id
    existing = await ctx.client.children(root, type=NODE_TYPE)
    if not existing:
        node = await ctx.client.create_node(
            root, NODE_TYPE, [Point("description", "upstream"), *(Point(k, v) for k, v in wanted.items())]
        )
        logger.info("sync: created sync node %s for upstream %s", node, uri)
        return
    info = existing[0]
    changed = [Point(k, v) for k, v in wanted.items() if info.value(k) != v]
    if changed:
        await ctx.client.send_points(info.id, changed)
        logger.info("sync: updated sync node %s for upstream %s", info.id, uri)


@contextlib.asynccontextmanager
async def sync_service(ctx: AppContext) -> AsyncIterator[None]:
    """Serve edges, run our own upstream links, and answer `siot.sync.status`."""
    runners: dict[str, SyncRunner] = {}

    def upstream_ids() -> set[str]:
        return {r.link.upstream_id for r in list(runners.values()) if r.link and r.link.upstream_id}

    async with (
        CursorBook(ctx.store) as book,
        SyncServer(
            ctx.nc,
            ctx.store,
            book,
            downstream_roots=ctx.downstream_roots,
            upstream_ids=upstream_ids,
            attach_parent=lambda edge: ctx.credentials.edge_parent(edge) if ctx.credentials else None,
        ) as server,
    ):
        # Edges that attached before this start: the nodes of ours with a cursor (an upstream
        # peer is never a node of our tree).
        ctx.downstream_roots.update(
            p for p in book.peers() if p != ctx.instance_id and ctx.store.tree.has_node(p)
        )
        await apply_upstream_flag(ctx)
        session = await session_token(ctx.store)
        # Refused sync requests (per edge id) on siot.stats, beside the API's own error counts.
        remove_stats = ctx.api.add_stats("syncErrors", lambda: dict(server.errors))

        def peers_stats() -> list[dict[str, Any]]:
            """Every link of ours and every edge heard from since start, with its lag: field
            `syncPeers` of siot.stats, and /metrics (no query: cheap at every scrape)."""
            now_ns = time.time_ns()
            records = [r.link.status if r.link else r.status for r in list(runners.values())]
            records += server.live_records(now_ns)
            return [record.lag_wire(ctx.store.last_seq, now_ns) for record in records]

        remove_peers = ctx.api.add_stats("syncPeers", peers_stats)

        def factory(c: AppContext, config: SyncNodeConfig) -> SyncRunner:
            return SyncRunner(c, config, book, runners, session)

        async def on_status(msg: Msg) -> None:
            try:
                peers = [await r.status_wire() for r in list(runners.values())]
                peers += await server.status()
                reply: dict[str, Any] = {
                    "ok": True,
                    "instance": ctx.store.instance_id,
                    "lastSeq": ctx.store.last_seq,
                    "peers": peers,
                }
            except Exception as exc:
                logger.exception("sync: status failed")
                reply = {"error": f"internal error: {exc}"}
            if msg.reply:
                await ctx.nc.publish(msg.reply, encode(reply))

        sub = await ctx.nc.subscribe(protocol.STATUS, cb=on_status)
        try:
            async with NodeManager(ctx, NODE_TYPE, SyncNodeConfig, factory):
                yield
        finally:
            remove_stats()
            remove_peers()
            await sub.unsubscribe()
