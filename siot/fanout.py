"""Fan-out of committed changes (DESIGN §3): every change that won the merge goes to the node,
each of its ancestors and the virtual root — on NATS as `up.<ancestor>.<node>[.<parent>]` for
observers outside the process, and on the in-process `ChangeBus` for the daemon's node clients
(DESIGN §1), which get the same changes as objects, without encoding or decoding them.

It is a store commit listener registered after the API's, so a write's acknowledgement is handed
to the connection before its fan-out.
"""

from __future__ import annotations

import logging
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


class Fanout:
    """`async with Fanout(nc, store, bus):` fans out every commit until left."""

    def __init__(self, nc: NATS, store: Store, bus: ChangeBus) -> None:
        self.nc = nc
        self.store = store
        self.bus = bus
        self._remove_listener: Callable[[], None] | None = None

    async def __aenter__(self) -> Fanout:
        self._remove_listener = self.store.add_commit_listener(self.on_commit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    async def on_commit(self, writes: list[Write]) -> None:
        """One message per (node or edge, ancestor) for the whole group: the points of every write
        to the same node or edge travel together, encoded once.

        Each goes through nats-py's public `publish` (~2.5 µs of Python each, STACK.md), which
        hands the payload over without a copy per subject and waits for the socket when its
        buffer is full, so a 5 MB point under 1,000 parents does not become 5 GB in memory.
        Joining the frames into one buffer by hand saved about half of that per message, but
        only through nats-py's private members (docs/benchmarks.md)."""
        changed: dict[tuple[str, str], list[Point]] = {}
        for write in writes:
            if write.error is None and write.changed:
                changed.setdefault((write.node, write.parent), []).extend(write.changed)
        if not changed:
            return
        tree = self.store.tree
        publish = self.nc.publish
        for (node, parent), points in changed.items():
            targets = {node, ROOT_PARENT} | tree.ancestors(node)
            if parent:
                targets.add(parent)
                targets |= tree.ancestors(parent)
            self.bus.publish(targets, Change(node, parent or None, points))
            for payload in payloads(node, points, self.nc.max_payload - ENVELOPE_BYTES):
                for ancestor in targets:
                    await publish(subjects.up(ancestor, node, parent or None), payload)


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
