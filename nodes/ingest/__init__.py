"""Ingest mapping nodes: arbitrary JSON device messages (MQTT topics, NATS subjects) -> points
on device nodes created automatically under the `ingest` node."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from siot.nodes.ingest.config import INGEST_NODE_TYPE, IngestConfig, TimeUnit
from siot.nodes.ingest.mapping import Mapped, map_message, parse_time_ns
from siot.nodes.ingest.runner import IngestRunner, IngestStats
from siot.nodes.manager import NodeManager
from siot.nodes.topics import subject_to_levels, topic_filter_to_subjects
from siot.runtime import AppContext


@contextlib.asynccontextmanager
async def ingest_client(ctx: AppContext) -> AsyncIterator[NodeManager[IngestConfig]]:
    """Runs an `IngestRunner` for every live `ingest` node; their counters together are field
    `ingest` of `siot.stats` (received, refused, deviceLimit)."""
    stats = IngestStats()

    def factory(c: AppContext, config: IngestConfig) -> IngestRunner:
        return IngestRunner(c, config, stats)

    remove_stats = ctx.api.add_stats("ingest", stats.wire)
    try:
        async with NodeManager(ctx, INGEST_NODE_TYPE, IngestConfig, factory) as manager:
            yield manager
    finally:
        remove_stats()


__all__ = [
    "INGEST_NODE_TYPE",
    "IngestConfig",
    "IngestRunner",
    "IngestStats",
    "Mapped",
    "TimeUnit",
    "ingest_client",
    "map_message",
    "parse_time_ns",
    "subject_to_levels",
    "topic_filter_to_subjects",
]
