"""`siot bench rules`: latency from a point's publish to the commit of the action it triggers.

Setup: N rules, each watching its own sensor (`level > 0.5`) with a setValue action
(`out = true`) and a setValue actionInactive (`out = false`). The sensors are fed values that
alternate high/low, so every point flips its rule and produces exactly one action write. Points
are published open-loop at --rate (no ack, the way devices publish), spread over the sensors;
the bench watches the committed fan-out of the targets. Pairing is exact: a rule's actions are
written in the order of its transitions, and each publish flips the rule, so the k-th publish to
a sensor must produce the k-th `out` write of its target, with the value that publish implies
(true after a high value, false after a low one). A write is paired with the oldest unanswered
publish of its value; older publishes of the other value that were skipped count as lost
actions, and a write with no publish to pair (a duplicate) is counted too.

Beside it, in the same run: the raw nats-py request/reply round trip (one at a time) to an
in-process responder on the same server — the floor any NATS round trip pays on this machine.
The measured path holds two of them plus two SQLite commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from siot import subjects
from siot.client import Client
from siot.cmd.bench import Instance, _run, connect_when_ready, own_instance
from siot.cmd.common import dumps
from siot.codec import decode_trusted_points, encode
from siot.points import Point

DEFAULT_RULES = 100
DEFAULT_RATE = 1_000
DEFAULT_SECONDS = 10.0
TARGET_P99_MS = 20.0
RAW_SECONDS = 1.0
WARMUP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
TICK_S = 0.005


@dataclass(slots=True)
class RuleSet:
    sensors: list[str]
    targets: dict[str, int]  # target node -> rule index
    group: str


async def make_rules(client: Client, count: int) -> RuleSet:
    """Create a group under the root holding `count` sensor/target/rule triples."""
    group = await client.create_node(client.root_id, "group", [Point("description", "bench rules")])
    sensors, targets = [], {}
    for i in range(count):
        sensor = await client.create_node(group, "device", [Point("description", f"bench sensor {i}")])
        target = await client.create_node(group, "device", [Point("description", f"bench target {i}")])
        rule = await client.create_node(group, "rule", [Point("description", f"bench rule {i}")])
        condition = [
            Point("nodeID", sensor),
            Point("pointType", "level"),
            Point("operator", ">"),
            Point("value", 0.5),
        ]
        await client.create_node(rule, "condition", condition)
        for node_type, value in (("action", True), ("actionInactive", False)):
            points = [
                Point("action", "setValue"),
                Point("nodeID", target),
                Point("pointType", "out"),
                Point("value", value),
            ]
            await client.create_node(rule, node_type, points)
        sensors.append(sensor)
        targets[target] = i
    return RuleSet(sensors, targets, group)


class Pairing:
    """Matches committed `out` writes to publishes, per rule, in order and by value."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.pending: list[deque[tuple[bool, int]]] = [deque() for _ in rules.sensors]
        self.latencies_ns: list[int] = []
        self.answered = 0
        self.lost = 0
        self.duplicates = 0
        self.expected = 0
        self.all_answered = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        index = self.rules.targets.get(tokens[2]) if len(tokens) == 3 else None
        if index is None:
            return
        now = time.perf_counter_ns()
        for point in decode_trusted_points(msg.data):
            if point.type == "out":
                self._answer(index, point.value is True, now)
        if self.answered + self.lost >= self.expected:
            self.all_answered.set()

    def _answer(self, index: int, value: bool, now_ns: int) -> None:
        queue = self.pending[index]
        while queue and queue[0][0] != value:
            queue.popleft()  # its action never came: the next write already answers a later one
            self.lost += 1
        if not queue:
            self.duplicates += 1
            return
        _, sent_ns = queue.popleft()
        self.answered += 1
        if sent_ns:  # 0 marks a warm-up publish, not measured
            self.latencies_ns.append(now_ns - sent_ns)

    def expect(self, index: int, high: bool, sent_ns: int) -> None:
        self.pending[index].append((high, sent_ns))
        self.expected += 1
        self.all_answered.clear()


async def raw_request_rate(nc: NATS, seconds: float) -> tuple[float, float]:
    """Requests/s and p50 round trip (ms) of sequential nats-py requests to a trivial responder."""
    subject = f"bench.echo.{uuid.uuid4().hex}"

    async def echo(msg: Msg) -> None:
        await msg.respond(b"ok")

    sub = await nc.subscribe(subject, cb=echo)
    try:
        rtts = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter_ns()
            await nc.request(subject, b"ping", timeout=5)
            rtts.append(time.perf_counter_ns() - t0)
        elapsed = time.perf_counter() - start
    finally:
        await sub.unsubscribe()
    rtts.sort()
    return len(rtts) / elapsed, rtts[len(rtts) // 2] / 1e6


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), None when unknown. CPU per
    point is the figure that stays comparable when other jobs load the machine."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


async def rules_main(
    instance: Instance, token: str, rule_count: int, rate: float, seconds: float
) -> dict[str, Any]:
    client = await connect_when_ready(instance, token)
    nc = client.nc
    try:
        setup_start = time.perf_counter()
        rules = await make_rules(client, rule_count)
        setup_s = time.perf_counter() - setup_start
        pairing = Pairing(rules)
        # Only the targets' own fan-out (`up.<target>.<target>`): a subscription to the whole
        # group would also bring every sensor, condition and rule write into this process, whose
        # own load then shows up as latency.
        subs = [
            await nc.subscribe(subjects.up(target, target), cb=pairing.on_msg, pending_msgs_limit=1_000_000)
            for target in rules.targets
        ]
        await nc.flush()
        high = [True] * rule_count
        # Warm-up: every rule must answer once (it may still be loading when its first point lands).
        for index, sensor in enumerate(rules.sensors):
            pairing.expect(index, True, 0)
            await nc.publish(subjects.points(sensor), encode([Point("level", 1.0).to_wire()]))
        await nc.flush()
        try:
            async with asyncio.timeout(WARMUP_TIMEOUT_S):
                await pairing.all_answered.wait()
        except TimeoutError:
            raise click.ClickException(
                f"only {pairing.answered} of {rule_count} rules answered within {WARMUP_TIMEOUT_S:.0f} s: "
                "do the rules have error points (siot tree)?"
            ) from None
        total = int(rate * seconds)
        payloads = [encode([Point("level", v).to_wire()]) for v in (0.0, 1.0)]
        sent = 0
        stats_start = await client.stats()
        cpu_start = cpu_s(instance.pid)
        start = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                index = sent % rule_count
                high[index] = not high[index]
                pairing.expect(index, high[index], time.perf_counter_ns())
                await nc.publish(subjects.points(rules.sensors[index]), payloads[high[index]])
                sent += 1
            await nc.flush()
            await asyncio.sleep(TICK_S)
        send_s = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await pairing.all_answered.wait()
        cpu_end = cpu_s(instance.pid)
        stats_end = await client.stats()
        for sub in subs:
            await sub.unsubscribe()
        raw_rps, raw_p50_ms = await raw_request_rate(nc, RAW_SECONDS)
        await client.delete_node(rules.group, client.root_id)
    finally:
        await client.close()
    ordered = sorted(pairing.latencies_ns)
    cpu_us = None
    if cpu_start is not None and cpu_end is not None:
        cpu_us = round((cpu_end - cpu_start) / total * 1e6)
    commits = stats_end["commits"] - stats_start["commits"]
    writes = stats_end["committedWrites"] - stats_start["committedWrites"]
    return {
        "rules": rule_count,
        "points": total,
        "rate_points_s": round(total / send_s, 1),
        "actions_committed": len(ordered),
        "lost": pairing.lost,
        "unanswered": sum(len(q) for q in pairing.pending),
        "duplicates": pairing.duplicates,
        "p50_ms": round(percentile_ms(ordered, 0.50), 2),
        "p99_ms": round(percentile_ms(ordered, 0.99), 2),
        "max_ms": round(ordered[-1] / 1e6, 2) if ordered else None,
        "target_p99_ms": TARGET_P99_MS,
        "daemon_cpu_us_per_point": cpu_us,
        "commits_per_point": round(commits / total, 2),
        "writes_per_commit": round(writes / commits, 2) if commits else None,
        "raw_request_s": round(raw_rps),
        "raw_request_p50_ms": round(raw_p50_ms, 3),
        "setup_s": round(setup_s, 1),
    }


def print_report(r: dict[str, Any]) -> None:
    verdict = "ok" if r["p99_ms"] <= r["target_p99_ms"] else "OVER TARGET"
    click.echo(f"rules: {r['rules']}, {r['points']} points at {r['rate_points_s']:.0f} points/s")
    click.echo(
        f"publish -> action point committed: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
        f"max {r['max_ms']} ms  (target p99 <= {r['target_p99_ms']:.0f} ms: {verdict})"
    )
    click.echo(
        f"actions committed: {r['actions_committed']} of {r['points']}, lost: {r['lost']}, "
        f"unanswered at the end: {r['unanswered']}, duplicates: {r['duplicates']}"
    )
    if r["daemon_cpu_us_per_point"] is not None:
        click.echo(f"siot serve CPU (user+sys) per point: {r['daemon_cpu_us_per_point']} µs")
    click.echo(
        f"SQLite transactions per point: {r['commits_per_point']}, writes per transaction: "
        f"{r['writes_per_commit']}"
    )
    click.echo(
        f"raw nats-py request/reply, same run: {r['raw_request_s']} req/s, "
        f"p50 {r['raw_request_p50_ms']:.3f} ms"
    )


@click.command(name="rules")
@click.option(
    "--url", envvar="SIOT_URL", default=None, help="Instance to measure (default: start one in a temp dir)."
)
@click.option("--token", envvar="SIOT_TOKEN", default="", help="NATS auth token.")
@click.option(
    "--pid",
    envvar="SIOT_BENCH_PID",
    type=int,
    default=None,
    help="Pid of the --url instance's siot serve, to report its CPU per point.",
)
@click.option(
    "--rules",
    "rule_count",
    envvar="SIOT_BENCH_RULES",
    type=int,
    default=DEFAULT_RULES,
    show_default=True,
    help="Rules to create.",
)
@click.option(
    "--rate",
    envvar="SIOT_BENCH_RATE",
    type=float,
    default=DEFAULT_RATE,
    show_default=True,
    help="Points published per second.",
)
@click.option(
    "--seconds",
    envvar="SIOT_BENCH_SECONDS",
    type=float,
    default=DEFAULT_SECONDS,
    show_default=True,
    help="Length of the measured run.",
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def bench_rules(
    url: str | None,
    token: str,
    pid: int | None,
    rule_count: int,
    rate: float,
    seconds: float,
    json_: bool,
) -> None:
    """p50/p99 from a point's publish to its rule action's point committed, beside the raw
    nats-py request round trip measured in the same run.

    Creates --rules rules (each: sensor level > 0.5 -> setValue on a target) in a group under the
    root, publishes alternating values at --rate, then deletes the group. Without --url it
    starts `siot serve` in a temp dir and removes it after.

    Example usage:

    \b
        siot bench rules
        siot bench rules --rules 100 --rate 1000 --seconds 10 --json
    """
    if rule_count < 1 or rate <= 0 or seconds <= 0:
        raise click.ClickException("--rules, --rate and --seconds must be positive")
    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(own_instance()) if url is None else Instance(url, pid)
        report = _run(rules_main(instance, token, rule_count, rate, seconds))
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)
