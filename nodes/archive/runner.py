"""One running `archive` node: every message on its filter goes to the day files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from nats.aio.msg import Msg
from pydantic import Field

from siot.client import Change
from siot.nodes.archive.writer import ArchiveWriter
from siot.nodes.config import Bounded
from siot.nodes.listener import Listener, ListenerConfig, ListenerState
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

ARCHIVE_NODE_TYPE = "archive"
ARCHIVE_DIR = "archive"
DEFAULT_RETENTION_DAYS = 30.0
FLUSH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
MAX_RETENTION_DAYS = 36_500.0  # a century: beyond, the cutoff date is out of datetime's range
RetentionDays = Bounded(0.0, MAX_RETENTION_DAYS, "days")


class ArchiveConfig(ListenerConfig):
    """The message filter, and how many days of files to keep."""

    retention_days: RetentionDays = Field(DEFAULT_RETENTION_DAYS, alias="retentionDays", gt=0)


class ArchiveRunner:
    """Files live in `<data>/archive/`, shared by every archive node (one file per subject and
    day, so two nodes with overlapping filters write the same message twice)."""

    def __init__(self, ctx: AppContext, config: ArchiveConfig, *, root: Path | None = None) -> None:
        self.ctx = ctx
        self.config = config
        self.writer = ArchiveWriter(root or ctx.config.data_dir / ARCHIVE_DIR)
        self._listener = Listener(ctx, config.id, self._on_msg)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.writer.prune(self.config.retention_days)
        await self._listener.listen(self.config.subjects, disabled=self.config.disabled)
        self._task = asyncio.create_task(self._housekeeping(), name=f"archive {self.config.id}")
        logger.info("archive %s: %s -> %s", self.config.id, ", ".join(self.config.subjects), self.writer.root)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            self.writer.write(msg.subject, msg.data)
        except OSError:
            logger.exception("archive %s: cannot write %s", self.config.id, msg.subject)

    async def _housekeeping(self) -> None:
        """Flush every second; apply retention every hour (files rotate by themselves by day)."""
        since_prune_s = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            since_prune_s += FLUSH_INTERVAL_S
            try:
                self.writer.flush()
                if since_prune_s >= PRUNE_INTERVAL_S:
                    since_prune_s = 0.0
                    self.writer.prune(self.config.retention_days)
            except OSError:
                logger.exception("archive %s: housekeeping failed", self.config.id)
            except Exception as exc:  # never let the flush task die quietly
                logger.warning("archive %s: housekeeping failed: %r", self.config.id, exc)

    async def update(self, config: ArchiveConfig, change: Change | None) -> None:
        resubscribe = (config.subjects, config.disabled) != (self.config.subjects, self.config.disabled)
        self.config = config
        if resubscribe:
            await self._listener.listen(config.subjects, disabled=config.disabled)
        self.writer.prune(config.retention_days)

    async def stop(self) -> None:
        """Stop taking messages, write out what arrived, then report `stopped`: once the node
        says so, its files are complete."""
        await self._listener.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.writer.flush()
        self.writer.close()
        await self._listener.report(ListenerState.STOPPED)
