"""Rules on an injected clock: a real daemon (in this process, with its own nats-server and
SQLite file) without its rules node client, and a `RulesManager` in the test on the daemon's
in-process client and a `ManualClock`, so DST nights, offline timeouts, holds and reminders take
no wall time. Restarting the manager is restarting the rules engine: its state comes back from the
daemon's store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from rules_support import make_rule, wait_point
from support import serve_config, without_rules

from siot.app import App
from siot.bus import Scope
from siot.client import Client
from siot.nodes.rules import Clock, ManualClock
from siot.nodes.rules.manager import RulesManager
from siot.points import Point

S = 1_000_000_000
BERLIN = "Europe/Berlin"


def berlin_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(BERLIN)).timestamp()) * S


Engine = Callable[[Clock], RulesManager]


@pytest.fixture
async def bare_app(tmp_path: Path) -> AsyncIterator[App]:
    async with App(serve_config(tmp_path), node_clients=without_rules()) as app:
        yield app


@pytest.fixture
async def bare(bare_app: App) -> AsyncIterator[Client]:
    async with await Client.connect(bare_app.context.broker_url, reconnect_forever=False) as client:
        await client.load_root()
        yield client


@pytest.fixture
def engine(bare_app: App) -> Engine:
    """A rules engine on the daemon's in-process client, on the given clock."""
    return lambda clock: RulesManager(bare_app.context.client, clock=clock)


async def test_schedule_across_spring_forward(bare: Client, engine: Engine) -> None:
    """22:00-06:00 Berlin over the night the clocks go forward: on at 22:00 CET, off at 06:00
    CEST, seven hours later."""
    clock = ManualClock(berlin_ns("2024-03-30T21:00:00"))
    pump = await bare.create_node(bare.root_id, "device")
    rule, _, _ = await make_rule(
        bare,
        bare.root_id,
        "night pump off",
        [{"conditionType": "schedule", "start": "22:00", "end": "06:00", "tz": BERLIN}],
        [{"action": "setValue", "nodeID": pump, "pointType": "run", "value": False}],
        [{"action": "setValue", "nodeID": pump, "pointType": "run", "value": True}],
    )
    async with engine(clock):
        start = berlin_ns("2024-03-30T22:00:00")
        clock.set(start)
        assert await wait_point(bare, rule, "activeChanged", lambda v: v == start) == start
        await wait_point(bare, pump, "run", lambda v: v is False)
        end = berlin_ns("2024-03-31T06:00:00")
        assert end - start == 7 * 3600 * S
        clock.set(end)
        await wait_point(bare, rule, "activeChanged", lambda v: v == end)
        await wait_point(bare, pump, "run", lambda v: v is True)


async def test_offline_after_silence_and_back_online(bare: Client, engine: Engine) -> None:
    clock = ManualClock(time.time_ns())
    sensor = await bare.create_node(bare.root_id, "device", [Point("description", "edge 1")])
    probe = await bare.create_node(sensor, "device")  # a device under the watched node counts
    panel = await bare.create_node(bare.root_id, "device")
    await bare.send_points(probe, [Point("temp", 20)])
    rule, _, _ = await make_rule(
        bare,
        bare.root_id,
        "edge offline",
        [{"conditionType": "offline", "nodeID": sensor, "timeout": 300}],
        [{"action": "setValue", "nodeID": panel, "pointType": "edge", "value": "offline"}],
        [{"action": "setValue", "nodeID": panel, "pointType": "edge", "value": "online"}],
    )
    async with engine(clock):
        clock.advance(301)
        await wait_point(bare, panel, "edge", lambda v: v == "offline")
        await bare.send_points(probe, [Point("temp", 21)])
        await wait_point(bare, panel, "edge", lambda v: v == "online")
        await wait_point(bare, rule, "active", lambda v: v is False)


async def test_restart_in_the_middle_of_a_hold(bare: Client, engine: Engine) -> None:
    clock = ManualClock(time.time_ns())
    sensor = await bare.create_node(bare.root_id, "device")
    valve = await bare.create_node(bare.root_id, "device")
    rule, (cond,), _ = await make_rule(
        bare,
        bare.root_id,
        "dry for a minute",
        [{"nodeID": sensor, "pointType": "humidity", "operator": "<", "value": 35, "minActive": 60}],
        [{"action": "setValue", "nodeID": valve, "pointType": "open", "value": True}],
    )
    async with engine(clock):
        await bare.send_points(sensor, [Point("humidity", 30)])
        deadline = await wait_point(bare, cond, "holdUntil", lambda v: v > 0)
    assert deadline == clock.now_ns() + 60 * S
    clock.advance(40)  # the engine is down for 40 s of the hold
    async with engine(clock):
        clock.advance(20)  # the original deadline, not 60 s after the restart
        await wait_point(bare, valve, "open", lambda v: v is True)
        assert await wait_point(bare, rule, "activeChanged", lambda v: v > 0) == deadline


async def test_restart_while_active_no_refire_no_lost_reminder(bare: Client, engine: Engine) -> None:
    clock = ManualClock(time.time_ns())
    sensor = await bare.create_node(bare.root_id, "device")
    siren = await bare.create_node(bare.root_id, "device")
    rule, _, (action,) = await make_rule(
        bare,
        bare.root_id,
        "flood",
        [{"nodeID": sensor, "pointType": "water", "valueType": "onOff", "operator": "on"}],
        [{"action": "setValue", "nodeID": siren, "pointType": "beep", "value": 1, "repeatInterval": 600}],
    )
    async with engine(clock):
        await bare.send_points(sensor, [Point("water", True)])
        first_run = await wait_point(bare, rule, "lastRun", lambda v: v > 0, key=action)
    clock.advance(300)
    async with engine(clock):
        clock.advance(300)  # the reminder is due 600 s after the first run, across the restart
        await wait_point(bare, rule, "lastRun", lambda v: v == first_run + 600 * S, key=action)
    beeps = await bare.history(siren, "beep")
    assert len(beeps) == 2  # the first run and the reminder; the restart fired nothing


async def test_reload_keeps_the_subtree_watch_and_delete_releases_it(bare: Client, engine: Engine) -> None:
    """A reload that dropped and re-made its subtree watch could miss a point committed in
    between (with NATS subscriptions this made the blank-nodeID test flaky once). A reload keeps
    the watch; deleting the rule releases it."""
    farm = await bare.create_node(bare.root_id, "group")
    sensor = await bare.create_node(farm, "device")
    alarms = await bare.create_node(bare.root_id, "device")
    rule, _, _ = await make_rule(
        bare,
        farm,
        "any dry probe",
        [{"pointType": "humidity", "operator": "<", "value": 35}],
        [{"action": "setValue", "nodeID": alarms, "pointType": "dry", "value": True}],
    )
    async with engine(ManualClock(time.time_ns())) as manager:
        watch = manager.watching.current[farm, Scope.SUBTREE]
        await bare.send_points(rule, [Point("description", "any probe below 35")])
        await until(lambda: manager.rules[rule].config.description == "any probe below 35")
        assert manager.watching.current[farm, Scope.SUBTREE] is watch
        await bare.send_points(sensor, [Point("humidity", 20)])
        await wait_point(bare, alarms, "dry", lambda v: v is True)
        await bare.delete_node(rule, farm)
        await until(lambda: rule not in manager.rules)
        assert (farm, Scope.SUBTREE) not in manager.watching.current


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll the manager's in-memory state, which has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_watches_only_what_the_rules_depend_on(bare: Client, engine: Engine) -> None:
    """Edges under the root, each rule's subtree, each named node, each watched subtree: other
    traffic never reaches the engine. A deleted rule's subjects go; an undeleted rule (whose edge
    change carries no nodeType) comes back and runs."""
    root = bare.root_id
    sensor = await bare.create_node(root, "device")
    farm = await bare.create_node(root, "group")
    await bare.create_node(root, "device")  # nothing watches it
    alarms = await bare.create_node(root, "device")
    named, _, _ = await make_rule(
        bare,
        root,
        "sensor dry",
        [{"nodeID": sensor, "pointType": "humidity", "operator": "<", "value": 35}],
        [{"action": "setValue", "nodeID": alarms, "pointType": "dry", "value": True}],
    )
    anywhere, _, _ = await make_rule(
        bare, farm, "any probe dry", [{"pointType": "humidity", "operator": "<", "value": 35}]
    )
    async with engine(ManualClock(time.time_ns())) as manager:
        edges = (root, Scope.EDGES)
        expected = {edges, *((n, Scope.SUBTREE) for n in (named, anywhere, farm)), (sensor, Scope.OWN)}
        assert set(manager.watching.current) == expected
        await bare.delete_node(named, root)
        await until(lambda: named not in manager.rules)
        assert set(manager.watching.current) == {edges, (anywhere, Scope.SUBTREE), (farm, Scope.SUBTREE)}
        await bare.undelete_node(named, root)
        await until(lambda: named in manager.rules)
        assert set(manager.watching.current) == expected
        await bare.send_points(sensor, [Point("humidity", 20)])
        await wait_point(bare, alarms, "dry", lambda v: v is True)


async def test_rules_created_while_the_engine_starts_all_run(bare: Client, engine: Engine) -> None:
    """Rules created while the manager reads the tree reach it through the edge subscription or
    the read (or both); none may be forgotten in between."""
    root = bare.root_id
    sensor = await bare.create_node(root, "device")
    manager = engine(ManualClock(time.time_ns()))
    starting = asyncio.create_task(manager.__aenter__())
    targets = []
    for i in range(20):
        target = await bare.create_node(root, "device")
        await make_rule(
            bare,
            root,
            f"rule {i}",
            [{"nodeID": sensor, "pointType": "humidity", "operator": "<", "value": 35}],
            [{"action": "setValue", "nodeID": target, "pointType": "dry", "value": True}],
        )
        targets.append(target)
    await starting
    try:
        await bare.send_points(sensor, [Point("humidity", 20)])
        for target in targets:
            await wait_point(bare, target, "dry", lambda v: v is True)
    finally:
        await manager.__aexit__(None, None, None)
