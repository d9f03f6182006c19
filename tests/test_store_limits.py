"""Store-side limits on hostile or broken input: a bounded queue, points from the far future,
node ids that are API words, the root's type, and what a nodeType may be."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from siot.errors import InvalidInput, InvalidPoint, RootProtected, StoreBusy
from siot.points import Point
from siot.store import Store, StoreConfig
from siot.store.tree import NODE_TYPE, ROOT_PARENT


async def add_node(store: Store, node: str, node_type: object = "device") -> None:
    await store.submit(node, [Point(NODE_TYPE, node_type)], parent=store.root_id)


async def test_a_full_queue_refuses_writes_instead_of_growing(tmp_path: Path) -> None:
    config = StoreConfig(path=str(tmp_path / "q.db"), instance_id="q", max_queued_points=100)
    async with Store(config) as store:
        await add_node(store, "dev")
        taken = [store.submit("dev", [Point("v", i, time=1 + i)]) for i in range(100)]
        with pytest.raises(StoreBusy, match="retry in a moment"):
            store.submit("dev", [Point("v", -1, time=10_000)])
        internal = store.submit("dev", [Point("w", 1)], internal=True)  # the daemon's own writes pass
        for future in [*taken, internal]:
            await future
        # Drained: writes are taken again.
        assert await store.submit("dev", [Point("v", 1000, time=20_000)])


async def test_a_point_from_the_far_future_is_refused_naming_it(store: Store) -> None:
    await add_node(store, "dev")
    year_2200 = 7_258_118_400 * 10**9
    with pytest.raises(InvalidPoint, match=r"point 1, field 'time': 'temp' is stamped .* ahead"):
        await store.submit("dev", [Point("ok", 1), Point("temp", 20.0, time=year_2200)])
    assert await store.node_points("dev") == []  # the batch is atomic
    # Within the limit (default one day) is fine; and later readings are not frozen out.
    soon = time.time_ns() + 3600 * 10**9
    assert await store.submit("dev", [Point("temp", 21.0, time=soon)])


@pytest.mark.parametrize("node_id", ["all", "root"])
async def test_api_words_cannot_be_node_ids(store: Store, node_id: str) -> None:
    with pytest.raises(InvalidInput, match="word of the API"):
        await add_node(store, node_id)
    assert not store.tree.edge(store.root_id, node_id)


@pytest.mark.parametrize("node_type", [{"a": 1}, 5, "", None])
async def test_node_type_must_be_a_non_empty_string(store: Store, node_type: object) -> None:
    with pytest.raises(InvalidPoint, match="nodeType must be a non-empty string"):
        await add_node(store, "n1", node_type)


async def test_the_root_node_type_is_immutable(store: Store) -> None:
    with pytest.raises(RootProtected, match="stays a 'device'"):
        await store.submit(store.root_id, [Point(NODE_TYPE, "group")], parent=ROOT_PARENT, internal=True)
    assert store.tree.node_type(store.root_id) == "device"
