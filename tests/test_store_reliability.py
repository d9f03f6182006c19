"""The store keeps its promise under faults: one owner of the write connection, every reading in
history, a failed commit that is clean and answered, a disk that fills and empties, an outside
process holding the lock, a clock that steps back, and a damaged file refused at start.

Disk full and read-only run on a real tmpfs mounted for the test (the suite runs as root)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import siot.store.store as store_module
from siot.errors import StoreError
from siot.points import Point
from siot.store import Store, StoreConfig
from siot.store.log import load_cursors, save_cursors

T0 = 1_700_000_000_000_000_000


async def add_node(store: Store, node: str) -> None:
    await store.submit(node, [Point("nodeType", "device")], parent=store.root_id)


async def all_history(store: Store, node: str, ptype: str) -> list[Point]:
    return await store.history(node, type=ptype, key=None, start=0, end=2**62, limit=100_000)


async def test_cursor_saves_and_commits_share_one_transaction_discipline(store: Store) -> None:
    """Cursor saves used to open their own transaction on the writer thread while inline commits
    had one open on the loop thread; interleaved, they failed ('cannot start a transaction
    within a transaction'). Now both go through the one write connection."""
    await add_node(store, "n1")
    writes = [store.submit("n1", [Point("v", i, time=T0 + i)]) for i in range(300)]
    saves = [save_cursors(store, {("peer", "out"): i}, T0 + i) for i in range(100)]
    await asyncio.gather(*writes, *saves)
    assert await load_cursors(store) == {("peer", "out"): 99}
    assert len(await all_history(store, "n1", "v")) == 300


async def test_a_read_sees_every_commit_before_it_while_other_reads_are_in_flight(store: Store) -> None:
    """Reads share one connection; one read's open statement must not hand another read the
    snapshot it started with. Before the fix 92 of these 100 reads returned the value from before
    the commit they followed (seen in a daemon as a node manager configuring a sync link from a
    `disabled` value older than the change it was notified of)."""
    await add_node(store, "n1")
    await store.submit("n1", [Point("v", float(i), time=T0 + i) for i in range(3_000)])
    stale = []
    for i in range(100):
        in_flight = [asyncio.create_task(all_history(store, "n1", "v")) for _ in range(3)]
        await asyncio.sleep(0)  # their statements start on the reader's thread
        await store.submit("n1", [Point("x", float(i), time=T0 + 10_000 + i)])
        current = {p.type: p.value for p in await store.node_points("n1")}
        if current["x"] != float(i):
            stale.append((i, current["x"]))
        assert all(len(h) == 3_000 for h in await asyncio.gather(*in_flight))
    assert stale == []


async def test_bookkeeping_alone_commits(store: Store) -> None:
    await save_cursors(store, {("edge-a", "in"): 42}, T0)
    assert await load_cursors(store) == {("edge-a", "in"): 42}


async def test_late_readings_are_history_and_do_not_change_the_current_value(store: Store) -> None:
    await add_node(store, "dev")
    assert await store.submit("dev", [Point("temp", 20.0, time=T0 + 10_000)])
    buffered = [Point("temp", float(i), time=T0 + i) for i in range(1_000)]
    changed = await store.submit("dev", buffered)
    assert changed == []  # none beats the live reading, so nothing fans out
    current = {p.type: p for p in await store.node_points("dev")}["temp"]
    assert (current.time, current.value) == (T0 + 10_000, 20.0)
    history = await all_history(store, "dev", "temp")
    assert [p.time for p in history] == [T0 + i for i in range(1_000)] + [T0 + 10_000]


async def test_same_millisecond_readings_are_all_history_and_the_value_breaks_the_tie(store: Store) -> None:
    await add_node(store, "dev")
    await store.submit("dev", [Point("temp", 5.0, time=T0)])
    await store.submit("dev", [Point("temp", 7.0, time=T0)])
    await store.submit("dev", [Point("temp", 6.0, time=T0)])
    assert sorted(p.value for p in await all_history(store, "dev", "temp")) == [5.0, 6.0, 7.0]
    current = {p.type: p for p in await store.node_points("dev")}["temp"]
    assert current.value == 7.0  # the greatest msgpack encoding of the three


async def test_a_duplicate_is_a_no_op_even_after_it_lost_the_current_value(store: Store) -> None:
    """An MQTT redelivery or a resend of an old reading must not add a second history entry."""
    await add_node(store, "dev")
    old, new = Point("temp", 1.0, time=T0), Point("temp", 2.0, time=T0 + 1)
    await store.submit("dev", [old])
    await store.submit("dev", [new])
    await store.submit("dev", [old, old])
    await store.submit("dev", [new])
    assert [p.value for p in await all_history(store, "dev", "temp")] == [1.0, 2.0]


async def test_replicas_fed_in_different_orders_end_identical(tmp_path: Path) -> None:
    points = [Point("mode", v, time=T0 + t, origin=o) for t in (0, 1) for o in ("a", "b") for v in ("x", "y")]
    results = []
    for name, order in (("one", points), ("two", points[::-1])):
        async with Store(StoreConfig(path=str(tmp_path / f"{name}.db"), instance_id="same")) as store:
            await add_node(store, "dev")
            for p in order:
                await store.submit("dev", [p])
            history = await all_history(store, "dev", "mode")
            current = {p.type: p for p in await store.node_points("dev")}["mode"]
            results.append((current, sorted(history)))
    assert results[0] == results[1]
    assert results[0][0] == Point("mode", "y", time=T0 + 1, origin="b")
    assert len(results[0][1]) == len(points)


async def test_time_zero_stamps_keep_increasing_when_the_clock_steps_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_node(store, "dev")
    await store.submit("dev", [Point("count", 1)])
    real = store_module.time.time_ns
    monkeypatch.setattr(store_module.time, "time_ns", lambda: real() - 3600 * 10**9)
    for value in range(2, 12):
        await store.submit("dev", [Point("count", value)])
    history = await all_history(store, "dev", "count")
    assert [p.value for p in history] == list(range(1, 12))
    times = [p.time for p in history]
    assert times == sorted(set(times))
    assert {p.type: p for p in await store.node_points("dev")}["count"].value == 11


@pytest.mark.expect_errors(r"store: commit of \d+ writes failed")
async def test_an_outside_writer_holding_the_lock_delays_then_fails_a_commit_cleanly(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.db")
    async with Store(StoreConfig(path=path, instance_id="busy", busy_wait_s=0.3)) as store:
        await add_node(store, "dev")
        outsider = sqlite3.connect(path, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")
        seq_before = store.last_seq
        loop_ticks = 0

        async def tick() -> None:
            nonlocal loop_ticks
            while True:
                await asyncio.sleep(0.01)
                loop_ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(StoreError, match="another process held the database lock"):
            await store.submit("dev", [Point("v", 1, time=T0)])
        ticker.cancel()
        assert loop_ticks >= 10, "the event loop was blocked while waiting for the lock"
        assert store.last_seq == seq_before
        # Released within the wait: the commit goes through.
        waiting = store.submit("dev", [Point("v", 2, time=T0 + 1)])
        await asyncio.sleep(0.1)
        outsider.execute("ROLLBACK")
        assert await waiting
        outsider.close()
        assert [p.value for p in await all_history(store, "dev", "v")] == [2]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem at `path`."""
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@pytest.mark.expect_errors(r"store: commit of \d+ writes failed")
async def test_disk_full_fails_writes_cleanly_and_recovers_when_space_returns(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        path = str(disk / "siot.db")
        async with Store(StoreConfig(path=path, instance_id="full")) as store:
            await add_node(store, "dev")
            for i in range(20):
                await store.submit("dev", [Point("v", i, time=T0 + i)])
            fill(disk / "filler")
            seq_before = store.last_seq
            failures = []
            for i in range(20, 400):  # big values, so the WAL must grow past what is left
                try:
                    await store.submit("dev", [Point("blob", "x" * 20_000, key=str(i), time=T0 + i)])
                except StoreError as exc:
                    failures.append(str(exc))
                    break
            assert failures and "disk is full" in failures[0]
            # In memory matches the disk: the failed group's new edge is not in the tree either.
            with pytest.raises(StoreError):
                await store.submit("ghost", [Point("nodeType", "device", time=T0)], parent=store.root_id)
            assert not store.tree.has_node("ghost")
            os.remove(disk / "filler")
            assert await store.submit("dev", [Point("v", "after", time=T0 + 1_000)])
            assert store.last_seq > seq_before
            await add_node(store, "ghost")
        async with Store(StoreConfig(path=path, instance_id="full")) as store:
            values = [p.value for p in await all_history(store, "dev", "v")]
            assert values == [*range(20), "after"]
            assert store.tree.has_node("ghost")


async def test_a_read_only_filesystem_is_refused_at_start_with_a_clear_error(tmp_path: Path) -> None:
    """Linux will not remount a filesystem read-only while siot has its files open for writing,
    so read-only meets siot at start (a card mounted ro, a full-disk fsck remount): it must say
    so and stop, not half-start. The file is left as it was."""
    with tmpfs(tmp_path / "disk", "16m") as disk:
        path = disk / "siot.db"
        await make_database(path)
        before = digest(path)
        remount(disk, "ro")
        try:
            with pytest.raises(StoreError, match=f"{disk} is on a read-only filesystem"):
                async with Store(StoreConfig(path=str(path))):
                    pass
        finally:
            remount(disk, "rw")
        assert digest(path) == before


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def make_database(path: Path) -> None:
    async with Store(StoreConfig(path=str(path), instance_id="damaged")) as store:
        await add_node(store, "dev")
        await store.submit("dev", [Point("v", "x" * 1000, key=str(i), time=T0 + i) for i in range(500)])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "is truncated"),
        (lambda p: p.write_bytes(b"garbage!" * 64 + p.read_bytes()[512:]), "is not a SQLite database"),
        (
            lambda p: (Path(f"{p}-wal").write_bytes(b"\1" * 4096), p.write_bytes(b"")),
            "is empty but has a write-ahead log",
        ),
    ],
    ids=["truncated", "garbage-header", "empty-with-wal"],
)
async def test_a_damaged_database_is_refused_and_left_untouched(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "siot.db"
    await make_database(path)
    damage(path)
    before = digest(path)
    with pytest.raises(StoreError, match=message) as info:
        async with Store(StoreConfig(path=str(path))):
            pass
    assert str(path) in str(info.value)
    assert digest(path) == before


async def test_a_missing_database_starts_empty(tmp_path: Path) -> None:
    async with Store(StoreConfig(path=str(tmp_path / "new.db"), instance_id="new")) as store:
        assert store.tree.has_node("new")


async def test_stamps_keep_increasing_across_a_restart_with_the_clock_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway without an RTC boots with its clock behind: the writes it takes after the
    restart must still win over the ones it acknowledged before."""
    path = str(tmp_path / "restart.db")
    async with Store(StoreConfig(path=path, instance_id="rtc")) as store:
        await add_node(store, "dev")
        for value in range(5):
            await store.submit("dev", [Point("count", value)])
    real = store_module.time.time_ns
    monkeypatch.setattr(store_module.time, "time_ns", lambda: real() - 3600 * 10**9)
    async with Store(StoreConfig(path=path, instance_id="rtc")) as store:
        for value in range(5, 10):
            await store.submit("dev", [Point("count", value)])
        assert {p.type: p for p in await store.node_points("dev")}["count"].value == 9
        times = [p.time for p in await all_history(store, "dev", "count")]
        assert times == sorted(set(times)) and len(times) == 10
