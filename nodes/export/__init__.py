"""`db` nodes: every point value logged in the subtree of the node's parent, exported to InfluxDB
(1.x or 2.x) or VictoriaMetrics as line protocol, tagged with the device's metadata, from the
point log with a cursor of its own so that nothing is lost (docs/export.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from siot.nodes.export.config import DB_NODE_TYPE, DbConfig, WriteApi
from siot.nodes.export.runner import DbRunner, ExportStats
from siot.nodes.export.shipper import ExportState, ExportStatus, Shipper
from siot.nodes.manager import NodeManager
from siot.runtime import AppContext


@contextlib.asynccontextmanager
async def export_client(ctx: AppContext) -> AsyncIterator[NodeManager[DbConfig]]:
    """Runs a `DbRunner` for every live `db` node; their figures are field `export` of
    `siot.stats` and /metrics."""
    stats = ExportStats(lambda: ctx.store.last_seq)

    def factory(c: AppContext, config: DbConfig) -> DbRunner:
        return DbRunner(c, config, stats)

    remove_stats = ctx.api.add_stats("export", stats.wire)
    try:
        async with NodeManager(ctx, DB_NODE_TYPE, DbConfig, factory) as manager:
            yield manager
    finally:
        remove_stats()


__all__ = [
    "DB_NODE_TYPE",
    "DbConfig",
    "DbRunner",
    "ExportState",
    "ExportStats",
    "ExportStatus",
    "Shipper",
    "WriteApi",
    "export_client",
]
