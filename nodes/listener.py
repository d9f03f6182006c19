"""What the node types that take raw messages (ingest, archive) share: the `subject`/`topic`
filter in their config, subscribing it, and saying on the node whether it is taking messages.

The `state` point (`listening`, `disabled`, `stopped`) is written only once it is true: after
the subscriptions are live on the server, and after a stop has processed every message already
received. So `siot tree` shows whether such a node works, and a device (or a test) can wait for
`listening` instead of publishing into the void and guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import model_validator

from siot.api import SUBSCRIPTION_PENDING_BYTES, SUBSCRIPTION_PENDING_MSGS
from siot.client import Client
from siot.errors import InvalidInput, SiotError
from siot.nodes.manager import ManagedConfig
from siot.nodes.topics import topic_filter_to_subjects
from siot.points import Point
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

STATE_POINT = "state"
MessageHandler = Callable[[Msg], Awaitable[None]]


class ListenerConfig(ManagedConfig):
    """Where a node takes messages from: `subject` (NATS filter) or `topic` (MQTT filter)."""

    subject: str = ""
    topic: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> ListenerConfig:
        if bool(self.topic) == bool(self.subject):
            raise ValueError("set exactly one of 'subject' (NATS filter) or 'topic' (MQTT filter)")
        try:
            self.subjects  # noqa: B018 (validates the topic filter)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def subjects(self) -> list[str]:
        """The NATS subjects to subscribe to."""
        return topic_filter_to_subjects(self.topic) if self.topic else [self.subject]


class ListenerState(StrEnum):
    LISTENING = "listening"
    DISABLED = "disabled"
    STOPPED = "stopped"


class Listener:
    """The subscriptions of one node. `listen` (re)subscribes and reports the state; `close`
    unsubscribes, lets messages already received run through `handler`, and reports `stopped`."""

    def __init__(self, ctx: AppContext, node: str, handler: MessageHandler) -> None:
        self.ctx = ctx
        self.node = node
        self.handler = handler
        self._subs: list[Subscription] = []

    async def listen(self, subjects: list[str], *, disabled: bool) -> None:
        await self.drain()
        if not disabled:
            for subject in subjects:
                self._subs.append(
                    await self.ctx.nc.subscribe(
                        subject,
                        cb=self.handler,
                        pending_msgs_limit=SUBSCRIPTION_PENDING_MSGS,
                        pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES,
                    )
                )
            await self.ctx.nc.flush()  # the server has the interest before we say "listening"
        await self.report(ListenerState.DISABLED if disabled else ListenerState.LISTENING)

    async def close(self) -> None:
        await self.drain()
        await self.report(ListenerState.STOPPED)

    async def drain(self) -> None:
        """Unsubscribe, but handle what already arrived: a stop or a new filter loses nothing."""
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.drain()
            except Exception:  # connection closing under us: nothing more will arrive anyway
                logger.debug("%s: drain of %s failed", self.node, sub.subject, exc_info=True)

    async def report(self, state: ListenerState) -> None:
        """Write the state and wait for its commit (so it is stored before the API stops at
        shutdown). Written with the node as origin, so the manager does not reconfigure on it."""
        point = Point(STATE_POINT, str(state), time=time.time_ns(), origin=self.node)
        with contextlib.suppress(SiotError):
            await self.ctx.client.send_points(self.node, [point])


async def wait_state(client: Client, node: str, state: ListenerState, *, timeout_s: float = 10.0) -> None:
    """Return once `node` says `state` (client side: for devices, scripts, benchmarks and tests).
    Raises `TimeoutError` after `timeout_s`. The change feed is open before the first look, so a
    state committed in between is not missed."""
    async with client.changes(node) as changes, asyncio.timeout(timeout_s):
        while (await client.get_node(node)).value(STATE_POINT) != state:
            await changes.get()
