"""`siot bench floods`: the hostile floods of issue 12, each against the budget the issue sets —
the daemon's RSS stays under 256 MB, and a write from another client is answered within 1 s at
p99 — beside a baseline measured in the same run with the same probe and no flood.

Each flood runs on a fresh `siot serve` of its own, so VmHWM (the process's peak RSS over its
life, setup included) belongs to that flood alone; VmRSS is also sampled every 100 ms during the
flood. The probe is a client in a process of its own (so the flooder's CPU in this process does
not delay it): one acked point every 20 ms to a node of its own, open loop (a stalled daemon
cannot hold the next probe back), timing publish → ack; a write that fails or times out counts
as failed, with the time it waited as its latency. The daemon's CPU is the `siot serve` process's
utime + stime over the flood window, divided by the messages the flood sent; the probe's writes
are in it too, and the baseline row gives their cost (its CPU per probe write).

Every flood honours the window (`--seconds`): sustained floods send until it ends, bursts are
sent at its start, and the probe runs to its end either way (longer if the flood's last requests
are still out). The daemon's log is checked afterwards for ERRORs and tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import click
from nats.errors import Error as NatsError

from siot import subjects
from siot.api import MAX_HISTORY_LIMIT
from siot.client import Client
from siot.cmd.bench import Instance, _run, connect_when_ready, rss_mb, serve_process
from siot.cmd.bench_rules import cpu_s, percentile_ms
from siot.cmd.chaos_support import free_port, unexpected_blocks
from siot.cmd.common import dumps
from siot.codec import DEFAULT_MAX_BATCH_POINTS, encode
from siot.errors import RequestFailed
from siot.points import Point
from siot.sync import protocol

BUDGET_RSS_MB = 256.0
BUDGET_P99_MS = 1_000.0
ABORT_RSS_MB = 2_048.0  # far past the budget: stop the flood before it takes the machine down
DEFAULT_SECONDS = 8.0
PROBE_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 5.0
RSS_SAMPLE_S = 0.1
IDLE_SETTLE_S = 1.0
SETUP_WIDTH = 50  # setup requests in flight at once
PUBLISH_CHUNK = 1_000  # fire-and-forget publishes between two looks at the clock
DIGEST_POINTS_PER_NODE = 200
HISTORY_SMALL_LIMIT = 100
REPEAT_INTERVAL_S = 1e-4
OK_EXIT_CODES = (0, -signal.SIGTERM)
LOG_BLOCKS_KEPT = 3


@dataclass(slots=True)
class FloodOptions:
    """The sizes of every flood (each reads its own)."""

    seconds: float
    digest_points: int
    digest_concurrency: int
    big_point_mb: float
    big_point_parents: int
    big_point_writes: int
    history_requests: int
    history_large_every: int
    history_points: int
    rules: int


@dataclass(slots=True)
class Tally:
    """What the flooder did: messages sent, and how many of its own requests failed (busy,
    refused, timed out) — a flood's failures are the daemon defending itself, not a fault."""

    sent: int = 0
    failed: int = 0


# A prepared flood: sends until the deadline (time.perf_counter), counting into the tally.
Run = Callable[[Tally, float], Awaitable[None]]
Prepare = Callable[[Client, FloodOptions], Awaitable[Run]]


# ---- setup helpers ----


async def in_parallel(make: Callable[[int], Awaitable[None]], count: int) -> None:
    """`make(0..count-1)`, SETUP_WIDTH at a time: setting up 1,000 parents one request at a
    time would take longer than the flood."""
    for first in range(0, count, SETUP_WIDTH):
        await asyncio.gather(*(make(i) for i in range(first, min(first + SETUP_WIDTH, count))))


async def send_in_batches(client: Client, node: str, points: list[Point]) -> None:
    """Acked writes of at most the API's batch size each."""
    for first in range(0, len(points), DEFAULT_MAX_BATCH_POINTS):
        await client.send_points(node, points[first : first + DEFAULT_MAX_BATCH_POINTS])


async def acked(client: Client, subject: str, payload: bytes, tally: Tally) -> None:
    """One request of a flood: counted as sent, and as failed unless answered ok."""
    tally.sent += 1
    try:
        await client.request(subject, payload)
    except (RequestFailed, NatsError):
        tally.failed += 1


def condition(node: str, point_type: str, operator: str, value: float) -> list[Point]:
    return [
        Point("nodeID", node),
        Point("pointType", point_type),
        Point("operator", operator),
        Point("value", value),
    ]


def set_value(node: str, point_type: str, value: float, *extra: Point) -> list[Point]:
    return [
        Point("action", "setValue"),
        Point("nodeID", node),
        Point("pointType", point_type),
        Point("value", value),
        *extra,
    ]


async def make_rule(client: Client, when: list[Point], act: list[Point], otherwise: list[Point]) -> str:
    """A rule under the root: one condition, one action and, unless `otherwise` is empty, one
    inactive action; the condition first, so the rule is complete before it can act."""
    rule = await client.create_node(client.root_id, "rule", [Point("description", "bench floods")])
    await client.create_node(rule, "condition", when)
    await client.create_node(rule, "action", act)
    if otherwise:
        await client.create_node(rule, "actionInactive", otherwise)
    return rule


async def device(client: Client, parent: str | None = None) -> str:
    return await client.create_node(parent or client.root_id, "device")


# ---- the floods ----


async def prepare_baseline(client: Client, options: FloodOptions) -> Run:
    """No flood: the probe alone."""

    async def run(tally: Tally, deadline: float) -> None:
        pass

    return run


async def prepare_digest(client: Client, options: FloodOptions) -> Run:
    """A forged edge (a hello needs no credentials yet) whose subtree holds --digest-points
    points; then --digest-concurrency clients ask for its digest over and over, each request
    reading the state of the whole subtree."""
    edge = f"flood-{uuid.uuid4().hex[:12]}"
    session = {protocol.SESSION: uuid.uuid4().hex}
    hello = {"instance": edge, "version": protocol.PROTOCOL_VERSION, **session}
    await client.request(protocol.hello(edge), encode(hello))
    per_node = DIGEST_POINTS_PER_NODE

    async def seed(i: int) -> None:
        count = min(per_node, options.digest_points - i * per_node)
        points = [Point("value", float(k), key=str(k)) for k in range(count)]
        await client.send_points(await device(client, edge), points)

    await in_parallel(seed, -(-options.digest_points // per_node))
    payload = encode(session)

    async def run(tally: Tally, deadline: float) -> None:
        async def asker() -> None:
            while time.perf_counter() < deadline:
                await acked(client, protocol.digest(edge), payload, tally)

        await asyncio.gather(*(asker() for _ in range(options.digest_concurrency)))

    return run


async def prepare_big_point(client: Client, options: FloodOptions) -> Run:
    """A node mirrored under --big-point-parents groups; then --big-point-writes acked writes of
    one point of --big-point-mb MB to it, one after another (its fan-out reaches every ancestor)."""
    node = await device(client)

    async def add_parent(i: int) -> None:
        # An edge of the same node under each group (`mirror_node` without its read of every
        # parent of the node, which grows with each parent added).
        await client.create_node(await client.create_node(client.root_id, "group"), "device", node_id=node)

    await in_parallel(add_parent, options.big_point_parents)
    payload = encode([Point("blob", "x" * int(options.big_point_mb * 1024 * 1024)).to_wire()])

    async def run(tally: Tally, deadline: float) -> None:
        for _ in range(options.big_point_writes):
            if time.perf_counter() >= deadline:
                return
            await acked(client, subjects.points(node), payload, tally)

    return run


async def prepare_fire_and_forget(client: Client, options: FloodOptions) -> Run:
    """Point writes without a reply subject, as fast as one nats-py connection publishes them,
    for the whole window (each a new write: the daemon stamps its time)."""
    subject = subjects.points(await device(client))
    payload = encode([Point("flood", 1.0).to_wire()])
    nc = client.nc

    async def run(tally: Tally, deadline: float) -> None:
        while time.perf_counter() < deadline:
            for _ in range(PUBLISH_CHUNK):
                await nc.publish(subject, payload)
            tally.sent += PUBLISH_CHUNK
        with contextlib.suppress(NatsError, TimeoutError):
            await nc.flush(timeout=PROBE_TIMEOUT_S)

    return run


async def prepare_history(client: Client, options: FloodOptions) -> Run:
    """A node with --history-points logged points; then a burst of --history-requests history
    requests whose reply subject nobody reads, every --history-large-every-th of them asking for
    the largest limit (a full page of the log)."""
    node = await device(client)
    t0 = time.time_ns() - options.history_points * 1_000
    await send_in_batches(
        client, node, [Point("v", float(i), time=t0 + i * 1_000) for i in range(options.history_points)]
    )
    small = encode({"type": "v", "limit": HISTORY_SMALL_LIMIT})
    large = encode({"type": "v", "limit": MAX_HISTORY_LIMIT})
    subject = subjects.history(node)
    inbox = f"unread.{uuid.uuid4().hex}"
    nc = client.nc

    async def run(tally: Tally, deadline: float) -> None:
        for i in range(options.history_requests):
            if time.perf_counter() >= deadline:
                break
            payload = large if i % options.history_large_every == 0 else small
            await nc.publish(subject, payload, reply=f"{inbox}.{i}")
            tally.sent += 1
        await nc.flush()

    return run


async def prepare_repeat_interval(client: Client, options: FloodOptions) -> Run:
    """--rules rules, each with a setValue action repeated every 1e-4 s while active; the flood is
    one write per rule that makes it active."""
    sensors = []
    for _ in range(options.rules):
        sensor, target = await device(client), await device(client)
        repeat = Point("repeatInterval", REPEAT_INTERVAL_S)
        await make_rule(client, condition(sensor, "run", ">", 0), set_value(target, "flood", 1, repeat), [])
        sensors.append(sensor)

    async def run(tally: Tally, deadline: float) -> None:
        for sensor in sensors:
            await acked(client, subjects.points(sensor), encode([Point("run", 1).to_wire()]), tally)

    return run


async def prepare_rule_loop(client: Client, options: FloodOptions) -> Run:
    """--rules rules that flip their own point (lamp.on = 0 -> on = 1, inactive -> on = 0) and
    --rules chains A -> B -> A (A: x = 1 -> y = 1, else y = 0; B: y = 1 -> x = 0, else x = 1),
    with the default loop guard; the flood is one write per rule or chain that starts it."""
    triggers = []
    for _ in range(options.rules):
        lamp, box = await device(client), await device(client)
        await make_rule(
            client, condition(lamp, "on", "=", 0), set_value(lamp, "on", 1), set_value(lamp, "on", 0)
        )
        await make_rule(client, condition(box, "x", "=", 1), set_value(box, "y", 1), set_value(box, "y", 0))
        await make_rule(client, condition(box, "y", "=", 1), set_value(box, "x", 0), set_value(box, "x", 1))
        triggers += [(lamp, Point("on", 0)), (box, Point("x", 1))]

    async def run(tally: Tally, deadline: float) -> None:
        for node, point in triggers:
            await acked(client, subjects.points(node), encode([point.to_wire()]), tally)

    return run


BASELINE = "baseline"
FLOODS: dict[str, Prepare] = {
    "digest": prepare_digest,
    "big-point": prepare_big_point,
    "fire-and-forget": prepare_fire_and_forget,
    "history": prepare_history,
    "repeat-interval": prepare_repeat_interval,
    "rule-loop": prepare_rule_loop,
}


# ---- the probe, in a process of its own ----


@dataclass(slots=True)
class ProbeResult:
    answered: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class ProbeWrites:
    """Times each acked write; a failure (error reply, timeout, lost connection) counts with the
    time it waited."""

    def __init__(self, client: Client, node: str) -> None:
        self.client, self.node = client, node
        self.latencies_ns: list[int] = []
        self.failed = 0

    async def write(self, value: int) -> None:
        start = time.perf_counter_ns()
        try:
            await self.client.send_points(self.node, [Point("probe", value)])
        except (RequestFailed, NatsError):
            self.failed += 1
        self.latencies_ns.append(time.perf_counter_ns() - start)

    def result(self) -> ProbeResult:
        ordered = sorted(self.latencies_ns)
        return ProbeResult(
            answered=len(ordered) - self.failed,
            failed=self.failed,
            p50_ms=round(percentile_ms(ordered, 0.50), 2),
            p99_ms=round(percentile_ms(ordered, 0.99), 2),
            max_ms=round(ordered[-1] / 1e6, 2) if ordered else float("nan"),
        )


async def probe_loop(url: str, node: str, conn: Connection) -> ProbeResult:
    """Say "ready" after one write got through, then write every PROBE_INTERVAL_S, open loop,
    until told to stop; then wait for the writes still out."""
    client = await Client.connect(
        url, name="siot-bench-probe", timeout_s=PROBE_TIMEOUT_S, reconnect_forever=False
    )
    try:
        writes = ProbeWrites(client, node)
        await client.send_points(node, [Point("probe", -1)])
        conn.send("ready")
        pending = []
        tick = time.perf_counter()
        while not conn.poll():
            pending.append(asyncio.create_task(writes.write(len(pending))))
            tick += PROBE_INTERVAL_S
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        await asyncio.gather(*pending)
        return writes.result()
    finally:
        await client.close()


def probe_process(url: str, node: str, conn: Connection) -> None:
    """The probe process's entry point: its result, or why it failed, goes back on `conn`."""
    try:
        conn.send(asyncio.run(probe_loop(url, node, conn)))
    except Exception as exc:
        conn.send(f"probe failed: {exc!r}")


class Probe:
    """The probe's process, from `ready()` (its first write was answered) to `stop()` (its
    result). Leaving the block ends the process if it still runs."""

    def __init__(self, url: str, node: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of this process's event loop
        self.conn, child = context.Pipe()
        self.process = context.Process(target=probe_process, args=(url, node, child), daemon=True)
        self.process.start()
        child.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()

    async def _receive(self) -> Any:
        try:
            message = await asyncio.to_thread(self.conn.recv)
        except EOFError:
            raise click.ClickException(f"the probe process exited with {self.process.exitcode}") from None
        if isinstance(message, str) and message.startswith("probe failed"):
            raise click.ClickException(message)
        return message

    async def ready(self) -> None:
        await self._receive()

    async def stop(self) -> ProbeResult:
        self.conn.send("stop")
        return await self._receive()


# ---- one flood on one fresh daemon ----


class RssSampler:
    """VmRSS every RSS_SAMPLE_S while the block runs: the peak sampled, and `too_big` set once it
    passes ABORT_RSS_MB."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.too_big = asyncio.Event()

    async def _sample(self) -> None:
        while True:
            rss = rss_mb(self.pid)
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss)
                if rss > ABORT_RSS_MB:
                    self.too_big.set()
            await asyncio.sleep(RSS_SAMPLE_S)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[RssSampler]:
        task = asyncio.create_task(self._sample())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def flood_window(run: Run, tally: Tally, seconds: float, too_big: asyncio.Event) -> bool:
    """Run the flood for `seconds` (and until its last requests are back); false if it was cut
    short because the daemon's RSS passed ABORT_RSS_MB. An error of the flood itself is raised."""
    deadline = time.perf_counter() + seconds

    async def flood_to_the_end() -> None:
        await run(tally, deadline)
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))

    flood = asyncio.ensure_future(flood_to_the_end())
    abort = asyncio.ensure_future(too_big.wait())
    done, _ = await asyncio.wait({flood, abort}, return_when=asyncio.FIRST_COMPLETED)
    for task in (flood, abort):
        task.cancel()
    await asyncio.gather(flood, abort, return_exceptions=True)
    if flood in done:
        flood.result()
    return flood in done


async def committed_writes(client: Client) -> int | None:
    """The store's committed-writes counter, None if the daemon does not answer."""
    try:
        return (await client.stats())["committedWrites"]
    except (RequestFailed, NatsError):
        return None


async def measure(instance: Instance, flood: str, options: FloodOptions) -> dict[str, Any]:
    """Set up `flood` on the fresh daemon, start the probe, run the flood window, and return its
    figures (those of the daemon's log and exit are added once it has stopped)."""
    pid = instance.pid
    client = await connect_when_ready(instance, "")
    try:
        await asyncio.sleep(IDLE_SETTLE_S)
        idle_mb = rss_mb(pid)
        prepare = prepare_baseline if flood == BASELINE else FLOODS[flood]
        run = await prepare(client, options)
        probe_node = await client.create_node(client.root_id, "device", [Point("description", "bench probe")])
        writes_before = await committed_writes(client)
        with Probe(instance.url, probe_node) as probe:
            await probe.ready()
            tally, cpu_before, start = Tally(), cpu_s(pid), time.perf_counter()
            async with RssSampler(pid).sampling() as rss:
                completed = await flood_window(run, tally, options.seconds, rss.too_big)
                probe_result = await probe.stop()
            window_s, cpu_after = time.perf_counter() - start, cpu_s(pid)
        writes_after = await committed_writes(client)
    finally:
        await client.close()
    if flood == BASELINE:
        tally.sent = probe_result.answered + probe_result.failed  # CPU per probe write
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "flood": flood,
        "messages_sent": tally.sent,
        "flood_requests_failed": tally.failed,
        "window_s": round(window_s, 1),
        "completed": completed,
        "idle_rss_mb": _round(idle_mb),
        "peak_rss_mb": _round(rss_mb(pid, "VmHWM")),
        "sampled_peak_rss_mb": round(rss.peak_mb, 1),
        **{f"probe_{name}": value for name, value in asdict(probe_result).items()},
        "daemon_cpu_s": _round(cpu, 2),
        "daemon_cpu_us_per_msg": round(cpu / tally.sent * 1e6) if cpu is not None and tally.sent else None,
        "daemon_writes_committed": (
            writes_after - writes_before if writes_after is not None and writes_before is not None else None
        ),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def verdict(row: dict[str, Any]) -> str:
    """The row's verdict: "ok", or what broke the budget (or the run)."""
    over = []
    if row["peak_rss_mb"] is None or row["peak_rss_mb"] >= BUDGET_RSS_MB:
        over.append(f"RSS >= {BUDGET_RSS_MB:.0f} MB")
    if not row["probe_p99_ms"] < BUDGET_P99_MS:  # also NaN: no probe write answered
        over.append(f"probe p99 >= {BUDGET_P99_MS:.0f} ms")
    if not row["completed"]:
        over.append(f"stopped at {ABORT_RSS_MB:.0f} MB")
    if row["exit_code"] not in OK_EXIT_CODES:
        over.append(f"daemon exit code {row['exit_code']}")
    if row["log_errors"]:
        over.append(f"{row['log_errors']} ERRORs in its log")
    return "ok" if not over else "OVER: " + ", ".join(over)


def run_flood(flood: str, options: FloodOptions) -> dict[str, Any]:
    """One flood on a fresh `siot serve` in a temp dir: its figures, its log's errors and its exit."""
    with tempfile.TemporaryDirectory(prefix="siot-bench-floods-") as tmp:
        with serve_process(Path(tmp), free_port()) as instance:
            row = _run(measure(instance, flood, options))
        assert instance.proc is not None and instance.log_path is not None
        bad = unexpected_blocks(instance.log_path.read_text(errors="replace"))
    row["exit_code"] = instance.proc.returncode
    row["log_errors"] = len(bad)
    row["log_error_samples"] = bad[:LOG_BLOCKS_KEPT]
    row["verdict"] = verdict(row)
    return row


# ---- the report ----


def print_report(report: dict[str, Any]) -> None:
    budget = f"peak RSS < {BUDGET_RSS_MB:.0f} MB, probe p99 < {BUDGET_P99_MS:.0f} ms"
    click.echo(
        f"siot bench floods: {report['seconds']:g} s per flood, each on a fresh daemon; budget {budget}"
    )
    header = (
        "flood",
        "messages sent",
        "peak RSS (MB)",
        "probe p50/p99 (ms)",
        "probe failed",
        "CPU µs/msg",
        "verdict",
    )
    rows = [header]
    for row in [report["baseline"], *report["floods"]]:
        peak = f"{row['peak_rss_mb']}"
        if row["flood"] == BASELINE:
            peak = f"{row['peak_rss_mb']} (idle {row['idle_rss_mb']})"
        answered = row["probe_answered"] + row["probe_failed"]
        rows.append(
            (
                row["flood"],
                f"{row['messages_sent']:,}" + (" probes" if row["flood"] == BASELINE else ""),
                peak,
                f"{row['probe_p50_ms']:.1f} / {row['probe_p99_ms']:.1f}",
                f"{row['probe_failed']} of {answered}",
                str(row["daemon_cpu_us_per_msg"]),
                row["verdict"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for row in report["floods"]:
        for block in row["log_error_samples"]:
            click.echo(f"\n{row['flood']}: daemon log error:\n{block}", err=True)


@click.command(name="floods")
@click.option(
    "flood_names",
    "--flood",
    multiple=True,
    type=click.Choice(list(FLOODS)),
    help="A flood to run (repeatable; default: all).",
)
@click.option(
    "--seconds",
    type=float,
    default=DEFAULT_SECONDS,
    show_default=True,
    help="Length of each flood's window (and of the baseline).",
)
@click.option(
    "--digest-points",
    type=int,
    default=20_000,
    show_default=True,
    help="Points in the forged edge's subtree.",
)
@click.option(
    "--digest-concurrency", type=int, default=300, show_default=True, help="Digest requests in flight."
)
@click.option("--big-point-mb", type=float, default=5.0, show_default=True, help="Size of the big point.")
@click.option(
    "--big-point-parents", type=int, default=1_000, show_default=True, help="Parents of the big point's node."
)
@click.option("--big-point-writes", type=int, default=5, show_default=True, help="Writes of the big point.")
@click.option(
    "--history-requests", type=int, default=50_000, show_default=True, help="Unread history requests."
)
@click.option(
    "--history-large-every",
    type=int,
    default=500,
    show_default=True,
    help=f"Every Nth history request asks for limit {MAX_HISTORY_LIMIT:,}.",
)
@click.option(
    "--history-points", type=int, default=100_000, show_default=True, help="Logged points of the read node."
)
@click.option(
    "--rules", type=int, default=10, show_default=True, help="Rules (and chains) of the two rule floods."
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def bench_floods(flood_names: tuple[str, ...], json_: bool, **sizes: Any) -> None:
    """Peak RSS and a probe write's p99 under each hostile flood of issue 12, against the budget
    (RSS < 256 MB, p99 < 1 s), beside a baseline with no flood measured in the same run.

    Floods: digest (concurrent forged sync.digest requests), big-point (a 5 MB point on a node
    with 1,000 parents), fire-and-forget (point writes without reply subject), history (unread
    history requests, some with the largest limit), repeat-interval (setValue repeated every
    1e-4 s), rule-loop (rules that flip their own point, chains A -> B -> A). Each runs on a
    fresh `siot serve` in a temp dir, removed after.

    Example usage:

    \b
        siot bench floods
        siot bench floods --flood digest --flood history --seconds 5 --json
    """
    options = FloodOptions(**sizes)
    if options.seconds <= 0 or min(asdict(options).values()) <= 0:
        raise click.ClickException("--seconds and every size must be positive")
    report = {
        "seconds": options.seconds,
        "budget": {"peak_rss_mb": BUDGET_RSS_MB, "probe_p99_ms": BUDGET_P99_MS},
        "baseline": run_flood(BASELINE, options),
        "floods": [run_flood(name, options) for name in flood_names or FLOODS],
    }
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)
