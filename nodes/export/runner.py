"""One running `db` node: a `Shipper` while the node has a url and is not disabled."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from siot.client import Change
from siot.nodes.export.config import DbConfig, redact_url
from siot.nodes.export.shipper import ExportState, ExportStatus, Shipper, saved_cursor
from siot.runtime import AppContext

logger = logging.getLogger(__name__)


class ExportStats:
    """Every exporter's status, by node id: field `export` of `siot.stats`, and read by
    siot/metrics.py. Shared by the runners of one daemon."""

    def __init__(self, last_seq: Callable[[], int]) -> None:
        self._last_seq = last_seq  # the store's last seq, to compute each lag
        self.nodes: dict[str, ExportStatus] = {}

    def wire(self) -> dict[str, Any]:
        last_seq = self._last_seq()
        return {node: status.to_wire(last_seq) for node, status in sorted(self.nodes.items())}


class DbRunner:
    """Restarts its shipper on any change of the config (the cursor carries over: a new url or
    database gets what is logged from there on, not the history already exported)."""

    def __init__(self, ctx: AppContext, config: DbConfig, stats: ExportStats) -> None:
        self.ctx = ctx
        self.config = config
        self.stats = stats
        self.shipper: Shipper | None = None

    async def start(self) -> None:
        status = self.stats.nodes[self.config.id] = ExportStatus(self.config.id)
        if self.config.disabled or not self.config.url:
            status.state = ExportState.DISABLED
            status.cursor = await saved_cursor(self.ctx.store, self.config.id)  # for its lag
            return
        self.shipper = Shipper(self.ctx, self.config, status)
        await self.shipper.start()
        logger.info(
            "db %s: exporting the subtree of %s to %s (%s) from log seq %d",
            self.config.id,
            self.config.parent,
            redact_url(self.config.url),
            self.config.database or f"bucket {self.config.bucket}",
            self.shipper.cursor,
        )

    async def update(self, config: DbConfig, change: Change | None) -> None:
        await self.stop()
        self.config = config
        await self.start()

    async def stop(self) -> None:
        if self.shipper is not None:
            await self.shipper.stop()
            self.shipper = None
        self.stats.nodes.pop(self.config.id, None)
