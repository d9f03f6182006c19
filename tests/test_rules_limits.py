"""Limits of node configs and of rule loops, against a real `siot serve` (issue 12, items 1 and 4).

A node's bad config is that node's problem: out-of-range durations become `error` points on the
node that holds them, the rules created with them load and work, and the daemon restarts with the
bad nodes still in the tree. A rule that re-triggers itself (directly, or A -> B -> A) is paused
with a `loop:` error while other clients' writes are still answered, and it recovers once the
cause is fixed. Bounds and the loop limit: docs/limits.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from rules_support import make_rule, points_of, wait_cleared, wait_point
from support import SiotProcess, connected, serve_config, without_rules

from siot.app import App
from siot.client import Client
from siot.nodes.config import MAX_DURATION_S, try_decode_config
from siot.nodes.notify.config import MsgServiceConfig
from siot.nodes.rules import (
    ActionConfig,
    ConditionConfig,
    ManualClock,
    NodePoints,
    RollingStats,
    RuleConfig,
    RuleRuntime,
    build_rule,
)
from siot.nodes.rules import manager as rules_manager
from siot.nodes.rules.loops import LoopGuard
from siot.nodes.rules.manager import RulesManager
from siot.points import Point

LOOP_PREFIX = "loop:"


@asynccontextmanager
async def started(proc: SiotProcess) -> AsyncIterator[Client]:
    """Start the daemon (in a thread: `start()` runs its own event loop, and raises unless the
    daemon becomes ready) and connect to it."""
    await asyncio.to_thread(proc.start)
    async with connected(proc) as client:
        yield client


def is_error_about(*words: str) -> Any:
    return lambda v: isinstance(v, str) and all(w in v for w in words)


def is_loop_error(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(LOOP_PREFIX)


class Probe:
    """Acked writes from a second client while something else runs: each must be answered
    within the client's normal request timeout, or the write raises (RequestFailed) and so does
    the block. `answered` counts them."""

    def __init__(self, client: Client, node: str) -> None:
        self.client, self.node = client, node
        self.answered = 0
        self._done = asyncio.Event()

    async def _run(self) -> None:
        while not self._done.is_set():
            await self.client.send_points(self.node, [Point("probe", self.answered)])
            self.answered += 1
            await asyncio.sleep(0.01)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Probe]:
        task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._done.set()
            await task


@asynccontextmanager
async def probing(proc_url: str, node: str) -> AsyncIterator[Probe]:
    prober = await Client.connect(proc_url, reconnect_forever=False)
    try:
        async with Probe(prober, node).running() as probe:
            yield probe
    finally:
        await prober.close()


def url_of(client: Client) -> str:
    url = client.nc.connected_url
    assert url is not None
    return f"{url.scheme}://{url.netloc}"


async def make_rule_with(
    client: Client,
    rule_points: dict[str, Any],
    conditions: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    inactive_actions: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[str, list[str]]:
    """A rule under the root with points of its own (loopLimit, loopPause); returns the rule
    and its action ids (inactive ones last)."""
    rule = await client.create_node(client.root_id, "rule", points_of(rule_points))
    for cond in conditions:
        await client.create_node(rule, "condition", points_of(cond))
    acts = [await client.create_node(rule, "action", points_of(a)) for a in actions]
    acts += [await client.create_node(rule, "actionInactive", points_of(a)) for a in inactive_actions]
    return rule, acts


# (field, condition, words its error must have). Each duration of 1e300 s overflowed int64 as
# nanoseconds (OverflowError: the whole batch of rules loaded with it never loaded, and a
# restart failed); infinity is sent as text (the API's codec may refuse a non-finite float).
BAD_CONDITIONS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("timeout", {"conditionType": "offline", "timeout": 1e300}, ("out of range",)),
    ("window", {"conditionType": "anomaly", "pointType": "level", "window": 1e300}, ("out of range",)),
    ("minActive", {"pointType": "level", "operator": ">", "value": 5, "minActive": 1e300}, ("out of range",)),
    ("minInactive", {"pointType": "level", "operator": ">", "value": 5, "minInactive": "inf"}, ("finite",)),
    ("timeout", {"conditionType": "offline", "timeout": 0.001}, ("at least 1 s",)),
]


async def test_out_of_range_durations_are_error_points_and_the_rest_loads_across_restarts(
    tmp_path: Path,
) -> None:
    proc = SiotProcess(data_dir=tmp_path / "siot-data")
    bad: dict[str, tuple[str, ...]] = {}  # node id -> what its error must say
    good: list[str] = []  # the point types the working rules set on the target
    try:
        async with started(proc) as client:
            root = client.root_id
            sensor = await client.create_node(root, "device", [Point("description", "tank")])
            target = await client.create_node(root, "device", [Point("description", "alarms")])

            def follow(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                cond = {"nodeID": sensor, "pointType": "level", "operator": ">", "value": 5}
                return [cond], [
                    {"action": "setValue", "nodeID": target, "pointType": f"hit{n}", "value": "high"}
                ]

            # Good and bad rules interleaved and created back to back, so they load in batches.
            for n, (field, cond, words) in enumerate(BAD_CONDITIONS):
                conds, acts = follow(n)
                await make_rule(client, root, f"good {n}", conds, acts)
                good.append(f"hit{n}")
                _, (cond_id,), _ = await make_rule(
                    client, root, f"bad {field}", [{"nodeID": sensor, **cond}], acts
                )
                bad[cond_id] = (field, *words)
            # an action's repeatInterval of 1e300 s, and a rule whose other action still works
            conds, acts = follow(99)
            _, _, (bad_action, _) = await make_rule(
                client,
                root,
                "bad repeatInterval",
                conds,
                [{**acts[0], "pointType": "never", "repeatInterval": 1e300}, acts[0]],
            )
            bad[bad_action] = ("repeatInterval", "out of range")
            good.append("hit99")
            # other node clients: an archive node's retention, beyond any date
            archive = await client.create_node(
                root, "archive", [Point("subject", "limits.test"), Point("retentionDays", 1e300)]
            )
            bad[archive] = ("retentionDays", "out of range")

            for node, words in bad.items():
                await wait_point(client, node, "error", is_error_about(*words))
            await client.send_points(sensor, [Point("level", 9)])
            for ptype in good:
                await wait_point(client, target, ptype, lambda v: v == "high")
            assert (await client.get_node(target)).value("never") is None

        proc.stop()
        assert proc.proc is not None and proc.proc.returncode == 0

        # Restart with every bad node still in the tree: the daemon starts, reports them again
        # as WARNINGs naming them (not as ERRORs: the log guard checks), and the rest works.
        log_before = len(proc.log())
        async with started(proc) as client:
            await client.send_points(sensor, [Point("level", 1)])
            for ptype in good:
                await client.send_points(target, [Point(ptype, "reset")])
            await client.send_points(sensor, [Point("level", 9)])
            for ptype in good:
                await wait_point(client, target, ptype, lambda v: v == "high")
            for node, words in bad.items():
                assert is_error_about(*words)((await client.get_node(node)).value("error"))
            warnings = [line for line in proc.log()[log_before:].splitlines() if " WARNING " in line]
            for node in bad:
                assert any(node in line for line in warnings), f"no WARNING names {node}"
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


async def test_a_tiny_repeat_interval_is_refused_and_the_daemon_stays_responsive(siot: Client) -> None:
    root = siot.root_id
    sensor = await siot.create_node(root, "device", [Point("description", "pump")])
    target = await siot.create_node(root, "device", [Point("description", "horn")])
    rule, _, (tiny, sane) = await make_rule(
        siot,
        root,
        "pump running",
        [{"nodeID": sensor, "pointType": "run", "operator": ">", "value": 0}],
        [
            {
                "action": "setValue",
                "nodeID": target,
                "pointType": "flood",
                "value": 1,
                "repeatInterval": 1e-4,
            },
            {"action": "setValue", "nodeID": target, "pointType": "beep", "value": 1, "repeatInterval": 1},
        ],
    )
    await wait_point(siot, tiny, "error", is_error_about("repeatInterval", "at least 1 s"))
    async with probing(url_of(siot), sensor) as probe:
        await siot.send_points(sensor, [Point("run", 1)])
        first = await wait_point(siot, rule, "lastRun", lambda v: v > 0, key=sane)
        # the 1 s reminder comes; the refused action never runs; other writes are answered
        await wait_point(siot, rule, "lastRun", lambda v: v >= first + 1_000_000_000, key=sane)
    assert probe.answered > 0
    assert (await siot.get_node(target)).value("flood") is None


async def test_a_rule_that_flips_its_own_point_is_paused_with_a_loop_error(siot: Client) -> None:
    """`lamp.on = 0` -> set it to 1; inactive -> set it to 0: each write flips the rule again.
    Unbounded, this wrote thousands of points a second; the guard pauses the rule after
    `loopLimit` engine-caused transitions and runs in a second, while a probe write from another
    client is answered. Deleting the inactive action fixes it: the rule is re-armed and works."""
    root = siot.root_id
    lamp = await siot.create_node(root, "device", [Point("description", "lamp")])
    other = await siot.create_node(root, "device", [Point("description", "elsewhere")])
    set_on = {"action": "setValue", "nodeID": lamp, "pointType": "on"}
    rule, (_, off) = await make_rule_with(
        siot,
        {"description": "blinker", "loopLimit": 10},
        [{"nodeID": lamp, "pointType": "on", "operator": "=", "value": 0}],
        [{**set_on, "value": 1}],
        [{**set_on, "value": 0}],
    )
    async with probing(url_of(siot), other) as probe:
        await siot.send_points(lamp, [Point("on", 0)])
        error = await wait_point(siot, rule, "error", is_loop_error)
    assert probe.answered > 0
    assert "its own actions" in error and "loopLimit" in error
    # Paused: the lamp is no longer written (the default pause is 10 s).
    written = len(await siot.history(lamp, "on"))
    await asyncio.sleep(0.5)
    assert len(await siot.history(lamp, "on")) == written
    assert written < 50  # bounded: 10 per second allowed, a few more already under way

    await siot.delete_node(off, rule)  # the fix; a change of the rule's children re-arms it
    await wait_cleared(siot, rule, "error")
    await siot.send_points(lamp, [Point("on", 0)])
    await wait_point(siot, lamp, "on", lambda v: v == 1)
    await wait_point(siot, rule, "active", lambda v: v is False)
    assert (await siot.get_node(rule)).value("error") is None


async def test_a_chain_of_two_rules_is_paused_and_recovers_once_fixed(siot: Client) -> None:
    """A: x = 1 -> y = 1 (inactive: y = 0); B: y = 1 -> x = 0 (inactive: x = 1). Every write of
    one flips the other: A -> B -> A without end. One of them trips the guard (default limit),
    naming the other as the cause; other writes are answered meanwhile. Disabling B is the fix:
    A resumes after its pause and its loop error is deleted once it has run a pause without one."""
    root = siot.root_id
    box = await siot.create_node(root, "device", [Point("description", "box")])
    other = await siot.create_node(root, "device", [Point("description", "elsewhere")])

    async def rule_of(name: str, watch: str, when: int, write: str, value: int) -> str:
        set_write = {"action": "setValue", "nodeID": box, "pointType": write}
        rule, _ = await make_rule_with(
            siot,
            {"description": name, "loopPause": 1},
            [{"nodeID": box, "pointType": watch, "operator": "=", "value": when}],
            [{**set_write, "value": value}],
            [{**set_write, "value": 1 - value}],
        )
        return rule

    a = await rule_of("A", "x", 1, "y", 1)
    b = await rule_of("B", "y", 1, "x", 0)
    async with probing(url_of(siot), other) as probe:
        await siot.send_points(box, [Point("x", 1)])
        tripped, error = await first_loop_error(siot, [a, b])
    assert probe.answered > 0
    cause = b if tripped == a else a
    assert f"rule {cause}" in error and "limit of 20 per second" in error

    await siot.send_points(b, [Point("disabled", True)])
    for rule in (a, b):
        await wait_cleared(siot, rule, "error")
    # A works again, and alone: x = 1 -> y = 1, x = 0 -> y = 0
    await siot.send_points(box, [Point("x", 0)])
    await wait_point(siot, box, "y", lambda v: v == 0)
    await siot.send_points(box, [Point("x", 1)])
    await wait_point(siot, box, "y", lambda v: v == 1)
    assert (await siot.get_node(a)).value("error") is None


async def first_loop_error(client: Client, rules: list[str]) -> tuple[str, str]:
    """The first of `rules` to get a loop error, and the error."""
    waits = {asyncio.create_task(wait_point(client, r, "error", is_loop_error)): r for r in rules}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    task = done.pop()
    return waits[task], task.result()


async def test_an_exception_in_one_rule_is_its_error_and_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever raises while loading or evaluating one rule (faults injected into the engine;
    the daemon, NATS and SQLite are real) unloads that rule only, with an `error` point and a
    WARNING: the other rules load, and evaluate the very point that broke it. The broken rule
    is loaded again after RETRY_S (an injected clock here) and works once the cause is gone."""
    faults = {"on load": True, "on evaluation": False}

    def build(rule: NodePoints, *args: Any) -> Any:
        runtime, errors = build_rule(rule, *args)
        if faults["on load"] and runtime.config.description == "fails on load":
            raise RuntimeError("injected load fault")
        return runtime, errors

    evaluate = RuleRuntime.evaluate

    def evaluate_or_fail(self: RuleRuntime, now_ns: int) -> Any:
        if faults["on evaluation"] and self.config.description == "fails on evaluation":
            raise RuntimeError("injected evaluation fault")
        return evaluate(self, now_ns)

    monkeypatch.setattr(rules_manager, "build_rule", build)
    monkeypatch.setattr(RuleRuntime, "evaluate", evaluate_or_fail)
    clock = ManualClock(time.time_ns())
    async with (
        App(serve_config(tmp_path), node_clients=without_rules()) as app,
        await Client.connect(app.context.broker_url, reconnect_forever=False) as client,
    ):
        await client.load_root()
        root = client.root_id
        sensor = await client.create_node(root, "device", [Point("description", "tank")])
        target = await client.create_node(root, "device", [Point("description", "alarms")])
        rules = {}
        for name in ("fails on load", "good", "fails on evaluation"):
            rules[name], _, _ = await make_rule(
                client,
                root,
                name,
                [{"nodeID": sensor, "pointType": "level", "operator": ">", "value": 5}],
                [
                    {
                        "action": "setValue",
                        "nodeID": target,
                        "pointType": name.replace(" ", "_"),
                        "value": 1,
                    }
                ],
            )
        async with RulesManager(app.context.client, clock=clock):
            await wait_point(
                client, rules["fails on load"], "error", is_error_about("failed to load", "injected")
            )
            faults["on evaluation"] = True
            await client.send_points(sensor, [Point("level", 9)])
            await wait_point(
                client,
                rules["fails on evaluation"],
                "error",
                is_error_about("internal error", "injected"),
            )
            await wait_point(client, target, "good", lambda v: v == 1)  # the same point, evaluated

            faults.update({"on load": False, "on evaluation": False})
            clock.advance(rules_manager.RETRY_S)
            for name in ("fails on load", "fails on evaluation"):
                await wait_cleared(client, rules[name], "error")
                await wait_point(client, target, name.replace(" ", "_"), lambda v: v == 1)


# ---- the bounds and the guard themselves, without a daemon ----


@pytest.mark.parametrize(
    ("model", "field", "value", "ok"),
    [
        (ConditionConfig, "minActive", 0, True),
        (ConditionConfig, "minActive", MAX_DURATION_S, True),
        (ConditionConfig, "minActive", MAX_DURATION_S + 1, False),
        (ConditionConfig, "minActive", -1, False),
        (ConditionConfig, "minInactive", float("nan"), False),
        (ConditionConfig, "timeout", float("inf"), False),
        (ConditionConfig, "timeout", 1, True),
        (ConditionConfig, "timeout", 0.5, False),
        (ConditionConfig, "window", 1e300, False),
        (ConditionConfig, "threshold", float("inf"), False),
        (ConditionConfig, "minSamples", 10**6, False),
        (ActionConfig, "repeatInterval", 0, True),
        (ActionConfig, "repeatInterval", 1e-4, False),
        (ActionConfig, "repeatInterval", 1, True),
        (ActionConfig, "repeatInterval", "1e999", False),
        (RuleConfig, "loopLimit", 0, False),
        (RuleConfig, "loopLimit", 1000, True),
        (RuleConfig, "loopLimit", 1001, False),
        (RuleConfig, "loopPause", 0.5, False),
        (RuleConfig, "loopPause", 3600, True),
        (MsgServiceConfig, "timeout", 1e300, False),
        (MsgServiceConfig, "backoff", 301, False),
        (MsgServiceConfig, "backoff", 0, True),
    ],
)
def test_every_duration_is_bounded(model: type[Any], field: str, value: Any, ok: bool) -> None:
    base: dict[type[Any], list[Point]] = {
        ConditionConfig: [Point("pointType", "t"), Point("value", 1)],
        ActionConfig: [Point("action", "notify")],
        RuleConfig: [],
        MsgServiceConfig: [Point("service", "webhook"), Point("url", "http://x")],
    }
    config, error = try_decode_config(model, [*base[model], Point(field, value)])
    assert (config is not None) == ok, error
    if not ok:
        assert error.startswith(f"{field}:")


def test_the_loop_guard_counts_per_second_and_pauses() -> None:
    guard = LoopGuard()
    s = 1_000_000_000
    for _ in range(5):
        assert guard.admit(0, 10, "a")
        guard.record(2)  # a transition and an action run
    assert not guard.admit(s // 2, 10, "b")  # 10 in the same second: the next one trips
    assert guard.causes == {"a", "b"}
    assert guard.trip(s // 2, 100 * s, 10) == 0.5
    assert guard.deadline_ns() == 110 * s
    guard.resume(110 * s, 10)
    assert guard.deadline_ns() == 120 * s  # the error is deleted a pause later
    assert guard.admit(2 * s, 10, "a")  # a new second, a new count


def test_anomaly_statistics_keep_a_bounded_number_of_samples() -> None:
    stats = RollingStats(window_ns=10**18, max_samples=100)
    for i in range(1000):
        stats.add(i, float(i % 7))
    assert len(stats) == 100
    exact = [float(i % 7) for i in range(900, 1000)]
    mean = sum(exact) / len(exact)
    assert stats.total / 100 + stats.shift == pytest.approx(mean)
