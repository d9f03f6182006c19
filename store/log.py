"""Read helpers over the point log and current state for sync: log windows, backlog counts,
full-state rows, per-node digests, and the per-peer cursor table.

Reads use the store's reader connection (never blocking the writer). The one write here,
`save_cursors`, rides in the store's next group commit (`Store.stage`), so nothing writes to
SQLite behind the store's back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from typing import Any

from siot.store.store import Store

# A log row as sync ships it: seq, node, parent, type, key, time, value (msgpack blob),
# tombstone, origin, instance, instance_seq. Full-state rows use seq 0, instance "" and 0.
LogRow = tuple[int, str, str, str, str, int, bytes | None, int, str, str, int]
LOG_COLUMNS = "seq, node, parent, type, key, time, value, tombstone, origin, instance, instance_seq"
DIGEST_BYTES = 8
IN_CHUNK = 500


async def log_window(
    store: Store, after_seq: int, limit: int, exclude_via: str = ""
) -> tuple[list[LogRow], int]:
    """Up to `limit` log rows with seq > `after_seq` that did not arrive via `exclude_via`, oldest
    first, and the seq the scan covered: the last row's seq when the window is full, otherwise
    the log's end as it stood before the query (rows skipped by the filter are covered too)."""
    end = store.last_seq  # read before the query: everything up to here is committed and visible
    rows = await store.fetch(
        f"SELECT {LOG_COLUMNS} FROM point_log WHERE seq > ? AND via != ? ORDER BY seq LIMIT ?",
        (after_seq, exclude_via, limit),
    )
    if len(rows) == limit:
        return rows, rows[-1][0]  # type: ignore[return-value]
    return rows, max(end, after_seq)  # type: ignore[return-value]


# A log row as the exporter reads it (nodes/export): seq, node, parent, type, key, time, value
# (msgpack blob), tombstone.
ValueRow = tuple[int, str, str, str, str, int, bytes | None, int]


async def log_values(store: Store, after_seq: int, limit: int) -> tuple[list[ValueRow], int]:
    """Up to `limit` log rows with seq > `after_seq`, whoever delivered them, oldest first, and the
    seq the read covered (as `log_window`). Reads no names: origins and peers are not needed."""
    end = store.last_seq
    rows = await store.fetch(
        "SELECT seq, node, parent, type, key, time, value, tombstone FROM point_log "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    )
    if len(rows) == limit:
        return rows, rows[-1][0]  # type: ignore[return-value]
    return rows, max(end, after_seq)  # type: ignore[return-value]


async def log_backlog(store: Store, after_seq: int, exclude_via: str = "", skip_parent: str = "") -> int:
    """How many log rows after `after_seq` a peer has not acknowledged (not counting rows that
    came from it, nor edge rows under `skip_parent`). Counted on the log's ids, not through the
    `point_log` view: SQLite does not drop the view's unused name lookups from a COUNT. A peer
    not in `names` has delivered nothing, and `IS NOT NULL` then excludes no row."""
    rows = await store.fetch(
        "SELECT COUNT(*) FROM log_entries l JOIN series s ON s.id = l.series WHERE l.seq > ? "
        "AND l.via IS NOT (SELECT id FROM names WHERE name = ?) AND s.parent != ?",
        (after_seq, exclude_via, skip_parent or "\x00"),
    )
    return int(rows[0][0])


async def state_rows(
    store: Store, members: Collection[str], only: Iterable[str] | None = None
) -> list[LogRow]:
    """Current state of a subtree as rows: node points of every node in `members` and edge points
    of every edge whose parent and child are both members. `only` narrows it to those children.

    Read `IN_CHUNK` members at a time, and one call at a time per store: a whole-table read per
    request (digests of every edge, forged or not) took the daemon past 3 GB under 300
    concurrent digest requests."""
    member_set = set(members)
    wanted = member_set if only is None else member_set.intersection(only)
    ordered = sorted(wanted)
    async with store.bulk_reads:
        return await _state_rows(store, member_set, ordered)


async def _state_rows(store: Store, member_set: set[str], ordered: list[str]) -> list[LogRow]:
    result: list[LogRow] = []
    for start in range(0, len(ordered), IN_CHUNK):
        chunk = ordered[start : start + IN_CHUNK]
        where, params = _in_clause(chunk), tuple(chunk)
        node_rows = await store.fetch(
            "SELECT node, type, key, time, value, tombstone, origin FROM points"
            f"{where} ORDER BY node, type, key",
            params,
        )
        for node, ptype, key, t, value, tombstone, origin in node_rows:
            result.append((0, node, "", ptype, key, t, value, tombstone, origin, "", 0))
        edge_rows = await store.fetch(
            "SELECT parent, node, type, key, time, value, tombstone, origin FROM edge_points"
            f"{where} ORDER BY node, parent, type, key",
            params,
        )
        for parent, node, ptype, key, t, value, tombstone, origin in edge_rows:
            if parent in member_set:
                result.append((0, node, parent, ptype, key, t, value, tombstone, origin, "", 0))
    return result


def _in_clause(chunk: list[str]) -> str:
    return f" WHERE node IN ({','.join('?' * len(chunk))})"


def node_digests(rows: Iterable[LogRow]) -> dict[str, bytes]:
    """One short hash per node over its points and the edge points of its edges (what both sides
    of a sync must agree on). Insensitive to row order; sensitive to every stored field."""
    per_node: dict[str, list[tuple[Any, ...]]] = {}
    for _, node, parent, ptype, key, t, value, tombstone, origin, _, _ in rows:
        per_node.setdefault(node, []).append((parent, ptype, key, t, origin, tombstone, value or b""))
    digests = {}
    for node, items in per_node.items():
        h = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for parent, ptype, key, t, origin, tombstone, value in sorted(items):
            h.update(f"{parent}\0{ptype}\0{key}\0{t}\0{origin}\0{tombstone}\0".encode())
            h.update(len(value).to_bytes(4, "big"))
            h.update(value)
        digests[node] = h.digest()
    return digests


def total_digest(digests: dict[str, bytes]) -> str:
    """One hex digest over a map of node digests (for logs and `siot sync status`)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for node in sorted(digests):
        h.update(node.encode() + b"\0" + digests[node])
    return h.hexdigest()


# ---- per-peer cursors ----

Cursors = dict[tuple[str, str], int]


async def load_cursors(store: Store) -> Cursors:
    """Every stored cursor, keyed by (peer, direction)."""
    rows = await store.fetch("SELECT peer, direction, seq FROM sync_cursors")
    return {(peer, direction): int(seq) for peer, direction, seq in rows}


SAVE_CURSOR = (
    "INSERT INTO sync_cursors (peer, direction, seq, updated_ns) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (peer, direction) DO UPDATE SET seq = excluded.seq, updated_ns = excluded.updated_ns"
)


async def save_cursors(store: Store, cursors: Cursors, now_ns: int) -> None:
    """Upsert cursors in the store's next group commit (no transaction of their own)."""
    await store.stage(
        SAVE_CURSOR, [(peer, direction, seq, now_ns) for (peer, direction), seq in cursors.items()]
    )
