"""Ingest mapping nodes: arbitrary JSON device messages (MQTT topics, NATS subjects) -> points
on device nodes created automatically under the `ingest` node."""

from __future__ import annotations

from siot.app import register_node_client
from siot.nodes.ingest.config import INGEST_NODE_TYPE, IngestConfig, TimeUnit
from siot.nodes.ingest.mapping import Mapped, map_message, parse_time_ns
from siot.nodes.ingest.runner import IngestRunner
from siot.nodes.manager import managed
from siot.nodes.topics import subject_to_levels, topic_filter_to_subjects

# Runs an `IngestRunner` for every live `ingest` node.
ingest_client = register_node_client(managed(INGEST_NODE_TYPE, IngestConfig, IngestRunner))


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
