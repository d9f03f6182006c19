"""Properties of the merge rule (DESIGN §2), by hypothesis: on `supersedes`/`merge_rank` alone,
through real stores on SQLite files, and through sync between two real instances.

The rule: incoming replaces stored iff `(time, origin, encoded value, tombstone)` is greater
(the value encoded as msgpack with map keys sorted, compared bytewise); an identical point is a
no-op; every distinct point is logged. So any set of points, applied in any order, in any
grouping, on any replica, must end with the same current value (the greatest rank) and the
same history (every distinct point once).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support import SiotProcess
from sync_support import until, upstream_settled

from siot.client import Client
from siot.errors import RequestFailed
from siot.points import Point, encode_value, merge_rank, supersedes
from siot.store import Store, StoreConfig
from siot.store.tree import NODE_TYPE, TOMBSTONE

# Read at import: conftest.py clears SIOT_* variables for each test.
EXAMPLES = int(os.environ.get("SIOT_MERGE_EXAMPLES", "150"))
SYNC_EXAMPLES = int(os.environ.get("SIOT_MERGE_SYNC_EXAMPLES", "20"))
T0 = 1_700_000_000_000_000_000


def merge_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        # one pair of stores (or processes) serves every example, each on fresh nodes
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# Values that collide in interesting ways: equal in Python but not on the wire (1, 1.0, True),
# maps equal but built in another key order (must encode the same), -0.0 and 0.0, NaN (not
# equal to itself in Python; its encoding is), bytes and str of the same text, nesting.
TRICKY_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    -0.0,
    0.0,
    math.nan,
    math.inf,
    "",
    "a",
    b"a",
    2**63 - 1,
    -(2**63),
    [1, 2],
    [2, 1],
    {"a": 1, "b": 2},
    {"b": 2, "a": 1},
    {"x": {"b": [1, {"d": 0, "c": 1}], "a": None}},
    {"x": {"a": None, "b": [1, {"c": 1, "d": 0}]}},
]
values = st.one_of(st.sampled_from(TRICKY_VALUES), st.integers(-3, 3), st.text(max_size=3))


def points_of(types: list[str], keys: list[str]) -> st.SearchStrategy[Point]:
    """Points of a few identities, with times, origins and values drawn from small sets so that
    equal `(time, origin)` with different values, and identical points, are common."""
    return st.builds(
        Point,
        type=st.sampled_from(types),
        value=values,
        key=st.sampled_from(keys),
        time=st.integers(1, 4).map(lambda t: T0 + t),
        tombstone=st.sampled_from([0, 0, 1]),
        origin=st.sampled_from(["", "a", "b"]),
    )


one_identity = points_of(["t"], ["0"])  # what the rule decides between: one (type, key)


def rank(p: Point) -> tuple[Any, ...]:
    return (p.type, p.key, *merge_rank(p))


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def spec_rank(p: Point) -> tuple[Any, ...]:
    """DESIGN §2 written out here, apart from siot.points: (time, origin, msgpack of the value
    with map keys sorted, tombstone), compared as a tuple, bytes bytewise."""
    return (p.type, p.key, p.time, p.origin, msgpack.packb(_sorted(p.value), use_bin_type=True), p.tombstone)


def merge(stored: Point | None, incoming: Point) -> Point:
    return incoming if supersedes(incoming, stored) else stored  # type: ignore[return-value]


def fold(points: list[Point]) -> Point | None:
    return functools.reduce(merge, points, None)


def winners(points: list[Point]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The current value the rule must leave for each (type, key): the greatest rank."""
    best: dict[tuple[str, str], tuple[Any, ...]] = {}
    for p in points:
        best[(p.type, p.key)] = max(best.get((p.type, p.key), ()), spec_rank(p))
    return best


# ---- the rule alone ------------------------------------------------------------------------------


@merge_settings(EXAMPLES * 2)
@given(one_identity, one_identity, one_identity)
def test_the_rule_is_a_total_order_on_distinct_points(a: Point, b: Point, c: Point) -> None:
    assert not supersedes(a, a)  # identical: a no-op (idempotent)
    assert supersedes(a, None)  # anything beats nothing
    assert rank(a) == spec_rank(a)
    if merge_rank(a) != merge_rank(b):
        assert supersedes(a, b) != supersedes(b, a)  # exactly one wins
        assert supersedes(a, b) == (spec_rank(a) > spec_rank(b))
    else:
        assert not supersedes(a, b) and not supersedes(b, a)  # the same point, as stored
    if supersedes(a, b) and supersedes(b, c):
        assert supersedes(a, c)  # transitive
    # commutative and associative as a merge: the winner does not depend on the order or grouping
    assert rank(merge(merge(None, a), b)) == rank(merge(merge(None, b), a))
    assert rank(merge(merge(merge(None, a), b), c)) == rank(merge(merge(None, a), merge(merge(None, b), c)))


@merge_settings(EXAMPLES)
@given(
    st.lists(one_identity, min_size=1, max_size=12).flatmap(
        lambda ps: st.tuples(st.just(ps), st.permutations(ps))
    )
)
def test_any_interleaving_folds_to_the_same_winner(orders: tuple[list[Point], list[Point]]) -> None:
    points, shuffled = orders
    winner = fold(points)
    assert winner is not None and rank(winner) == rank(fold(shuffled))  # type: ignore[arg-type]
    assert rank(winner) == max(map(spec_rank, points))
    assert rank(fold(points + shuffled)) == rank(winner)  # applying everything twice changes nothing


@merge_settings(EXAMPLES)
@given(st.dictionaries(st.text(max_size=3), values, max_size=5), st.randoms(use_true_random=False))
def test_the_encoded_value_ignores_map_key_order(value: dict[str, Any], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    nested = {"m": dict(items), "l": [dict(reversed(items))]}
    assert encode_value(dict(items)) == encode_value(value)
    assert encode_value(nested) == encode_value({"l": [value], "m": value})
    assert msgpack.unpackb(encode_value(value), raw=False, strict_map_key=False) == value or any(
        isinstance(v, float) and math.isnan(v) for v in value.values()
    )


# ---- through real stores -------------------------------------------------------------------------


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    async with (
        Store(StoreConfig(path=str(tmp_path / "a.db"), instance_id="replica-a", description="a")) as a,
        Store(StoreConfig(path=str(tmp_path / "b.db"), instance_id="replica-b", description="b")) as b,
    ):
        yield a, b


_serial = iter(range(10**9))


async def _new_node(store: Store, node: str) -> None:
    await store.submit(
        node, [Point(NODE_TYPE, "device", time=1), Point(TOMBSTONE, 0, time=1)], parent=store.root_id
    )


async def _feed(store: Store, node: str, parent: str, writes: list[list[Point]], *, at_once: bool) -> None:
    """Each write is one `submit` (one batch from one sender); `at_once` queues them all before
    the first commit (one group commit, order kept), else each waits for the one before."""
    if at_once:
        await asyncio.gather(*(store.submit(node, w, parent=parent) for w in writes))
    else:
        for w in writes:
            await store.submit(node, w, parent=parent)


async def _state(store: Store, node: str, parent: str) -> tuple[dict[Any, Any], list[tuple[Any, ...]]]:
    """Current points by identity and the full history, as ranks (values as stored bytes)."""
    current = await (store.edge_points(parent, node) if parent else store.node_points(node))
    current = [p for p in current if p.type in TYPES]  # not the edge's nodeType and tombstone
    rows = await store.fetch(
        "SELECT type, key, time, value, tombstone, origin FROM point_log "
        "WHERE node = ? AND parent = ? AND type IN (?, ?)",
        (node, parent, *TYPES),
    )
    history = sorted(
        (t, k, time, origin, bytes(value or b""), tomb) for t, k, time, value, tomb, origin in rows
    )
    return {(p.type, p.key): rank(p) for p in current}, history


def _writes(points: list[Point], cuts: list[int]) -> list[list[Point]]:
    """`points` cut into consecutive writes at the given positions."""
    bounds = sorted({0, len(points), *(c % (len(points) + 1) for c in cuts)})
    return [points[i:j] for i, j in itertools.pairwise(bounds) if j > i]


TYPES = ("t", "u")
stored_points = points_of(list(TYPES), ["0", "k"])


@merge_settings(EXAMPLES)
@given(
    data=st.lists(stored_points, min_size=1, max_size=16).flatmap(
        lambda ps: st.tuples(
            st.just(ps),
            st.permutations(ps),
            st.lists(st.integers(0, 16), max_size=4),
            st.lists(st.integers(0, 16), max_size=4),
            st.booleans(),
        )
    )
)
async def test_two_stores_fed_in_any_order_end_identical(
    stores: tuple[Store, Store], data: tuple[list[Point], list[Point], list[int], list[int], bool]
) -> None:
    """The same points, in two orders and two groupings into writes, to two stores, as node
    points and as edge points: identical current values, each the greatest rank, and identical
    history holding every distinct point exactly once."""
    points, shuffled, cuts_a, cuts_b, edge = data
    a, b = stores
    node = f"n{next(_serial)}"
    await asyncio.gather(_new_node(a, node), _new_node(b, node))
    parent_a, parent_b = (a.root_id, b.root_id) if edge else ("", "")
    await _feed(a, node, parent_a, _writes(points, cuts_a), at_once=False)
    await _feed(b, node, parent_b, _writes(shuffled, cuts_b), at_once=True)
    current_a, history_a = await _state(a, node, parent_a)
    current_b, history_b = await _state(b, node, parent_b)
    assert current_a == current_b == winners(points)
    assert history_a == history_b
    distinct = {(p.type, p.key, p.time, p.origin, encode_value(p.value), p.tombstone) for p in points}
    assert len(history_a) == len(distinct) and set(history_a) == distinct


# ---- through sync ----------------------------------------------------------------------------------


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[SiotProcess, SiotProcess]]:
    """A cloud and an edge syncing to it; started outside the event loop (`start` runs one)."""
    cloud = SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud").start()
    edge = SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-m", extra_args=["--upstream", cloud.url])
    try:
        edge.start()
        yield edge, cloud
    finally:
        edge.stop()
        cloud.stop()


async def _sync_state(client: Client, node: str) -> tuple[dict[Any, Any], list[tuple[Any, ...]]]:
    info = await client.get_node(node)
    history = await client.history(node, limit=100_000)
    return (
        {(p.type, p.key): rank(p) for p in info.points},
        sorted((p.type, p.key, p.time, p.origin, encode_value(p.value), p.tombstone) for p in history),
    )


@merge_settings(SYNC_EXAMPLES)
@given(
    st.lists(stored_points, min_size=2, max_size=24).flatmap(
        lambda ps: st.tuples(st.just(ps), st.permutations(ps))
    )
)
async def test_edge_and_cloud_fed_in_different_orders_end_identical(
    replicas: tuple[SiotProcess, SiotProcess], orders: tuple[list[Point], list[Point]]
) -> None:
    """Every point written on both sides, in two orders, one point per write; sync carries each
    side's writes to the other. Both end with the greatest rank as the current value and every
    distinct point once in history."""
    points, shuffled = orders
    edge_proc, cloud_proc = replicas
    edge = await Client.connect(edge_proc.url, reconnect_forever=False)
    cloud = await Client.connect(cloud_proc.url, reconnect_forever=False)
    try:
        await edge.load_root()
        await until(lambda: upstream_settled(edge), timeout_s=30)
        node = await edge.create_node(edge.root_id, "device")

        async def on_cloud() -> bool:
            try:
                return bool(await cloud.nodes("all", node))
            except RequestFailed:  # not there yet
                return False

        await until(on_cloud, timeout_s=30)
        await asyncio.gather(
            *(edge.send_points(node, [p]) for p in points), *(cloud.send_points(node, [p]) for p in shuffled)
        )
        distinct = {(p.type, p.key, p.time, p.origin, encode_value(p.value), p.tombstone) for p in points}
        expected = (winners(points), sorted(distinct))

        async def converged() -> bool:
            return await _sync_state(edge, node) == expected == await _sync_state(cloud, node)

        await until(converged, timeout_s=30)
    finally:
        await edge.close()
        await cloud.close()
