"""Fan-out of committed changes (DESIGN §3): every change that won the merge goes to the node,
each of its ancestors and the virtual root — on NATS as `up.<ancestor>.<node>[.<parent>]` for
observers outside the process, and on the in-process `ChangeBus` for the daemon's node clients
(DESIGN §1), which get the same changes as objects, without encoding or decoding them.

In-process watchers are called in the commit listener itself, in commit order. The NATS
messages go out from a task of their own, so a big fan-out (a 5 MB point under 1,000 parents is
5 GB through the socket) does not hold up the next commit. The API's acknowledgements go through
the same ordered queue (`send`): a write's ack follows the fan-out of every commit before it
and precedes its own, as on one connection, so a client that has its ack and then subscribes to
`up.*` gets only what was committed after (the change feed starts "now"). What waits to be sent
is bounded (`MAX_BACKLOG_BYTES` of encoded payloads, each sent to all its subjects): past it the
commit listener waits, which holds the store's commits back rather than memory growing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import msgpack
from nats.aio.client import Client as NATS

from siot import subjects
from siot.bus import Change, ChangeBus
from siot.codec import encode
from siot.points import Point
from siot.store import ROOT_PARENT, Store, Write

logger = logging.getLogger(__name__)

# Room left in a message for the protocol line and headers.
ENVELOPE_BYTES = 1024
# Encoded fan-out payloads waiting for the sender task, at most (each goes to every subject of
# its change; the payload is held once).
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
# At shutdown, how long the backlog may take to go out (a 5 MB point under 1,000 parents takes
# seconds) before the rest is dropped: a SIGTERM must not wait for gigabytes to be sent.
STOP_TIMEOUT_S = 5.0
# The sender lets other tasks run after handing over this many bytes.
YIELD_EVERY_BYTES = 1024 * 1024

# Messages in the queue: the subjects and the payloads each of them gets.
Outgoing = tuple[list[str], list[bytes]]


class Fanout:
    """`async with Fanout(nc, store, bus):` fans out every commit until left; leaving sends
    what is still waiting first (for at most STOP_TIMEOUT_S)."""

    def __init__(self, nc: NATS, store: Store, bus: ChangeBus) -> None:
        self.nc = nc
        self.store = store
        self.bus = bus
        self._remove_listener: Callable[[], None] | None = None
        self._backlog: deque[Outgoing] = deque()
        self._backlog_bytes = 0
        self._queued = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._sender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Fanout:
        self._sender = asyncio.create_task(self._send_forever(), name="fanout sender")
        self._remove_listener = self.store.add_commit_listener(self.on_commit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._sender is not None:
            self._backlog.append(([], []))  # the end: everything before it is sent first
            self._queued.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), STOP_TIMEOUT_S)
            except TimeoutError:
                self._sender.cancel()
                logger.warning(
                    "fanout: stopped with %d change(s) (%d bytes) not yet published on up.* "
                    "(they are committed; observers read them back)",
                    len(self._backlog) - 1,
                    self._backlog_bytes,
                )
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None

    async def send(self, subject: str, payload: bytes) -> None:
        """Publish in order with the fan-out (the API's acks, from its commit listener, which
        runs before this one's). Once the sender has stopped, publish at once."""
        if self._sender is None:
            await self.nc.publish(subject, payload)
            return
        self._enqueue([subject], [payload])

    def _enqueue(self, subject_list: list[str], messages: list[bytes]) -> None:
        self._backlog.append((subject_list, messages))
        self._backlog_bytes += sum(map(len, messages))
        self._queued.set()

    async def on_commit(self, writes: list[Write]) -> None:
        """One message per (node or edge, ancestor) for the whole group: the points of every write
        to the same node or edge travel together, encoded once.

        The sender task hands each to nats-py's public `publish` (~2.5 µs of Python each,
        STACK.md), which builds every message as one bytes object (a copy of the payload per
        subject) and waits for the socket when its buffer is full, so memory stays bounded even
        for a 5 MB point under 1,000 parents. Joining the frames by hand saved about half of the
        cost per message, but only through nats-py's private members (docs/benchmarks.md)."""
        changed: dict[tuple[str, str], list[Point]] = {}
        for write in writes:
            if write.error is None and write.changed:
                changed.setdefault((write.node, write.parent), []).extend(write.changed)
        if not changed:
            return
        tree = self.store.tree
        limit = self.nc.max_payload - ENVELOPE_BYTES
        for (node, parent), points in changed.items():
            targets = {node, ROOT_PARENT} | tree.ancestors(node)
            if parent:
                targets.add(parent)
                targets |= tree.ancestors(parent)
            self.bus.publish(targets, Change(node, parent or None, points))
            up_subjects = [subjects.up(a, node, parent or None) for a in targets]
            self._enqueue(up_subjects, payloads(node, points, limit))
        if self._backlog_bytes > MAX_BACKLOG_BYTES:
            self._room.clear()
            await self._room.wait()

    async def _send_forever(self) -> None:
        """Publish the backlog in order, until the end marker `__aexit__` queues."""
        publish = self.nc.publish
        while True:
            if not self._backlog:
                self._queued.clear()
                await self._queued.wait()
            subject_list, messages = self._backlog.popleft()
            if not subject_list:
                return
            try:
                since_yield = 0
                for payload in messages:
                    for subject in subject_list:
                        await publish(subject, payload)
                        since_yield += len(payload)
                        if since_yield >= YIELD_EVERY_BYTES:
                            # nats-py's publish returns without suspending while its buffer has
                            # room: without this a 5 GB fan-out would hold the loop (acks, reads)
                            # for seconds, and a cancel would never land
                            since_yield = 0
                            await asyncio.sleep(0)
            except Exception:
                logger.exception("fanout: could not publish the changes on %s", subject_list[0])
            self._backlog_bytes -= sum(map(len, messages))
            if self._backlog_bytes <= MAX_BACKLOG_BYTES:
                self._room.set()


def payloads(node: str, points: list[Point], limit: int) -> list[bytes]:
    """The points as one message, or as several of at most `limit` bytes when one would pass
    the broker's max_payload (two 5 MB writes to one node in one commit: nats-server would
    refuse the message, and the rest of the commit's fan-out with it). A point too large for any
    message is left out of the fan-out with a warning: it is stored, and read through history."""
    payload = encode([p.to_wire() for p in points])
    if len(payload) <= limit:
        return [payload]
    result, chunk, size = [], [], 0
    for p in points:
        item = encode(p.to_wire())
        if len(item) > limit:
            logger.warning("fanout: %s of %s is %d bytes, too large to publish", p.type, node, len(item))
            continue
        if chunk and size + len(item) > limit:
            result.append(_array(chunk))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item)
    if chunk:
        result.append(_array(chunk))
    return result


def _array(items: list[bytes]) -> bytes:
    """A msgpack array of already encoded items."""
    return msgpack.Packer().pack_array_header(len(items)) + b"".join(items)
