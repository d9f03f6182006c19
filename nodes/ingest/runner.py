"""One running `ingest` node: subscribe to its filter, map each message, create devices as
children on first sight, and send their points through the API like any device would."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from nats.aio.msg import Msg

from siot.app import AppContext
from siot.client import Change
from siot.codec import encode
from siot.errors import InvalidInput, SiotError
from siot.nodes.ingest.config import IngestConfig
from siot.nodes.ingest.mapping import Mapped, map_message
from siot.nodes.listener import Listener
from siot.points import Point

logger = logging.getLogger(__name__)

ERROR_POINT_MIN_INTERVAL_NS = 1_000_000_000


class DeletedDevice(InvalidInput):
    """A message names a device that was deleted: it stays deleted, the message is refused."""


class IngestRunner:
    """Devices are found again by name: the map is rebuilt from the ingest node's children (their
    `description`, deleted ones included) on start.

    A device deleted by a user stays deleted: its messages are refused, counted and reported as
    the ingest node's `error` point, so a sensor still sending cannot bring back what was removed.
    Undeleting the device (or moving it elsewhere) lets its messages in again.

    A message with a reply subject gets `{"ok": true}` once its points are committed, or
    `{"error"}`; others (MQTT, plain publishes) are sent without waiting, in arrival order."""

    def __init__(self, ctx: AppContext, config: IngestConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.devices: dict[str, str] = {}
        self.received = 0
        self.errors = 0
        self.refused: Counter[str] = Counter()  # messages refused per deleted device name
        self._listener = Listener(ctx, config.id, self._on_msg)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_error_ns = 0

    @property
    def node(self) -> str:
        return self.config.id

    async def start(self) -> None:
        # live devices first, so a name that is both deleted and live maps to the live one
        children = sorted(await self.ctx.client.children(self.node, deleted=True), key=lambda c: c.deleted)
        for child in children:
            if child.description:
                self.devices.setdefault(child.description, child.id)
        await self._listener.listen(self.config.subjects, disabled=self.config.disabled)
        logger.info(
            "ingest %s: %s on %s, %d known device(s)",
            self.node,
            "disabled" if self.config.disabled else "listening",
            ", ".join(self.config.subjects),
            len(self.devices),
        )

    async def update(self, config: IngestConfig, change: Change | None) -> None:
        old = self.config
        self.config = config
        if (old.subjects, old.disabled) != (config.subjects, config.disabled):
            await self._listener.listen(config.subjects, disabled=config.disabled)
            logger.info("ingest %s: now on %s", self.node, ", ".join(config.subjects))
        if (old.tags, old.device_model) != (config.tags, config.device_model):
            for device in list(self.devices.values()):
                if self._live(device):
                    await self.ctx.client.send_points(device, self._metadata(), ack=False)

    async def stop(self) -> None:
        await self._listener.close()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _metadata(self, name: str | None = None) -> list[Point]:
        """Points ingest keeps on each device (origin = the ingest node): name, tags, model."""
        now = time.time_ns()
        points = [
            Point("tag", value, key=key, time=now, origin=self.node)
            for key, value in self.config.tags.items()
        ]
        if name is not None:
            points.append(Point("description", name, time=now, origin=self.node))
        if self.config.device_model:
            points.append(Point("model", self.config.device_model, time=now, origin=self.node))
        return points

    def _live(self, device: str) -> bool:
        return bool(self.ctx.store.tree.live_parents(device))

    async def _device_id(self, name: str) -> str:
        """The device node for `name`, created under the ingest node on first sight.
        Raises `DeletedDevice` for a device a user deleted."""
        device = self.devices.get(name)
        if device is not None:
            if self._live(device):
                return device
            self.refused[name] += 1
            raise DeletedDevice(
                f"device {name!r} ({device}) was deleted; its messages are refused "
                f"({self.refused[name]} so far); undelete it to take them again"
            )
        device = await self.ctx.client.create_node(self.node, self.config.device_type, self._metadata(name))
        self.devices[name] = device
        logger.info("ingest %s: new device %r -> %s", self.node, name, device)
        return device

    async def _on_msg(self, msg: Msg) -> None:
        self.received += 1
        try:
            readings = map_message(self.config, msg.subject, msg.data, time.time_ns())
            sends = [(await self._device_id(r.device), r) for r in readings]
        except InvalidInput as exc:
            await self._fail(msg, f"message on {msg.subject}: {exc}")
            return
        except SiotError as exc:
            await self._fail(msg, f"message on {msg.subject}: could not create device: {exc}")
            return
        if msg.reply:
            task = asyncio.get_running_loop().create_task(self._send_and_reply(msg.reply, sends))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        for device, reading in sends:
            await self.ctx.client.send_points(device, reading.points, ack=False)

    async def _send_and_reply(self, reply: str, sends: list[tuple[str, Mapped]]) -> None:
        answer: dict[str, Any] = {"ok": True}
        try:
            await asyncio.gather(*(self.ctx.client.send_points(d, r.points) for d, r in sends))
        except SiotError as exc:
            answer = {"error": str(exc)}
        await self.ctx.nc.publish(reply, encode(answer))

    async def _fail(self, msg: Msg, message: str) -> None:
        """Count, log, and record the error on the ingest node (at most one point a second)."""
        self.errors += 1
        if msg.reply:
            await self.ctx.nc.publish(msg.reply, encode({"error": message}))
        now = time.time_ns()
        if now - self._last_error_ns < ERROR_POINT_MIN_INTERVAL_NS:
            return
        self._last_error_ns = now
        logger.warning("ingest %s: %s (%d error(s) so far)", self.node, message, self.errors)
        error = Point("error", message, time=now, origin=self.node)
        await self.ctx.client.send_points(self.node, [error], ack=False)
