"""One running `ingest` node: subscribe to its filter, map each message, create devices as
children on first sight, and send their points through the API like any device would.

MQTT QoS 1 messages take a second way in when the node is `durable` (the default): nats-server
holds them in JetStream until this runner acks them after their commit (durable.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from siot.client import Change
from siot.codec import encode
from siot.errors import InvalidInput, SiotError, StoreBusy, StoreError
from siot.logbudget import LogBudget
from siot.nodes.ingest.config import IngestConfig
from siot.nodes.ingest.durable import MQTT_SUBJECT_PREFIX, DurableIntake, held_by_broker, stored_ns
from siot.nodes.ingest.mapping import Mapped, map_message
from siot.nodes.listener import Listener
from siot.points import Point
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

ERROR_POINT_MIN_INTERVAL_NS = 1_000_000_000
# The WARNING that goes with an error point: at most one per WARNING_INTERVAL_S per node (with
# how many were not logged), so a device flooding bad messages does not flood the log.
WARNING_INTERVAL_S = 10.0
# Batches of held messages (up to durable.FETCH_BATCH each) whose commit is under way: bounds the
# memory and the requests in flight; when all are taken the consumer is not pulled until commits
# come back.
MAX_HELD_BATCHES = 4
MAX_GROUP_POINTS = 2_000  # points of one device in one request (the API takes up to 10,000)
RETRY_DELAY_S = 1.0


def retryable(exc: SiotError) -> bool:
    """The store could not take the write now (full queue, failed commit, closing), which says
    nothing against the input: a held message that gets this is delivered again after
    RETRY_DELAY_S instead of acked."""
    return isinstance(exc, StoreBusy | StoreError)


class DeletedDevice(InvalidInput):
    """A message names a device that was deleted: it stays deleted, the message is refused."""


class DeviceLimit(InvalidInput):
    """A message names a new device, and the ingest node has `maxDevices` already."""


@dataclass(slots=True)
class IngestStats:
    """Counters of every ingest node of an instance together, served in `siot.stats` as
    `ingest` (a fixed set of fields, whatever the number of nodes or devices)."""

    received: int = 0
    refused: int = 0  # messages refused: bad input, deleted device, device limit, data model
    device_limit: int = 0  # of those, refused because they would create a device past maxDevices

    def wire(self) -> dict[str, int]:
        return {"received": self.received, "refused": self.refused, "deviceLimit": self.device_limit}


@dataclass(slots=True)
class Held:
    """A held message under way: where its points go, and what became of them."""

    msg: Msg
    subject: str
    sends: list[tuple[str, list[Point]]]
    retry: SiotError | None = None  # the store could not take it now
    refused: SiotError | None = None  # refused for good

    def record(self, exc: SiotError) -> None:
        if retryable(exc):
            self.retry = self.retry or exc
        else:
            self.refused = self.refused or exc


class IngestRunner:
    """Devices are found again by name: the map is rebuilt from the ingest node's children (their
    `description`, deleted ones included) on start.

    A device deleted by a user stays deleted: its messages are refused, counted and reported as
    the ingest node's `error` point, so a sensor still sending cannot bring back what was removed.
    Undeleting the device (or moving it elsewhere) lets its messages in again.

    A message with a reply subject gets `{"ok": true}` once its points are committed, or
    `{"error"}`; others (MQTT QoS 0, plain publishes) are sent without waiting, in arrival order.
    MQTT QoS 1 messages of a durable node come from its consumer (`DurableIntake`) in stream
    order and are acked once committed: refused input is acked too (counted, like any refusal),
    a store that cannot commit now gets the message again after RETRY_DELAY_S."""

    def __init__(self, ctx: AppContext, config: IngestConfig, stats: IngestStats | None = None) -> None:
        self.ctx = ctx
        self.config = config
        self.stats = stats if stats is not None else IngestStats()
        self.devices: dict[str, str] = {}
        self.received = 0
        self.errors = 0
        self.refused: Counter[str] = Counter()  # messages refused per deleted device name
        self.retries = 0  # held messages given back to the broker because the store could not commit
        self.device_limit_refused = 0  # messages that would have created a device past maxDevices
        self._listener = Listener(ctx, config.id, self._on_msg)
        self._durable = DurableIntake(ctx, config.id, self._on_held)
        self._held_slots = asyncio.Semaphore(MAX_HELD_BATCHES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._create_lock = asyncio.Lock()  # plain and held messages may name a new device at once
        self._last_error_ns = 0
        self._warnings = LogBudget(1, WARNING_INTERVAL_S)
        self._last_retry_log_ns = 0

    @property
    def node(self) -> str:
        return self.config.id

    async def start(self) -> None:
        # live devices first, so a name that is both deleted and live maps to the live one
        children = sorted(await self.ctx.client.children(self.node, deleted=True), key=lambda c: c.deleted)
        for child in children:
            if child.description:
                self.devices.setdefault(child.description, child.id)
        # the consumer first: once the node says `listening`, a QoS 1 PUBACK means held
        await self._open_durable(self.config)
        await self._listener.listen(self.config.subjects, disabled=self.config.disabled)
        logger.info(
            "ingest %s: %s on %s, %d known device(s)",
            self.node,
            "disabled" if self.config.disabled else "listening",
            ", ".join(self.config.subjects),
            len(self.devices),
        )

    async def _open_durable(self, config: IngestConfig) -> None:
        if config.durable and not config.disabled:
            await self._durable.open(config.subjects, ack_wait_s=config.ack_wait_s)
        else:  # messages are not taken (disabled) or not held: nothing for the broker to keep
            await self._durable.close(delete=True)

    async def update(self, config: IngestConfig, change: Change | None) -> None:
        old = self.config
        self.config = config
        durable = (config.subjects, config.disabled, config.durable, config.ack_wait_s)
        if (old.subjects, old.disabled, old.durable, old.ack_wait_s) != durable:
            await self._open_durable(config)
        if (old.subjects, old.disabled) != (config.subjects, config.disabled):
            await self._listener.listen(config.subjects, disabled=config.disabled)
            logger.info("ingest %s: now on %s", self.node, ", ".join(config.subjects))
        if (old.tags, old.device_model) != (config.tags, config.device_model):
            for device in list(self.devices.values()):
                if self._live(device):
                    await self.ctx.client.send_points(device, self._metadata(), ack=False)

    async def stop(self) -> None:
        """Stop taking messages and finish the ones under way. The consumer stays for the next
        start (shutdown, or a config that does not validate), unless the node was deleted."""
        deleted = not self._live(self.node)
        await self._durable.close(delete=False)
        await self._listener.close()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if deleted:
            await self._durable.close(delete=True)

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
        Raises `DeletedDevice` for a device a user deleted, `DeviceLimit` for a new one past
        `maxDevices` (every name the node knows counts, deleted devices too)."""
        device = self.devices.get(name)
        if device is None:
            async with self._create_lock:
                device = self.devices.get(name)
                if device is None:
                    if len(self.devices) >= self.config.max_devices:
                        self.device_limit_refused += 1
                        self.stats.device_limit += 1
                        raise DeviceLimit(
                            f"device limit reached: this ingest node has {len(self.devices)} devices "
                            f"(maxDevices {self.config.max_devices}); new device {_short(name)} not "
                            f"created, its message refused ({self.device_limit_refused} so far); "
                            "raise maxDevices to take more"
                        )
                    device = await self.ctx.client.create_node(
                        self.node, self.config.device_type, self._metadata(name)
                    )
                    self.devices[name] = device
                    logger.info("ingest %s: new device %r -> %s", self.node, name, device)
                    return device
        if self._live(device):
            return device
        self.refused[name] += 1
        raise DeletedDevice(
            f"device {name!r} ({device}) was deleted; its messages are refused "
            f"({self.refused[name]} so far); undelete it to take them again"
        )

    async def _on_msg(self, msg: Msg) -> None:
        if self._durable.active and held_by_broker(msg):
            return  # held in JetStream for this node: it comes through _on_held
        self.received += 1
        self.stats.received += 1
        try:
            readings = map_message(self.config, msg.subject, msg.data, time.time_ns())
            sends = [(await self._device_id(r.device), r) for r in readings]
        except InvalidInput as exc:
            await self._fail(msg.reply, f"message on {msg.subject}: {exc}")
            return
        except SiotError as exc:
            await self._fail(msg.reply, f"message on {msg.subject}: could not create device: {exc}")
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

    async def _on_held(self, msgs: list[Msg]) -> None:
        """A batch of held QoS 1 messages, in stream order: map them and start their commit,
        which acks each message once its points are in. Waits while MAX_HELD_BATCHES are under
        way (the consumer is not pulled meanwhile)."""
        await self._held_slots.acquire()
        task = None
        try:
            task = await self._start_held(msgs)
        finally:
            if task is None:
                self._held_slots.release()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_held(self, msgs: list[Msg]) -> asyncio.Task[None] | None:
        held: list[Held] = []
        for msg in msgs:
            subject = msg.subject.removeprefix(MQTT_SUBJECT_PREFIX)
            self.received += 1
            self.stats.received += 1
            try:
                readings = map_message(self.config, subject, msg.data, stored_ns(msg))
                sends = [(await self._device_id(r.device), r.points) for r in readings]
            except InvalidInput as exc:  # refused for good (bad message, deleted device)
                await self._fail(None, f"message on {subject}: {exc}")
                await self._settle(msg)
                continue
            except SiotError as exc:
                await self._give_back(msg, f"message on {subject}: could not create device: {exc}")
                continue
            held.append(Held(msg, subject, sends))
        if not held:
            return None
        return asyncio.get_running_loop().create_task(self._commit_held(held))

    async def _commit_held(self, held: list[Held]) -> None:
        """One request per device for the whole batch (a batch of readings is one write to the
        store, far cheaper than one request per message), then ack, give back or refuse each
        message by what became of its points."""
        try:
            groups: dict[str, list[tuple[Held, list[Point]]]] = {}
            for item in held:
                for device, points in item.sends:
                    groups.setdefault(device, []).append((item, points))
            await asyncio.gather(*(self._send_group(device, items) for device, items in groups.items()))
            for item in held:
                if item.retry is not None:
                    await self._give_back(item.msg, f"message on {item.subject}: {item.retry}")
                    continue
                if item.refused is not None:  # data model, deleted parent...: counted like any refusal
                    await self._fail(None, f"message on {item.subject}: {item.refused}")
                await self._settle(item.msg)
        except Exception:
            logger.exception("ingest %s: committing %d held message(s) failed", self.node, len(held))
            for item in held:
                await self._give_back(item.msg, f"message on {item.subject}: internal error")
        finally:
            self._held_slots.release()

    async def _send_group(self, device: str, items: list[tuple[Held, list[Point]]]) -> None:
        chunks: list[list[tuple[Held, list[Point]]]] = [[]]
        size = 0
        for item in items:
            if chunks[-1] and size + len(item[1]) > MAX_GROUP_POINTS:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item[1])
        for chunk in chunks:
            try:
                await self.ctx.client.send_points(device, [p for _, points in chunk for p in points])
                continue
            except SiotError as exc:
                if retryable(exc) or len(chunk) == 1:
                    for item, _ in chunk:
                        item.record(exc)
                    continue
            for item, points in chunk:  # a batch is refused whole: find the message(s) at fault
                try:
                    await self.ctx.client.send_points(device, points)
                except SiotError as exc:
                    item.record(exc)

    @staticmethod
    async def _settle(msg: Msg) -> None:
        """Ack a held message: its points are committed, or it was refused for good. An ack that
        does not get through only means the message comes again (an identical, no-op point)."""
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()

    async def _give_back(self, msg: Msg, message: str) -> None:
        """The store could not commit now: the broker delivers the message again later."""
        self.retries += 1
        now = time.time_ns()
        if now - self._last_retry_log_ns >= ERROR_POINT_MIN_INTERVAL_NS:
            self._last_retry_log_ns = now
            logger.warning("ingest %s: %s; held for a retry (%d so far)", self.node, message, self.retries)
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=RETRY_DELAY_S)

    async def _fail(self, reply: str | None, message: str) -> None:
        """Count, log, and record the error on the ingest node: the `error` point is updated at
        most once a second, the WARNING written at most once per WARNING_INTERVAL_S."""
        self.errors += 1
        self.stats.refused += 1
        if reply:
            await self.ctx.nc.publish(reply, encode({"error": message}))
        now = time.time_ns()
        if now - self._last_error_ns < ERROR_POINT_MIN_INTERVAL_NS:
            return
        self._last_error_ns = now
        if (held_back := self._warnings.take()) is not None:
            more = f", {held_back} error point(s) since the last WARNING" if held_back else ""
            logger.warning("ingest %s: %s (%d error(s) so far%s)", self.node, message, self.errors, more)
        error = Point("error", message, time=now, origin=self.node)
        await self.ctx.client.send_points(self.node, [error], ack=False)


def _short(name: str) -> str:
    """A device name for a message: a hostile one can be long."""
    return repr(name if len(name) <= 64 else name[:64] + "...")
