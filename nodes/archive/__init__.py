"""Raw archive nodes: every message on a subject filter as JSON lines, one file per subject and
UTC day under `<data>/archive/`, with a retention in days."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from siot.app import AppContext, register_node_client
from siot.nodes.archive.runner import ARCHIVE_NODE_TYPE, ArchiveConfig, ArchiveRunner
from siot.nodes.archive.writer import ArchiveWriter, encode_payload, subject_dir
from siot.nodes.manager import NodeManager


@register_node_client
@contextlib.asynccontextmanager
async def archive_client(ctx: AppContext) -> AsyncIterator[NodeManager[ArchiveConfig]]:
    """Run an `ArchiveRunner` for every live `archive` node."""
    async with NodeManager(ctx, ARCHIVE_NODE_TYPE, ArchiveConfig, ArchiveRunner) as manager:
        yield manager


__all__ = [
    "ARCHIVE_NODE_TYPE",
    "ArchiveConfig",
    "ArchiveRunner",
    "ArchiveWriter",
    "archive_client",
    "encode_payload",
    "subject_dir",
]
