"""The write connection and the one function that applies a group of writes in one transaction.

Everything here runs on the store's single writer thread (datasette's pattern: one owner for the
write connection). A whole group commit is one thread hop, not one hop per statement, which is
what makes batching pay (aiosqlite's per-call overhead is ~100 µs, STACK.md).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import msgpack

from siot.points import Point

NODE_UPSERT = """
INSERT INTO points (node, type, key, time, value, tombstone, origin) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (node, type, key) DO UPDATE SET
    time = excluded.time, value = excluded.value, tombstone = excluded.tombstone,
    origin = excluded.origin
WHERE (excluded.time, excluded.origin) > (points.time, points.origin)
"""

EDGE_UPSERT = """
INSERT INTO edge_points (parent, node, type, key, time, value, tombstone, origin)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (parent, node, type, key) DO UPDATE SET
    time = excluded.time, value = excluded.value, tombstone = excluded.tombstone,
    origin = excluded.origin
WHERE (excluded.time, excluded.origin) > (edge_points.time, edge_points.origin)
"""

LOG_INSERT = """
INSERT INTO point_log
    (seq, node, parent, type, key, time, value, tombstone, origin, instance, instance_seq, via)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


WAL_SIZE_LIMIT_BYTES = 128 * 1024 * 1024  # a longer WAL is truncated to this when it starts over


def pack_value(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack_value(blob: bytes | None) -> object:
    return None if blob is None else msgpack.unpackb(blob, raw=False)


@dataclass(slots=True)
class WriteRows:
    """One accepted write as the writer thread sees it: plain data, no futures."""

    node: str
    parent: str  # "" for node points
    points: list[Point]
    via: str = ""
    # Where each point was first accepted (sync passes the peer's); None = here, now.
    provenance: list[tuple[str, int]] | None = None
    # Sync sets this: a point that loses the merge is still history (a value a peer held while
    # apart), so it is logged, once, without changing the current value or fanning out.
    history: bool = False
    changed: list[Point] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode (we issue BEGIN/COMMIT) with WAL."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA wal_autocheckpoint=0")  # store/checkpoint.py does it off the write path
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    return db


LOGGED = """
SELECT 1 FROM point_log WHERE node = ? AND type = ? AND key = ? AND time = ? AND parent = ? AND origin = ?
LIMIT 1
"""


def _not_logged(db: sqlite3.Connection, write: WriteRows, p: Point) -> bool:
    """True if the log has no entry for this exact (point, time, origin) yet (history index)."""
    args = (write.node, p.type, p.key, p.time, write.parent, p.origin)
    return db.execute(LOGGED, args).fetchone() is None


def apply_writes(db: sqlite3.Connection, writes: list[WriteRows], instance: str, next_seq: int) -> int:
    """Merge every write's points in one transaction and log those that won (and, for `history`
    writes, those that lost but were never logged); return next seq.

    Fills `changed` (the winners) and `seqs` (every logged point) on each write. On any SQLite
    error the transaction is rolled back and the error propagates: nothing of the group is
    stored, and the caller fails every write.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        log_rows = []
        # One cursor for the whole group: `Connection.execute` makes a new cursor per call, which
        # cost ~4 µs of the ~10 µs a single upsert takes from Python.
        execute = db.cursor().execute
        for write in writes:
            changed = write.changed
            for index, p in enumerate(write.points):
                before = db.total_changes
                blob = pack_value(p.value)
                if write.parent:
                    execute(
                        EDGE_UPSERT,
                        (
                            write.parent,
                            write.node,
                            p.type,
                            p.key,
                            p.time,
                            blob,
                            p.tombstone,
                            p.origin,
                        ),
                    )
                else:
                    execute(
                        NODE_UPSERT,
                        (write.node, p.type, p.key, p.time, blob, p.tombstone, p.origin),
                    )
                if db.total_changes == before:
                    if not (write.history and _not_logged(db, write, p)):
                        continue
                else:
                    changed.append(p)
                seq = next_seq
                next_seq += 1
                write.seqs.append(seq)
                src_instance, src_seq = write.provenance[index] if write.provenance else (instance, seq)
                log_rows.append(
                    (
                        seq,
                        write.node,
                        write.parent,
                        p.type,
                        p.key,
                        p.time,
                        blob,
                        p.tombstone,
                        p.origin,
                        src_instance,
                        src_seq,
                        write.via,
                    )
                )
        if log_rows:
            db.executemany(LOG_INSERT, log_rows)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        for write in writes:
            write.changed.clear()
            write.seqs.clear()
        raise
    return next_seq
