"""Fault scenarios of an edge syncing to a cloud, each side a real `siot serve` with its own
nats-server and SQLite: SIGKILL of either side during catch-up, and the cloud killed and restarted
three times while the edge ingests. See chaos_scenarios.py for the shape of a scenario."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from siot.client import Client
from siot.cmd.chaos_support import Chaos, Daemon, close_quietly, connect, within
from siot.codec import encode
from siot.errors import RequestFailed, SiotError
from siot.points import Point
from siot.sync import protocol

SETTLE_TIMEOUT_S = 60.0


async def upstream_peer(edge: Client) -> dict[str, Any] | None:
    """The edge's upstream peer record (None while its sync service is starting)."""
    try:
        status = await edge.request(protocol.STATUS, encode({}))
    except RequestFailed:
        return None
    return next((p for p in status["peers"] if p["role"] == "upstream"), None)


async def settled_since(edge: Client, since_ns: int) -> dict[str, Any] | None:
    """The upstream peer once connected, with nothing left to ship, and with digests that matched
    in a verification after `since_ns`: both copies of the edge's subtree are the same."""
    peer = await upstream_peer(edge)
    if peer and peer["state"] == "connected" and peer["backlog"] == 0:
        if peer["digestOk"] and peer["digestTime"] > since_ns:
            return peer
    return None


async def seq_reached(client: Client, seq: float) -> int | None:
    """The instance's last log seq once it is at least `seq`."""
    last = (await client.stats())["lastSeq"]
    return last if last >= seq else None


async def link_state(edge: Client, wanted: str) -> bool:
    peer = await upstream_peer(edge)
    return peer is not None and peer["state"] == wanted


async def set_disabled(edge: Client, disabled: bool) -> float:
    """Switch the edge's sync link off or on with its sync node's `disabled` point; the seconds
    until its status says so."""
    sync_node = (await edge.children(edge.root_id, type="sync"))[0].id
    start = time.monotonic()
    await edge.send_points(sync_node, [Point("disabled", disabled)])
    wanted = "disabled" if disabled else "connected"
    await within(SETTLE_TIMEOUT_S, partial(link_state, edge, wanted), f"the sync link {wanted}")
    return time.monotonic() - start


@dataclass
class Pair:
    """A cloud and an edge started with `--upstream` the cloud, and a client of each."""

    cloud: Daemon
    edge: Daemon
    cloud_client: Client | None = None
    edge_client: Client | None = None

    @classmethod
    async def start(cls, chaos: Chaos) -> Pair:
        cloud = chaos.daemon("cloud", instance_id="cloud")
        edge = chaos.daemon("edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
        pair = cls(cloud, edge)
        await chaos.start(cloud)
        await chaos.start(edge)
        await pair.connect()
        await within(SETTLE_TIMEOUT_S, lambda: settled_since(pair.e, 0), "the first sync")
        return pair

    async def connect(self) -> None:
        if self.cloud_client is None:
            self.cloud_client = await connect(self.cloud)
        if self.edge_client is None:
            self.edge_client = await connect(self.edge)

    @property
    def c(self) -> Client:
        assert self.cloud_client is not None
        return self.cloud_client

    @property
    def e(self) -> Client:
        assert self.edge_client is not None
        return self.edge_client

    async def drop_client(self, daemon: Daemon) -> None:
        if daemon is self.cloud and self.cloud_client is not None:
            await close_quietly(self.cloud_client)
            self.cloud_client = None
        if daemon is self.edge and self.edge_client is not None:
            await close_quietly(self.edge_client)
            self.edge_client = None

    async def close(self) -> None:
        await close_quietly(*(c for c in (self.cloud_client, self.edge_client) if c is not None))


async def history_times(client: Client, node: str, ptype: str) -> list[int]:
    return [p.time for p in await client.history(node, ptype, limit=1_000_000)]


# ---- SIGKILL during catch-up ----

BACKLOG_SENSORS = 10
BACKLOG_PER_SENSOR = 1_000  # 10,000 readings a round, written while the link is off
BACKLOG_BATCH = 500


async def sync_kill_edge(chaos: Chaos, rounds: int) -> None:
    """`sync_catch_up_kill` with the edge killed."""
    await sync_catch_up_kill(chaos, rounds, "edge")


async def sync_kill_cloud(chaos: Chaos, rounds: int) -> None:
    """`sync_catch_up_kill` with the cloud killed."""
    await sync_catch_up_kill(chaos, rounds, "cloud")


async def sync_catch_up_kill(chaos: Chaos, rounds: int, side: str) -> None:
    """Each round: the cloud is SIGKILLed (an outage) and the edge stores a backlog of 10,000
    readings (acked); the cloud comes back, the edge attaches and catches up, and once a random
    share of the backlog has reached the cloud, `side` is SIGKILLed and restarted. The two must
    converge (backlog 0, digests equal) and the cloud's history must hold every reading of the
    backlog exactly once (so must the edge's)."""
    pair = await Pair.start(chaos)
    expected: dict[str, list[int]] = {}
    rows = BACKLOG_SENSORS * BACKLOG_PER_SENSOR
    try:
        for trial in range(rounds):
            base = (await pair.c.stats())["lastSeq"]
            await pair.drop_client(pair.cloud)
            await chaos.kill(pair.cloud)
            t0 = time.time_ns()
            sensors = [await pair.e.create_node(pair.e.root_id, "device") for _ in range(BACKLOG_SENSORS)]
            for sensor in sensors:
                times = [t0 + i * 1_000 for i in range(BACKLOG_PER_SENSOR)]
                for first in range(0, len(times), BACKLOG_BATCH):
                    batch = times[first : first + BACKLOG_BATCH]
                    await pair.e.send_points(sensor, [Point("temp", float(t - t0), time=t) for t in batch])
                expected[sensor] = times
            chaos.tally.acked += rows
            goal = base + chaos.rng.uniform(0.05, 0.8) * rows
            await chaos.start(pair.cloud)
            await pair.connect()
            seq = await within(
                SETTLE_TIMEOUT_S, partial(seq_reached, pair.c, goal), "the backlog arriving", poll_s=0.002
            )
            arrived = (seq - base) / rows
            chaos.tally.figures["killed at <=50% of the backlog"] += arrived <= 0.5
            chaos.tally.figures["killed at >50% of the backlog"] += 0.5 < arrived < 1
            chaos.tally.figures["killed after the backlog arrived"] += arrived >= 1
            victim = pair.edge if side == "edge" else pair.cloud
            await pair.drop_client(victim)
            await chaos.kill(victim)
            if side == "cloud":
                await asyncio.sleep(chaos.rng.uniform(0, 1))
            restarted_ns = time.time_ns()
            await chaos.start(victim)
            await pair.connect()
            await within(SETTLE_TIMEOUT_S, partial(settled_since, pair.e, restarted_ns), "convergence")
            await check_history(chaos, pair, {s: expected[s] for s in sensors}, f"round {trial}")
            chaos.tally.trials += 1
        await check_history(chaos, pair, expected, "at the end")  # earlier rounds untouched
        await pair.close()
        await chaos.stop(pair.edge)
        await chaos.stop(pair.cloud)
    finally:
        await pair.close()


async def check_history(chaos: Chaos, pair: Pair, expected: dict[str, list[int]], trial: str) -> None:
    for sensor, times in expected.items():
        for name, client in (("cloud", pair.c), ("edge", pair.e)):
            got = await history_times(client, sensor, "temp")
            chaos.check_kept(f"{trial}, {name}", set(times), set(got), "readings")
            if len(got) != len(set(got)):
                chaos.fail(f"{trial}: {len(got) - len(set(got))} duplicate readings in the {name}'s history")


# ---- the cloud killed and restarted while the edge ingests ----

STEADY_RATE = 100  # edge writes a second
EDGE_TIMEOUT_S = 5.0
CLOUD_KILLS = 3


@dataclass
class SteadyWriter:
    """Acked single-point writes to the edge at a steady rate; each request is sent on time
    whether or not earlier ones were answered, so a stalled API shows as latency."""

    client: Client
    node: str
    rate: float
    acked: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0
    _task: asyncio.Task[None] | None = None
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> SteadyWriter:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            n += 1
            task = asyncio.create_task(self._send(n))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))

    async def _send(self, value: int) -> None:
        sent = time.monotonic()
        try:
            await self.client.send_points(self.node, [Point("seq", value)])
        except SiotError as exc:
            self.failed.append(f"write {value} after {time.monotonic() - sent:.1f} s: {exc}")
            return
        self.max_latency_s = max(self.max_latency_s, time.monotonic() - sent)
        self.acked.append(value)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._pending, return_exceptions=True)  # every request has its answer


async def cloud_restarts(chaos: Chaos, rounds: int) -> None:
    """Each round: the edge takes acked writes at a steady rate on its local API while the cloud
    is SIGKILLed and restarted three times. Every edge write must be answered within the client's
    timeout (5 s) with ok, and every acked write must reach the cloud's history, once."""
    pair = await Pair.start(chaos)
    try:
        edge = await connect(pair.edge, timeout_s=EDGE_TIMEOUT_S)
        for trial in range(rounds):
            sensor = await edge.create_node(edge.root_id, "device")
            writer = SteadyWriter(edge, sensor, STEADY_RATE).start()
            for _ in range(CLOUD_KILLS):
                await asyncio.sleep(chaos.rng.uniform(0.2, 1.0))
                await pair.drop_client(pair.cloud)
                await chaos.kill(pair.cloud)
                await asyncio.sleep(chaos.rng.uniform(0.1, 1.0))
                restarted_ns = time.time_ns()
                await chaos.start(pair.cloud)
            await asyncio.sleep(0.5)
            await writer.stop()
            await pair.connect()
            # digests are compared once the edge has caught up after it reconnected
            await within(SETTLE_TIMEOUT_S, partial(settled_since, pair.e, restarted_ns), "convergence")
            chaos.tally.trials += 1
            chaos.tally.acked += len(writer.acked)
            chaos.tally.figures["edge max latency ms"] = max(
                chaos.tally.figures["edge max latency ms"], round(writer.max_latency_s * 1000)
            )
            for failure in writer.failed[:5]:
                chaos.fail(f"round {trial}: the edge's API failed a write: {failure}")
            if len(writer.failed) > 5:
                chaos.fail(f"round {trial}: ... {len(writer.failed) - 5} more failed edge writes")
            values = [p.value for p in await pair.c.history(sensor, "seq", limit=1_000_000)]
            chaos.check_kept(f"round {trial}", set(writer.acked), set(values), "edge writes")
            if len(values) != len(set(values)):
                chaos.fail(
                    f"round {trial}: {len(values) - len(set(values))} duplicates in the cloud's history"
                )
        await close_quietly(edge)
        await pair.close()
        await chaos.stop(pair.edge)
        await chaos.stop(pair.cloud)
    finally:
        await pair.close()


# ---- the sync link switched off and on ----

LINK_STOP_LIMIT_S = 2.0


async def sync_disable(chaos: Chaos, rounds: int) -> None:
    """Each round: the edge's sync node is set `disabled` (the link must close within 2 s; the
    link gives up on itself after 10 s), the edge stores readings while the link is off, the
    node is enabled again: the two must converge and the cloud's history hold every reading."""
    pair = await Pair.start(chaos)
    try:
        for trial in range(rounds):
            sensor = await pair.e.create_node(pair.e.root_id, "device")
            # right after the edge's write of the sensor, while the link ships it
            await asyncio.sleep(chaos.rng.uniform(0, 0.01))
            stop_s = await set_disabled(pair.e, True)
            chaos.tally.figures["link stop max ms"] = max(
                chaos.tally.figures["link stop max ms"], round(stop_s * 1000)
            )
            if stop_s > LINK_STOP_LIMIT_S:
                chaos.fail(f"round {trial}: the sync link took {stop_s:.1f} s to stop")
            t0 = time.time_ns()
            times = [t0 + i * 1_000 for i in range(100)]
            await pair.e.send_points(sensor, [Point("temp", 1.0, time=t) for t in times])
            chaos.tally.acked += len(times)
            enabled_ns = time.time_ns()
            await set_disabled(pair.e, False)
            await within(SETTLE_TIMEOUT_S, partial(settled_since, pair.e, enabled_ns), "convergence")
            await check_history(chaos, pair, {sensor: times}, f"round {trial}")
            chaos.tally.trials += 1
        await pair.close()
        await chaos.stop(pair.edge)
        await chaos.stop(pair.cloud)
    finally:
        await pair.close()
