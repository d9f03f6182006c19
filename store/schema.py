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


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_initial", m001_initial),
    ("002_sync_cursors", m002_sync_cursors),
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
