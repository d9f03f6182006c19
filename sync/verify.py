"""Verification and repair, run by the edge after it has caught up (DESIGN §5).

Per-node digests of the edge's subtree are compared with the upstream's. A mismatch that
survives one more catch-up round (something may just have been committed on either side) is
logged and repaired from full state: our current state of those nodes goes up, the upstream's
comes down, and the merge rule settles each point identically on both sides. This also covers
log entries pruned by retention and rows refused on the way.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from siot.store import Store
from siot.store.log import LogRow, node_digests, state_rows, total_digest
from siot.sync import protocol
from siot.sync.server import order_state_rows
from siot.sync.status import PeerStatus

logger = logging.getLogger(__name__)

REPAIR_ROUNDS = 3
STATE_CHUNK_NODES = 200


class VerifiedLink(Protocol):
    """What verification needs of a link (`UpstreamLink` provides it)."""

    store: Store
    status: PeerStatus
    upstream_id: str

    @property
    def edge_id(self) -> str: ...

    @property
    def window(self) -> tuple[int, int]: ...

    async def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def apply(self, rows: list[protocol.SyncRow]) -> None: ...

    async def catch_up(self) -> int: ...


def _members(link: VerifiedLink) -> list[str]:
    return link.store.tree.descendants(link.edge_id, include_deleted=True)


async def differences(link: VerifiedLink) -> tuple[list[str], str]:
    """Nodes whose digests differ between here and upstream, and our total digest."""
    mine = node_digests(await state_rows(link.store, _members(link)))
    theirs: dict[str, bytes] = {}
    after = ""
    while True:
        reply = await link.request(protocol.digest(link.edge_id), {"after": after})
        page = reply.get("nodes") or {}
        theirs.update(page)
        if not reply.get("more") or not page:
            break
        after = max(page)
    differ = sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
    return differ, total_digest(mine)


async def verify(link: VerifiedLink) -> bool:
    """Compare digests, repair on mismatch, and record the verdict in the link's status. Returns
    whether it reached one: false when the subtree still differs but this instance's log moved
    on meanwhile (writes still coming in or synced down), so the difference may be nothing but
    rows in flight; the link then checks again soon instead of reporting an error."""
    status = link.status
    seq_at_start = link.store.last_seq
    differ, digest = await differences(link)
    if differ:
        await link.catch_up()
        differ, digest = await differences(link)
    for _ in range(REPAIR_ROUNDS):
        if not differ:
            break
        logger.warning(
            "sync: digest mismatch with %s on %d node(s) (e.g. %s); repairing from full state",
            link.upstream_id,
            len(differ),
            ", ".join(differ[:3]),
        )
        status.repairs += 1
        await repair(link, differ)
        differ, digest = await differences(link)
    status.digest = digest
    status.digest_ns = time.time_ns()
    status.digest_ok = not differ
    if differ and link.store.last_seq != seq_at_start:
        logger.info(
            "sync: %d node(s) still differ from %s while changes kept arriving; checking again",
            len(differ),
            link.upstream_id,
        )
        return False
    if differ:
        message = f"digests still differ on {len(differ)} node(s) after repair (e.g. {differ[0]})"
        status.error(message)
        logger.error("sync: %s", message)
    else:
        logger.info("sync: digest of our subtree matches %s (%s)", link.upstream_id, digest)
    return True


async def repair(link: VerifiedLink, differ: list[str]) -> None:
    """Send our full state of `differ` up and apply the upstream's full state of it here."""
    members = _members(link)
    rows = order_state_rows(await state_rows(link.store, members, only=differ), members)
    await _ship_state(link, rows)
    rank = {n: i for i, n in enumerate(members)}
    ordered = sorted(differ, key=lambda n: (rank.get(n, len(rank)), n))
    for start in range(0, len(ordered), STATE_CHUNK_NODES):
        chunk = ordered[start : start + STATE_CHUNK_NODES]
        reply = await link.request(protocol.state(link.edge_id), {"nodes": chunk})
        state = protocol.decode_rows(reply.get("rows", []))
        if state:
            await link.apply(state)


async def _ship_state(link: VerifiedLink, rows: list[LogRow]) -> None:
    subject = protocol.up(link.edge_id)
    max_rows, max_bytes = link.window
    while rows:
        window = protocol.take_window(rows, max_rows, max_bytes)
        await link.request(subject, {"rows": protocol.encode_rows(window)})
        rows = rows[len(window) :]
