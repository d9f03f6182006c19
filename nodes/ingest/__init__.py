"""Ingest mapping nodes: arbitrary JSON device messages (MQTT topics, NATS subjects) -> points
on device nodes created automatically under the `ingest` node."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from siot.app import AppContext, register_node_client
from siot.nodes.ingest.config import INGEST_NODE_TYPE, IngestConfig, TimeUnit
from siot.nodes.ingest.mapping import Mapped, map_message, parse_time_ns
from siot.nodes.ingest.runner import IngestRunner
from siot.nodes.ingest.topics import subject_to_levels, topic_filter_to_subjects
from siot.nodes.manager import NodeManager


@register_node_client
@contextlib.asynccontextmanager
async def ingest_client(ctx: AppContext) -> AsyncIterator[NodeManager[IngestConfig]]:
    """Run an `IngestRunner` for every live `ingest` node."""
    async with NodeManager(ctx, INGEST_NODE_TYPE, IngestConfig, IngestRunner) as manager:
        yield manager


__all__ = [
    "INGEST_NODE_TYPE",
    "IngestConfig",
    "IngestRunner",
    "Mapped",
    "TimeUnit",
    "ingest_client",
    "map_message",
    "parse_time_ns",
    "subject_to_levels",
    "topic_filter_to_subjects",
]
