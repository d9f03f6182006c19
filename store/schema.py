"""Schema and migrations. Each migration is a named function applied in the same transaction as
its record in `migrations`, so a crash mid-migration leaves the database at the previous version.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from siot.store.writer import begin, rollback

Migration = Callable[[sqlite3.Connection], None]
MIGRATION_BUSY_WAIT_S = 5.0


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: `executescript` would COMMIT the migration's transaction."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    for statement in code.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);

        -- Current value of every node point; identity (node, type, key).
        CREATE TABLE points (
            node TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
            time INTEGER NOT NULL, value BLOB, tombstone INTEGER NOT NULL DEFAULT 0,
            origin TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (node, type, key)
        ) WITHOUT ROWID;

        -- Current value of every edge point; identity (parent, node, type, key).
        -- The edge itself exists when it has a nodeType point.
        CREATE TABLE edge_points (
            parent TEXT NOT NULL, node TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
            time INTEGER NOT NULL, value BLOB, tombstone INTEGER NOT NULL DEFAULT 0,
            origin TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (parent, node, type, key)
        ) WITHOUT ROWID;
        CREATE INDEX edge_points_by_node ON edge_points (node, parent);

        -- Append-only log of every accepted change: the history and the source of sync.
        -- parent = '' for node points. instance/instance_seq say where the change was first
        -- accepted and its sequence number there; via names the peer that delivered it ('' local).
        CREATE TABLE point_log (
            seq INTEGER PRIMARY KEY,
            node TEXT NOT NULL, parent TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
            time INTEGER NOT NULL, value BLOB, tombstone INTEGER NOT NULL, origin TEXT NOT NULL,
            instance TEXT NOT NULL, instance_seq INTEGER NOT NULL, via TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX point_log_history ON point_log (node, type, key, time);
        """,
    )


def m002_sync_cursors(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        -- Sync positions per peer: direction 'out' = seq of our log the peer has acknowledged;
        -- 'in' = seq of the peer's log we have applied (lets a peer resume after losing data).
        CREATE TABLE sync_cursors (
            peer TEXT NOT NULL, direction TEXT NOT NULL, seq INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (peer, direction)
        ) WITHOUT ROWID;
        """,
    )


def m003_log_ids(db: sqlite3.Connection) -> None:
    """Store the log as integers: each row named its point by node, parent, type, key, origin,
    instance and via as text (two UUIDs and more per row, and the node again in the history
    index), ~190 bytes of SQLite per logged point. Now the identity is a `series` id, the other
    strings are `names` ids, and the values almost every row shares cost no bytes at all: origin
    and via '' are id 0 (SQLite stores the integer 0 in the record header alone), instance NULL
    means this instance and instance_seq NULL means seq.

    `point_log` becomes a view with the old columns, so readers (sync, history, the sqlite3
    shell) read the log as before; only the writer and retention use `log_entries`. The rows are
    copied in seq order and the history index is built after the copy (sorted, so its pages are
    full). The old table's pages go to the free list and are reused by new rows; VACUUM returns
    them to the file system."""
    _run_script(
        db,
        """
        -- Strings the log repeats, stored once: origins, instances, peers. '' is id 0.
        CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        INSERT INTO names (id, name) VALUES (0, '');
        INSERT OR IGNORE INTO names (name)
            SELECT origin FROM point_log UNION SELECT instance FROM point_log
            UNION SELECT via FROM point_log;

        -- The point identities the log has recorded. parent = '' for node points.
        CREATE TABLE series (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL, parent TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
            UNIQUE (node, parent, type, key)
        );
        INSERT INTO series (node, parent, type, key)
            SELECT DISTINCT node, parent, type, key FROM point_log ORDER BY node, parent, type, key;

        -- Append-only log of every accepted change: the history and the source of sync.
        -- origin and via are names ids (0 = ''); instance is a names id, NULL = this instance
        -- (meta.instance_id); instance_seq NULL = seq.
        CREATE TABLE log_entries (
            seq INTEGER PRIMARY KEY,
            series INTEGER NOT NULL, time INTEGER NOT NULL, value BLOB,
            tombstone INTEGER NOT NULL, origin INTEGER NOT NULL,
            instance INTEGER, instance_seq INTEGER, via INTEGER NOT NULL
        );
        """,
    )
    own = db.execute("SELECT value FROM meta WHERE name = 'instance_id'").fetchone()
    db.execute(
        """
        INSERT INTO log_entries
        SELECT l.seq, s.id, l.time, l.value, l.tombstone, o.id,
            CASE WHEN l.instance = ? THEN NULL ELSE i.id END, NULLIF(l.instance_seq, l.seq), v.id
        FROM point_log l
        JOIN series s USING (node, parent, type, key)
        JOIN names o ON o.name = l.origin
        JOIN names i ON i.name = l.instance
        JOIN names v ON v.name = l.via
        ORDER BY l.seq
        """,
        (own[0] if own else None,),
    )
    _run_script(
        db,
        """
        DROP TABLE point_log;
        CREATE INDEX log_entries_history ON log_entries (series, time);

        -- The log with its strings: what sync ships and history reads. LEFT JOINs to names
        -- (each row has its names) let SQLite skip the lookups a query does not read.
        CREATE VIEW point_log AS
        SELECT l.seq AS seq, s.node AS node, s.parent AS parent, s.type AS type, s.key AS key,
            l.time AS time, l.value AS value, l.tombstone AS tombstone, o.name AS origin,
            COALESCE(i.name, (SELECT value FROM meta WHERE name = 'instance_id')) AS instance,
            COALESCE(l.instance_seq, l.seq) AS instance_seq, v.name AS via
        FROM log_entries l
        JOIN series s ON s.id = l.series
        LEFT JOIN names o ON o.id = l.origin
        LEFT JOIN names i ON i.id = l.instance
        LEFT JOIN names v ON v.id = l.via;
        """,
    )


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_initial", m001_initial),
    ("002_sync_cursors", m002_sync_cursors),
    ("003_log_ids", m003_log_ids),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations in order; return the names applied. Refuses a newer database."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_ns INTEGER)")
    applied = {row[0] for row in db.execute("SELECT name FROM migrations")}
    known = {name for name, _ in MIGRATIONS}
    unknown = applied - known
    if unknown:
        raise RuntimeError(
            f"database has migrations this siot does not know: {sorted(unknown)}; upgrade siot"
        )
    done = []
    for name, fn in MIGRATIONS:
        if name in applied:
            continue
        begin(db, MIGRATION_BUSY_WAIT_S)
        try:
            fn(db)
            db.execute(
                "INSERT INTO migrations VALUES (?, CAST(strftime('%s','now') AS INTEGER) * 1000000000)",
                (name,),
            )
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        done.append(name)
    return done
