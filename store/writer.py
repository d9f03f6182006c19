"""The write connection and the one function that applies a group of writes in one transaction.

Everything here runs on the store's single writer thread (datasette's pattern: one owner for the
write connection). A whole group commit is one thread hop, not one hop per statement, which is
what makes batching pay (aiosqlite's per-call overhead is ~100 µs, STACK.md).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from siot.points import Point, encode_value

# The merge rule (DESIGN §2, siot.points.merge_rank) in SQL: replace iff (time, origin, encoded
# value, tombstone) is greater. SQLite compares the value BLOBs bytewise, like Python's bytes.
NODE_UPSERT = """
INSERT INTO points (node, type, key, time, value, tombstone, origin) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (node, type, key) DO UPDATE SET
    time = excluded.time, value = excluded.value, tombstone = excluded.tombstone,
    origin = excluded.origin
WHERE (excluded.time, excluded.origin, excluded.value, excluded.tombstone)
    > (points.time, points.origin, points.value, points.tombstone)
"""

EDGE_UPSERT = """
INSERT INTO edge_points (parent, node, type, key, time, value, tombstone, origin)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (parent, node, type, key) DO UPDATE SET
    time = excluded.time, value = excluded.value, tombstone = excluded.tombstone,
    origin = excluded.origin
WHERE (excluded.time, excluded.origin, excluded.value, excluded.tombstone)
    > (edge_points.time, edge_points.origin, edge_points.value, edge_points.tombstone)
"""

LOG_INSERT = """
INSERT INTO log_entries (seq, series, time, value, tombstone, origin, instance, instance_seq, via)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


WAL_SIZE_LIMIT_BYTES = 128 * 1024 * 1024  # a longer WAL is truncated to this when it starts over


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
    changed: list[Point] = field(default_factory=list)  # the points that won the merge


SeriesKey = tuple[str, str, str, str]  # node, parent, type, key


class LogIds:
    """The integer ids the log stores in place of its strings (store/schema.py m003), cached so
    that logging a point costs no query unless its series or origin is new.

    An id taken in a transaction that rolls back is gone from the file, so `forget_new` drops it
    from the cache too; `keep_new` marks the ids of a committed transaction as safe."""

    def __init__(self) -> None:
        self.series: dict[SeriesKey, int] = {}
        self.names: dict[str, int] = {"": 0}  # '' is id 0 in every database (m003)
        self._new: list[tuple[dict[Any, int], Any]] = []

    def series_id(self, cursor: sqlite3.Cursor, key: SeriesKey) -> int:
        found = self.series.get(key)
        if found is None:
            found = self._intern(cursor, self.series, key, SERIES_ID, SERIES_INSERT, key)
        return found

    def name_id(self, cursor: sqlite3.Cursor, name: str) -> int:
        found = self.names.get(name)
        if found is None:
            found = self._intern(cursor, self.names, name, NAME_ID, NAME_INSERT, (name,))
        return found

    def _intern(
        self,
        cursor: sqlite3.Cursor,
        cache: dict[Any, int],
        key: Any,
        select: str,
        insert: str,
        params: tuple[str, ...],
    ) -> int:
        """The id from the table, inserted if missing (a cold cache after start, or a new one)."""
        row = cursor.execute(select, params).fetchone()
        found = int(row[0]) if row else int(cursor.execute(insert, params).lastrowid or 0)
        cache[key] = found
        self._new.append((cache, key))
        return found

    def keep_new(self) -> None:
        self._new.clear()

    def forget_new(self) -> None:
        for cache, key in self._new:
            cache.pop(key, None)
        self._new.clear()


SERIES_ID = "SELECT id FROM series WHERE node = ? AND parent = ? AND type = ? AND key = ?"
SERIES_INSERT = "INSERT INTO series (node, parent, type, key) VALUES (?, ?, ?, ?)"
NAME_ID = "SELECT id FROM names WHERE name = ?"
NAME_INSERT = "INSERT INTO names (name) VALUES (?)"


@dataclass(slots=True)
class Bookkeeping:
    """Rows of the store's own state (sync cursors, …) that ride in the next group commit's
    transaction instead of opening one of their own: one statement, many parameter rows."""

    sql: str
    rows: list[tuple[object, ...]]


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode (we issue BEGIN/COMMIT) with WAL.

    `busy_timeout` is 0: SQLite's own wait would block whichever thread runs the commit, the
    event loop's included; `begin` waits instead, on the writer thread (see `Store._apply`).
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=0")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA wal_autocheckpoint=0")  # store/checkpoint.py does it off the write path
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    return db


BUSY_RETRY_S = 0.005


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY: another connection (an outside reader's write transaction) holds the lock."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def begin(db: sqlite3.Connection, wait_s: float) -> None:
    """BEGIN IMMEDIATE, retrying for up to `wait_s` while another connection holds the write
    lock; raises the SQLITE_BUSY error after that (nothing has been written yet)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(BUSY_RETRY_S)


# Is this exact point (value and tombstone included) in the log already? Uses the history index.
LOGGED = """
SELECT 1 FROM log_entries WHERE series = ? AND time = ? AND value = ? AND tombstone = ? AND origin = ?
LIMIT 1
"""


def apply_writes(
    db: sqlite3.Connection,
    writes: list[WriteRows],
    instance: str,
    ids: LogIds,
    next_seq: int,
    bookkeeping: list[Bookkeeping] = (),  # type: ignore[assignment]
    busy_wait_s: float = 0.0,
) -> int:
    """Merge every write's points in one transaction, log every distinct point (DESIGN §2:
    history keeps every reading, winner or not), run the bookkeeping; return the next seq.

    A point that wins the merge goes to `changed` (and is fanned out later). One that loses is
    still logged unless the log already has it exactly (a duplicate: a redelivery, a resend),
    which is the one case where a write is a no-op. A winner is never in the log yet: the
    current value outranks everything logged for its identity.

    On any SQLite error the transaction is rolled back and the error propagates: nothing of the
    group is stored, and the caller fails every write.

    Log rows carry `ids`' integers; provenance that is this instance's own (the common case) is
    stored as NULL.
    """
    begin(db, busy_wait_s)
    try:
        log_rows = []
        # What this group logs; the log rows are inserted together at the end, so the LOGGED
        # query cannot see them yet.
        logged_here: set[tuple[object, ...]] = set()
        # One cursor for the whole group: `Connection.execute` makes a new cursor per call, which
        # cost ~4 µs of the ~10 µs a single upsert takes from Python.
        cursor = db.cursor()
        execute = cursor.execute
        for write in writes:
            changed = write.changed
            node, parent = write.node, write.parent
            via = ids.name_id(cursor, write.via)
            for index, p in enumerate(write.points):
                before = db.total_changes
                blob = encode_value(p.value)
                if parent:
                    execute(EDGE_UPSERT, (parent, node, p.type, p.key, p.time, blob, p.tombstone, p.origin))
                else:
                    execute(NODE_UPSERT, (node, p.type, p.key, p.time, blob, p.tombstone, p.origin))
                won = db.total_changes != before  # read before interning, which may insert
                series = ids.series_id(cursor, (node, parent, p.type, p.key))
                identity = (series, p.time, blob, p.tombstone, ids.name_id(cursor, p.origin))
                if won:
                    changed.append(p)
                elif identity in logged_here or execute(LOGGED, identity).fetchone():
                    continue
                logged_here.add(identity)
                seq = next_seq
                next_seq += 1
                src_instance, src_seq = _provenance(cursor, ids, write, index, instance, seq)
                log_rows.append((seq, *identity, src_instance, src_seq, via))
        if log_rows:
            cursor.executemany(LOG_INSERT, log_rows)
        for item in bookkeeping:
            cursor.executemany(item.sql, item.rows)
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        ids.forget_new()
        for write in writes:
            write.changed.clear()
        raise
    ids.keep_new()
    return next_seq


def _provenance(
    cursor: sqlite3.Cursor, ids: LogIds, write: WriteRows, index: int, instance: str, seq: int
) -> tuple[int | None, int | None]:
    """The log's (instance, instance_seq) of a point: NULL where it is this instance and this
    seq, which every locally accepted point is."""
    if not write.provenance:
        return None, None
    src_instance, src_seq = write.provenance[index]
    return (
        None if src_instance == instance else ids.name_id(cursor, src_instance),
        None if src_seq == seq else src_seq,
    )


def rollback(db: sqlite3.Connection) -> None:
    """Roll back an open transaction. SQLite may have rolled it back already (SQLITE_FULL and
    I/O errors can), and a failing ROLLBACK must not hide the error that caused it."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
