"""Store behaviour on a real SQLite file: restart, identity, retention, schema, tree merge."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest

from siot.errors import SiotError, UnknownNode
from siot.points import Point
from siot.store import Store, StoreConfig
from siot.store.schema import MIGRATIONS
from siot.store.store import INLINE_COMMIT_MAX_POINTS


async def make_node(store: Store, node: str = "n1", parent: str | None = None) -> str:
    await store.submit(node, [Point("nodeType", "device", time=1)], parent=parent or store.root_id)
    return node


async def test_restart_keeps_identity_tree_and_log(db_path: str) -> None:
    async with Store(StoreConfig(path=db_path)) as store:
        first_id = store.instance_id
        await make_node(store)
        await store.submit("n1", [Point("v", 1, time=5)])
        last = store.last_seq
    async with Store(StoreConfig(path=db_path)) as store:
        assert store.instance_id == first_id
        assert store.tree.has_node("n1") and store.tree.node_type("n1") == "device"
        assert store.last_seq == last
        await store.submit("n1", [Point("v", 2, time=6)])
        assert store.last_seq == last + 1
        # the root is created once, with the hostname description
        root_points = await store.node_points(store.root_id)
        assert [p.type for p in root_points] == ["description"]


async def test_explicit_id_must_match_database(db_path: str) -> None:
    async with Store(StoreConfig(path=db_path, instance_id="edge-1")):
        pass
    with pytest.raises(SiotError, match="belongs to instance 'edge-1'"):
        async with Store(StoreConfig(path=db_path, instance_id="edge-2")):
            pass


async def test_schema_is_versioned(store: Store, db_path: str) -> None:
    with sqlite3.connect(db_path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]


async def test_group_commit_acks_every_write_and_orders_log(store: Store) -> None:
    await make_node(store)
    writes_before, commits_before = store.committed_writes, store.commits
    futures = [store.submit("n1", [Point("v", i, time=100 + i)]) for i in range(500)]
    results = await asyncio.gather(*futures)
    assert all(len(changed) == 1 for changed in results)
    history = await store.history("n1", type="v", key=None, start=0, end=2**62, limit=1000)
    assert [p.value for p in history] == list(range(500))
    # 500 writes queued at once go out in a few transactions; the counters say how many.
    assert store.committed_writes - writes_before == 500
    assert 1 <= store.commits - commits_before < 100


async def test_failed_write_does_not_block_others_in_the_group(store: Store) -> None:
    await make_node(store)
    writes_before = store.committed_writes
    good = store.submit("n1", [Point("v", 1)])
    bad = store.submit("ghost", [Point("v", 1)])
    good2 = store.submit("n1", [Point("w", 2)])
    assert len(await good) == 1 and len(await good2) == 1
    with pytest.raises(UnknownNode):
        await bad
    assert store.committed_writes - writes_before == 2  # the refused write is not counted


async def test_edge_tombstone_follows_merge_rule(store: Store) -> None:
    await make_node(store)
    await store.submit("n1", [Point("tombstone", 1, time=50)], parent=store.root_id)
    assert store.tree.edge(store.root_id, "n1").deleted
    await store.submit("n1", [Point("tombstone", 0, time=40)], parent=store.root_id)  # older: ignored
    assert store.tree.edge(store.root_id, "n1").deleted
    await store.submit("n1", [Point("tombstone", 0, time=60)], parent=store.root_id)
    assert not store.tree.edge(store.root_id, "n1").deleted


async def test_retention_by_age_and_rows(db_path: str) -> None:
    config = StoreConfig(
        path=db_path, retention_days=1, retention_max_rows=1_000_000, max_future_s=3 * 86_400
    )
    async with Store(config) as store:
        await make_node(store)
        day_ns = 86_400 * 10**9
        now = time.time_ns() + 2 * day_ns
        await store.submit("n1", [Point("v", i, time=now - 3 * day_ns + i) for i in range(10)])
        await store.submit("n1", [Point("w", i, time=now - 1000 + i) for i in range(10)])
        removed = await store.prune_log(now_ns=now)
        assert removed == 2 + 1 + 10  # the root's two entries, the n1 edge and the old v values
        left = await store.history("n1", type=None, key=None, start=0, end=2**62, limit=100)
        assert [p.type for p in left] == ["w"] * 10
        store.config.retention_max_rows = 4
        await store.prune_log(now_ns=now)
        left = await store.history("n1", type=None, key=None, start=0, end=2**62, limit=100)
        assert [p.value for p in left] == [6, 7, 8, 9]
        # current values are not touched by retention
        assert {p.type for p in await store.node_points("n1")} == {"v", "w"}


async def test_small_and_large_groups_commit_beside_retention(db_path: str) -> None:
    """Small groups commit on the loop thread, large ones on the writer thread; retention runs on
    the same connection meanwhile and must never interleave with either transaction."""
    config = StoreConfig(path=db_path, retention_max_rows=50)
    async with Store(config) as store:
        await make_node(store)
        small = [store.submit("n1", [Point("s", i, key=str(i % 7))]) for i in range(300)]
        large = store.submit("n1", [Point("l", i, key=str(i)) for i in range(INLINE_COMMIT_MAX_POINTS * 3)])
        prunes = [asyncio.ensure_future(store.prune_log()) for _ in range(5)]
        await asyncio.gather(*small, large, *prunes)
        values = {(p.type, p.key): p.value for p in await store.node_points("n1")}
        assert all(values[("s", str(k))] == max(i for i in range(300) if i % 7 == k) for k in range(7))
        assert values[("l", str(INLINE_COMMIT_MAX_POINTS * 3 - 1))] == INLINE_COMMIT_MAX_POINTS * 3 - 1
        await store.prune_log()
        (rows,) = (await store.fetch("SELECT COUNT(*) FROM point_log"))[0]
        assert rows == 50


async def test_full_sync_mode_is_selectable(tmp_path) -> None:
    async with Store(StoreConfig(path=str(tmp_path / "f.db"), synchronous="full")) as store:
        await make_node(store)
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        Store(StoreConfig(path=str(tmp_path / "g.db"), synchronous="OFF"))


async def test_checkpoint_interval_comes_from_the_config(db_path: str) -> None:
    async with Store(StoreConfig(path=db_path, checkpoint_interval_s=0.05)) as store:
        assert store.checkpointer is not None and store.checkpointer.interval_s == 0.05
        await make_node(store)
        async with asyncio.timeout(10):
            await store.checkpointer.checkpointed.wait()


async def test_wal_starts_over_under_steady_writes(db_path: str) -> None:
    """Back-to-back commits never leave the WAL fully copied when a transaction begins, which is
    when SQLite starts it over; without the checkpointer's held catch-up it grows without bound."""
    config = StoreConfig(path=db_path, checkpoint_interval_s=0.02, restart_wal_frames=300)
    async with Store(config) as store:
        await make_node(store)
        largest = 0
        for i in range(4000):
            await store.submit("n1", [Point("v", i, key=str(i % 50))])
            largest = max(largest, os.path.getsize(db_path + "-wal"))
    # ~3 pages per commit: 12,000 frames (48 MB) if the WAL never started over.
    assert largest < 2_000 * 4_120


async def test_wal_is_checkpointed_off_the_write_path(store: Store, db_path: str) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # other connections
    await make_node(store)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    for round_ in range(3):
        checkpointer.checkpointed.clear()
        await store.submit("n1", [Point("v", i, key=str(i), time=round_ * 1000 + i + 1) for i in range(500)])
        async with asyncio.timeout(10):
            await checkpointer.checkpointed.wait()
        assert checkpointer.last_result is not None
        busy, wal_pages, done_pages = checkpointer.last_result
        assert busy == 0 and wal_pages == done_pages > 0
