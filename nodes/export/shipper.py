"""The exporter's loop: read the point log after the exporter's cursor, turn the entries of its
subtree into line protocol, write them, and move the cursor only once the database has them.

This is a sync peer's log shipping (docs/sync.md) with a database as the peer, and it is why
nothing is lost: the cursor is the seq of the last log entry the database acknowledged (a 2xx),
kept in the `meta` table (`export_cursor.<node>`), so an outage of the database (minutes or a
day), a restart or a SIGKILL of siot resumes where the database stopped taking lines, bounded
only by the log's retention. History is exported, not just current values: a reading that
arrives late (a device flushing its buffer, an edge syncing up after an outage) is a log entry
like any other.

The cursor is saved at most every `CURSOR_SAVE_S` while lines flow, and whenever the exporter has
caught up; after a crash the last lines before it may be written again. That creates no
duplicate: InfluxDB (and VictoriaMetrics) keep one value per series and timestamp, and the same
log entry gives the same series and timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from siot.errors import SiotError
from siot.nodes.export.config import DbConfig, redact_url
from siot.nodes.export.influx import InfluxWriter, Outcome, WriteResult
from siot.nodes.export.lines import field
from siot.nodes.export.tags import SeriesKeys
from siot.points import Point
from siot.runtime import AppContext
from siot.store import Store, Write
from siot.store.log import ValueRow, log_values
from siot.store.store import SAVE_META
from siot.store.writer import unpack_value
from siot.sync.link import Backoff

logger = logging.getLogger(__name__)

CURSOR_META_PREFIX = "export_cursor."
CURSOR_SAVE_S = 0.5
RETRY_BASE_S = 0.5
RETRY_CAP_S = 10.0
ERROR_POINT = "error"
# How an outage's error point ends: one left by an earlier run (a restart, a config change) is
# recognised by it and deleted once writes go through.
OUTAGE_MARK = "retrying (nothing is lost"
# Nodes whose points hold credentials (a db node's password/token, a user's passwordHash, a
# msgService's SMTP password, a sync node's authToken): never exported, whatever the filter says.
NEVER_EXPORTED_NODE_TYPES = frozenset(("db", "user", "msgService", "sync"))


class ExportState(StrEnum):
    STARTING = "starting"  # the first write has not been answered yet
    OK = "ok"  # the last write was taken (or there was nothing to write)
    FAILING = "failing"  # the database does not take writes; retrying
    DISABLED = "disabled"  # the node says disabled, or has no url yet


@dataclass(slots=True)
class ExportStatus:
    """One exporter's figures, on `siot.stats` (`export`) and /metrics (siot/metrics.py)."""

    node: str
    state: ExportState = ExportState.STARTING
    cursor: int = 0
    exported_lines: int = 0  # lines the database acknowledged since start
    rejected_requests: int = 0  # requests with lines the database refused as bad (400/422)
    failed_requests: int = 0  # requests that wrote nothing (outage, credentials): retried
    caught_up_ns: int = 0  # when the cursor last reached the end of the log
    last_error: str = ""

    def lag_rows(self, last_seq: int) -> int:
        """Log entries after the cursor (an upper bound of lines to write: entries outside the
        subtree or filtered out count until the exporter scans past them)."""
        return max(last_seq - self.cursor, 0)

    def lag_s(self, last_seq: int, now_ns: int) -> float:
        """0 when caught up, else the seconds since the exporter last was."""
        if self.lag_rows(last_seq) == 0 or not self.caught_up_ns:
            return 0.0
        return max(now_ns - self.caught_up_ns, 0) / 1e9

    def to_wire(self, last_seq: int) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "cursor": self.cursor,
            "lagRows": self.lag_rows(last_seq),
            "lagSeconds": round(self.lag_s(last_seq, time.time_ns()), 3),
            "exportedLines": self.exported_lines,
            "rejectedRequests": self.rejected_requests,
            "failedRequests": self.failed_requests,
            "lastError": self.last_error,
        }


def cursor_meta_name(node: str) -> str:
    return CURSOR_META_PREFIX + node


async def saved_cursor(store: Store, node: str) -> int:
    """The cursor of `node`'s exporter as last saved; 0 (the log's start) for a new one."""
    rows = await store.fetch("SELECT value FROM meta WHERE name = ?", (cursor_meta_name(node),))
    return int(rows[0][0]) if rows else 0


class Shipper:
    """Exports one `db` node's subtree. `await start()` loads the cursor and returns; the loop runs
    in its own task until `await stop()`, which saves the cursor."""

    def __init__(self, ctx: AppContext, config: DbConfig, status: ExportStatus) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.config = config
        self.status = status
        self.keys = SeriesKeys(ctx.store)
        self.cursor = 0
        self._saved_cursor = 0
        self._saved_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
        self._outage = ""  # the error point written for the outage going on, if any

    async def start(self) -> None:
        self.cursor = self._saved_cursor = await saved_cursor(self.store, self.config.id)
        self.status.cursor = self.cursor
        self._outage = await self._outage_left()
        await self._check_retention()
        self._remove_listener = self.store.add_commit_listener(self._on_commit)
        self._task = asyncio.create_task(self._run(), name=f"db export {self.config.id}")

    async def stop(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._save_cursor()

    async def _on_commit(self, writes: list[Write]) -> None:
        if any(w.error is None for w in writes):
            self._wake.set()

    # ---- the cursor ----

    async def _save_cursor(self) -> None:
        if self.cursor == self._saved_cursor:
            return
        cursor = self.cursor
        try:
            await self.store.stage(SAVE_META, [(cursor_meta_name(self.config.id), str(cursor))])
        except SiotError as exc:  # the store is closing or its commit failed: saved next time
            logger.warning("db %s: cannot save the export cursor: %s", self.config.id, exc)
            return
        self._saved_cursor = cursor
        self._saved_at = time.monotonic()

    async def _outage_left(self) -> str:
        """The outage error on the node from before this start, if any."""
        for p in await self.store.node_points(self.config.id):
            if (
                p.type == ERROR_POINT
                and not p.deleted
                and isinstance(p.value, str)
                and OUTAGE_MARK in p.value
            ):
                return p.value
        return ""

    async def _check_retention(self) -> None:
        """Say so when log retention removed entries this exporter had not written yet."""
        rows = await self.store.fetch("SELECT MIN(seq) FROM log_entries")
        first = rows[0][0]
        if self.cursor and first is not None and first > self.cursor + 1:
            await self._report(
                f"log entries {self.cursor + 1}..{first - 1} were removed by the log's retention "
                "before they were exported (raise --log-retention-days / --log-max-rows)"
            )

    # ---- the loop ----

    async def _run(self) -> None:
        async with InfluxWriter(self.config) as writer:
            while True:
                try:
                    await self._ship_backlog(writer)
                except Exception as exc:  # a bug must not end the export for good
                    logger.exception("db %s: export failed unexpectedly", self.config.id)
                    self.status.last_error = f"internal error: {exc}"
                    await asyncio.sleep(self._backoff.next_s())
                    continue
                await self._wake.wait()
                self._wake.clear()
                if self.status.lag_rows(self.store.last_seq) < self.config.batch_lines:
                    await asyncio.sleep(self.config.batch_wait_s)  # gather a fuller batch

    async def _ship_backlog(self, writer: InfluxWriter) -> None:
        """Write everything logged after the cursor, one window at a time."""
        while True:
            rows, scanned = await log_values(self.store, self.cursor, self.config.batch_lines)
            if scanned == self.cursor:
                break
            self.keys.invalidate(rows)
            lines = await self._lines(rows)
            if lines:
                await self._deliver(writer, lines)
            self.cursor = self.status.cursor = scanned
            if time.monotonic() - self._saved_at >= CURSOR_SAVE_S:
                await self._save_cursor()
        self.status.caught_up_ns = time.time_ns()
        if self.status.state is ExportState.STARTING:
            self.status.state = ExportState.OK
        await self._save_cursor()

    def _exported(self, node: str) -> bool:
        config = self.config
        if node == config.id:
            return False
        node_type = self.store.tree.node_type(node)
        if node_type in NEVER_EXPORTED_NODE_TYPES:
            return False
        if config.node_types and node_type not in config.node_types:
            return False
        return node == config.parent or config.parent in self.store.tree.ancestors(node)

    async def _lines(self, rows: list[ValueRow]) -> list[str]:
        point_types = self.config.point_types
        exported: dict[str, bool] = {}  # per node, for this window
        lines = []
        for _, node, parent, ptype, key, time_ns, blob, tombstone in rows:
            if parent or tombstone % 2 or (point_types and ptype not in point_types):
                continue
            wanted = exported.get(node)
            if wanted is None:
                wanted = exported[node] = self._exported(node)
            if not wanted:
                continue
            value = field(unpack_value(blob))
            if value is not None:
                lines.append(f"{await self.keys.key(node, ptype, key)} {value} {time_ns}")
        return lines

    async def _deliver(self, writer: InfluxWriter, lines: list[str]) -> None:
        """Write `lines` until the database has taken them or refused them as bad; an outage or
        a configuration problem (credentials, no such database) is retried for ever."""
        body = "\n".join(lines).encode()
        while True:
            result = await writer.write(body)
            if result.outcome is Outcome.WRITTEN:
                self.status.exported_lines += len(lines)
                await self._written()
                return
            if result.outcome is Outcome.TOO_LARGE and len(lines) > 1:
                half = len(lines) // 2
                await self._deliver(writer, lines[:half])
                await self._deliver(writer, lines[half:])
                return
            if result.outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
                await self._rejected(result, len(lines))
                return
            await self._failed(result)
            await asyncio.sleep(self._backoff.next_s())

    # ---- reporting ----

    async def _written(self) -> None:
        self._recovered()
        if self._outage:  # the outage is over: its error point goes
            self._outage = ""
            await self._write_points([Point(ERROR_POINT, "", origin=self.config.id, tombstone=1)])

    async def _rejected(self, result: WriteResult, count: int) -> None:
        """Bad lines: InfluxDB wrote the rest of the request; this one is reported and skipped.
        Its error point stays on the node (it is about data that was not written)."""
        self.status.rejected_requests += 1
        self._outage = ""
        await self._report(f"lines refused, the rest of the batch of {count} was written: {result.message}")
        self._recovered()

    def _recovered(self) -> None:
        self._backoff.reset()
        if self.status.state is ExportState.FAILING:
            logger.info("db %s: %s takes writes again", self.config.id, redact_url(self.config.url))
        self.status.state = ExportState.OK

    async def _failed(self, result: WriteResult) -> None:
        self.status.failed_requests += 1
        self.status.state = ExportState.FAILING
        message = f"{result.message}; {OUTAGE_MARK}: the cursor waits at seq {self.cursor})"
        if result.message != self._outage:
            self._outage = result.message
            await self._report(message)

    async def _report(self, message: str) -> None:
        """An `error` point on the db node and one WARNING (the database's problem, or bad data,
        is not an error of siot)."""
        self.status.last_error = message
        logger.warning("db %s: %s", self.config.id, message)
        await self._write_points([Point(ERROR_POINT, message, origin=self.config.id)])

    async def _write_points(self, points: list[Point]) -> None:
        with contextlib.suppress(SiotError):
            await self.ctx.client.send_points(self.config.id, points)
