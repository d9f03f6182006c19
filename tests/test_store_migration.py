"""Migration 003 (the log as integers) converts a database written by the old schema in place:
every log row reads back identical — seq, identity, value, provenance, via — through the view,
the sync readers and history; the store then keeps logging after it. And the writer's id caches
stay right across a rolled-back commit."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

import siot.store.schema as schema
from siot.errors import StoreError
from siot.points import Point, encode_value
from siot.store import Store, StoreConfig
from siot.store.log import LogRow, log_backlog, log_window
from siot.store.writer import NODE_UPSERT, connect, unpack_value

INSTANCE = "7b0c3c5e-0000-4000-8000-00000000000a"
PEER = "peer-edge"
PEER_INSTANCE = "1d2e3f40-0000-4000-8000-00000000000b"
T0 = 1_700_000_000_000_000_000
ROWS = 3_000
OLD_LOG_INSERT = "INSERT INTO point_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ALL_COLUMNS = "seq, node, parent, type, key, time, value, tombstone, origin, instance, instance_seq, via"

Row = tuple[Any, ...]


def old_database(path: str, monkeypatch: pytest.MonkeyPatch) -> list[Row]:
    """A database at migration 002 with a root, NODES devices and ROWS log rows of every kind:
    node and edge rows, local and synced (other instance and seq, a via), tombstones, origins,
    a NULL value. Returns the log rows as the old table held them, in seq order."""
    rng = random.Random(13)
    nodes = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(8)]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
    db = connect(path, "NORMAL")
    schema.migrate(db)
    monkeypatch.undo()
    rows: list[Row] = []
    for seq in range(1, ROWS + 1):
        node = rng.choice(nodes)
        edge = rng.random() < 0.2
        synced = rng.random() < 0.3
        rows.append(
            (
                seq,
                node,
                INSTANCE if edge else "",
                rng.choice(["nodeType", "tombstone"]) if edge else rng.choice(["temp", "hum", "description"]),
                "0" if edge else str(rng.randrange(3)),
                T0 + rng.randrange(10**12),
                None if seq == 7 else encode_value(rng.choice([rng.random(), rng.randrange(100), "x", True])),
                int(rng.random() < 0.1),
                rng.choice(["", "", nodes[0], "rule-7"]),
                PEER_INSTANCE if synced else INSTANCE,
                rng.randrange(1, 10**6) if synced else seq,
                PEER if synced else "",
            )
        )
    device = encode_value("device")
    db.execute("BEGIN")
    db.execute("INSERT INTO meta VALUES ('instance_id', ?)", (INSTANCE,))
    for node in [INSTANCE, *nodes]:
        parent = "root" if node == INSTANCE else INSTANCE
        db.execute(
            "INSERT INTO edge_points VALUES (?, ?, 'nodeType', '0', ?, ?, 0, '')", (parent, node, T0, device)
        )
    db.executemany(OLD_LOG_INSERT, rows)
    db.executemany(NODE_UPSERT, [(r[1], *r[3:9]) for r in rows if not r[2]])  # the current values
    db.execute("COMMIT")
    db.close()
    return rows


def as_log_row(row: Row) -> LogRow:
    return row[:11]  # type: ignore[return-value]


def point(row: Row) -> Point:
    _, _, _, ptype, key, t, value, tombstone, origin, *_ = row
    return Point(type=ptype, key=key, time=t, value=unpack_value(value), tombstone=tombstone, origin=origin)


async def test_old_log_reads_back_identical_after_the_migration(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "siot.db")
    old = old_database(path, monkeypatch)
    async with Store(StoreConfig(path=path)) as store:
        assert store.instance_id == INSTANCE
        assert await store.fetch(f"SELECT {ALL_COLUMNS} FROM point_log ORDER BY seq") == old
        assert store.last_seq == ROWS
        window, scanned = await log_window(store, 0, ROWS * 2)
        assert window == [as_log_row(r) for r in old if r[11] != ""] and scanned == ROWS
        window, _ = await log_window(store, 100, ROWS * 2, exclude_via=PEER)
        assert window == [as_log_row(r) for r in old if r[0] > 100 and r[11] != PEER]
        window, _ = await log_window(store, 0, ROWS * 2, exclude_via="never-seen")
        assert window == [as_log_row(r) for r in old]
        assert await log_backlog(store, 50, exclude_via=PEER) == sum(r[0] > 50 and r[11] != PEER for r in old)
        assert await log_backlog(store, 0, skip_parent=INSTANCE) == sum(
            r[11] != "" and r[2] != INSTANCE for r in old
        )
        for node in {r[1] for r in old}:
            mine = sorted((r for r in old if r[1] == node and r[2] == ""), key=lambda r: (r[5], r[0]))
            got = await store.history_page(node, type=None, key=None, start=0, end=2**62, limit=ROWS)
            assert got == [(r[0], point(r)) for r in mine]
            got = await store.history_page(node, type="temp", key="1", start=0, end=2**62, limit=ROWS)
            assert got == [(r[0], point(r)) for r in mine if r[3:5] == ("temp", "1")]
        # The store logs on from the migrated seq, and knows the migrated rows as duplicates.
        resent = next(r for r in old if r[2] == "" and r[6] is not None)
        assert await store.submit(resent[1], [point(resent)]) == []
        await store.submit(resent[1], [Point("after", 1.5, time=T0)])
        new = await store.fetch(f"SELECT {ALL_COLUMNS} FROM point_log WHERE seq > ?", (ROWS,))
        assert [r[3] for r in new] == ["after"] and new[0][0] == ROWS + 1
        assert new[0][9:] == (INSTANCE, ROWS + 1, "")
        assert await store.fetch("PRAGMA integrity_check") == [("ok",)]


@pytest.mark.expect_errors("commit of 1 writes failed")
async def test_ids_taken_in_a_rolled_back_commit_are_taken_again(store: Store) -> None:
    """A failed commit rolls back the series and name rows it added; the writer's caches must
    forget them, or the next row would point at an id the file does not have."""
    await store.submit("n1", [Point("nodeType", "device")], parent=store.root_id)
    write = store.submit("n1", [Point("fresh", 1.0, time=T0, origin="new-origin")])
    failing = store.stage("INSERT INTO no_such_table VALUES (?)", [(1,)])
    with pytest.raises(StoreError):
        await write
    with pytest.raises(StoreError):
        await failing
    await asyncio.gather(store.submit("n1", [Point("fresh", 2.0, time=T0 + 1, origin="new-origin")]))
    history = await store.history("n1", type="fresh", key=None, start=0, end=2**62, limit=10)
    assert [(p.value, p.origin) for p in history] == [(2.0, "new-origin")]


def test_migration_leaves_a_database_it_cannot_finish_at_002(tmp_path: Path, monkeypatch) -> None:
    """The conversion runs in the migration's transaction: failing halfway, it leaves the old
    table and every row as they were."""
    path = str(tmp_path / "siot.db")
    old = old_database(path, monkeypatch)
    db = connect(path, "NORMAL")

    def broken(conn: sqlite3.Connection) -> None:
        schema.m003_log_ids(conn)
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:2], ("003_log_ids", broken)])
    with pytest.raises(RuntimeError):
        schema.migrate(db)
    assert db.execute(f"SELECT {ALL_COLUMNS} FROM point_log ORDER BY seq").fetchall() == old
    assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('series', 'names')").fetchall() == []
    db.close()
