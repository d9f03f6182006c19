"""Raw archive nodes: every message on a subject filter as JSON lines, one file per subject and
UTC day under `<data>/archive/`, with a retention in days."""

from __future__ import annotations

from siot.nodes.archive.runner import ARCHIVE_NODE_TYPE, ArchiveConfig, ArchiveRunner
from siot.nodes.archive.writer import ArchiveWriter, encode_payload, subject_dir
from siot.nodes.manager import managed

# Runs an `ArchiveRunner` for every live `archive` node.
archive_client = managed(ARCHIVE_NODE_TYPE, ArchiveConfig, ArchiveRunner)


__all__ = [
    "ARCHIVE_NODE_TYPE",
    "ArchiveConfig",
    "ArchiveRunner",
    "ArchiveWriter",
    "archive_client",
    "encode_payload",
    "subject_dir",
]
