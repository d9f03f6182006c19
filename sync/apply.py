"""Applying a peer's rows to the local store: the store merges (so applying twice is harmless),
logs each winning change with its provenance and `via` (so it is never shipped back to that
peer), and fans it out to local subscribers like any other write.

`submit_rows` queues synchronously, so rows queued by one caller are committed in the order they
arrived; that order is what keeps a point's history complete on the receiving side.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from siot.errors import InvalidInput
from siot.points import Point
from siot.store import Store
from siot.sync.protocol import SyncRow

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 5


@dataclass(slots=True)
class Applied:
    """Outcome of one window: how many points changed and why rows were refused, if any."""

    changed: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


PendingWrite = tuple[asyncio.Future[list[Point]], int]


def submit_rows(store: Store, rows: list[SyncRow], *, via: str, fallback_instance: str) -> list[PendingWrite]:
    """Queue `rows` as store writes (one per run of rows of the same node or edge); return each
    write's future and its row count. Rows without provenance are credited to `fallback_instance`.
    The store logs every distinct row, winner or not (history keeps every reading), once."""
    pending: list[PendingWrite] = []
    start = 0
    while start < len(rows):
        first = rows[start]
        end = start + 1
        while end < len(rows) and rows[end].node == first.node and rows[end].parent == first.parent:
            end += 1
        run = rows[start:end]
        future = store.submit(
            first.node,
            [r.point for r in run],
            parent=first.parent,
            via=via,
            provenance=[(r.instance or fallback_instance, r.instance_seq) for r in run],
        )
        pending.append((future, len(run)))
        start = end
    return pending


async def collect(pending: list[PendingWrite]) -> Applied:
    """Wait for the writes to commit. Refused writes (unknown node, cycle...) are counted and
    reported, not raised: one bad row must not stall a sync; the digest check repairs the rest.
    A store failure (`StoreError`) is raised: the window was not applied and must be resent."""
    result = Applied()
    for future, count in pending:
        try:
            changed = await future
        except InvalidInput as exc:
            result.refused += count
            if len(result.errors) < MAX_REPORTED_ERRORS:
                result.errors.append(str(exc))
            continue
        result.changed += len(changed)
    return result


async def apply_rows(store: Store, rows: list[SyncRow], *, via: str, fallback_instance: str) -> Applied:
    return await collect(submit_rows(store, rows, via=via, fallback_instance=fallback_instance))
