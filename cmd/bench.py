"""`siot bench`: benchmarks that print each figure beside the raw limit measured in the same run.

Each benchmark is a command of the `bench` group; the ingest benchmark lives here, others add
theirs from their own modules (`bench.add_command(...)` in cmd/main.py).

`siot bench ingest` drives the real write path (`p.<node>` requests, acked after commit) from
one client process and measures, in the same run, what the bare parts can do: a nats-py publish
loop to a subject nobody handles, and SQLite `executemany` of the same rows (upsert + log row)
into a scratch file. Machines vary ±30% from run to run, so read the ratios, not the absolutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from siot import subjects
from siot.api import OK_REPLY
from siot.app import DB_FILE
from siot.client import Client
from siot.cmd.common import dumps
from siot.codec import encode
from siot.points import Point, encode_value
from siot.store.schema import migrate
from siot.store.writer import LOG_INSERT, NODE_UPSERT, LogIds, connect

TARGET_BATCH_POINTS_S = 50_000
TARGET_SINGLE_POINTS_S = 25_000
TARGET_RATE_P99_MS = 10.0
TARGET_IDLE_RSS_MB = 50.0
TARGET_BYTES_PER_POINT = 64
DEFAULT_POINTS = 200_000
DEFAULT_BATCH = 100
DEFAULT_BATCH_IN_FLIGHT = 16
DEFAULT_IN_FLIGHT = 256
DEFAULT_RATE = 5_000
DEFAULT_RATE_SECONDS = 5.0
DEFAULT_NODES = 10
KEYS_PER_NODE = 100
SQLITE_ROWS_PER_TXN = 1_000
READY_TIMEOUT_S = 30.0
IDLE_SETTLE_S = 2.0
PHASE_TIMEOUT_S = 300.0


@click.group()
def bench() -> None:
    """Measure a siot instance against the raw limits of this machine.

    Example usage:

    \b
        siot bench ingest                       # starts its own instance in a temp dir
        siot bench ingest --url nats://10.0.0.5:4222
    """


# ---- an instance of our own ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(slots=True)
class Instance:
    """The instance under test: its URL, and its process when we know it (for RSS)."""

    url: str
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    db_path: Path | None = None  # its SQLite file, when we started it

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace") if self.log_path else ""
            raise click.ClickException(f"siot serve exited with {self.proc.returncode}:\n{log}")


@contextlib.contextmanager
def serve_process(
    workdir: Path, port: int, extra_args: Sequence[str] = (), *, name: str = "siot"
) -> Iterator[Instance]:
    """Run `siot serve` with data in `workdir/name` and its log in `workdir/name.log`; SIGTERM it
    (SIGKILL after 30 s) when the block ends. `extra_args` go to `siot serve` (HTTP is off unless
    they have `--http-port`)."""
    log_path = workdir / f"{name}.log"
    args = [sys.executable, "-P", "-m", "siot.cmd.main", "--log-level", "WARNING", "serve"]
    args += ["--data", str(workdir / name), "--nats-port", str(port), "--monitor-port", "0"]
    args += ["--http-port", "0", *extra_args]  # HTTP only when asked: `--http-port N` in extra_args
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        yield Instance(f"nats://127.0.0.1:{port}", proc.pid, proc, log_path, workdir / name / DB_FILE)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def own_instance(extra_args: Sequence[str] = ()) -> Iterator[Instance]:
    """Run `siot serve` in a temp dir on a free port; stop it and remove the dir afterwards.
    `extra_args` go to `siot serve` (e.g. `--mqtt-port N`)."""
    with (
        tempfile.TemporaryDirectory(prefix="siot-bench-") as tmp,
        serve_process(Path(tmp), _free_port(), extra_args) as instance,
    ):
        yield instance


async def _quiet(exc: Exception) -> None:
    """Refused connections while the instance starts are expected."""


async def connect_when_ready(instance: Instance, token: str) -> Client:
    """Connect once the instance is ready (its API answers and every node client has started, so
    what a benchmark creates meets running managers), failing early if its process died."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        instance.check_alive()
        try:
            client = await Client.connect(
                instance.url,
                name="siot-bench",
                token=token or None,
                timeout_s=5,
                reconnect_forever=False,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # else nats-py retries the first connect 60 times
                error_cb=_quiet,
            )
        except Exception as exc:
            if time.monotonic() > deadline:
                raise click.ClickException(f"no siot instance answers at {instance.url}: {exc}") from exc
            await asyncio.sleep(0.1)
            continue
        problem: Exception | str = "it is still starting"
        try:
            await client.load_root()
            if (await client.stats()).get("ready"):
                return client
        except Exception as exc:
            problem = exc
        await client.close()
        if time.monotonic() > deadline:
            raise click.ClickException(f"the siot instance at {instance.url} is not ready: {problem}")
        await asyncio.sleep(0.1)


def rss_mb(pid: int | None, field: str = "VmRSS") -> float | None:
    """Resident set size of a process in MB (Linux /proc), None when unknown. `field="VmHWM"`
    gives its peak over the process's life instead (`siot bench floods`)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---- the workload ----


@dataclass(slots=True)
class Workload:
    """Pre-encoded request payloads (encoding is the client's cost, not the daemon's)."""

    messages: list[tuple[str, bytes]]
    points: int
    rows: list[tuple[Any, ...]] = field(default_factory=list)


def make_workload(nodes: list[str], total: int, per_message: int) -> Workload:
    """`total` points over `nodes`, `per_message` to a message, each with a unique, newer time so
    every point wins the merge and is stored and logged (a real ingest, not a no-op)."""
    base_ns = time.time_ns()
    messages = []
    rows = []
    for start in range(0, total, per_message):
        node = nodes[(start // per_message) % len(nodes)]
        batch = []
        for i in range(start, min(start + per_message, total)):
            key = str((i // len(nodes)) % KEYS_PER_NODE) if per_message == 1 else str(i % KEYS_PER_NODE)
            point = Point(type="value", key=key, value=float(i), time=base_ns + i)
            batch.append(point.to_wire())
            rows.append((node, point.type, point.key, point.time, encode_value(point.value), 0, ""))
        messages.append((subjects.points(node), encode(batch)))
    return Workload(messages=messages, points=total, rows=rows)


@dataclass(slots=True)
class Result:
    points: int
    seconds: float
    latencies_ns: list[int]
    errors: int

    @property
    def points_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


class AckTracker:
    """Sends requests with our own reply subjects (one subscription, no future per request) and
    records publish→ack latency; at most `window` requests are outstanding."""

    def __init__(self, nc: NATS, count: int, window: int) -> None:
        self.nc = nc
        self.inbox = f"_INBOX.bench{uuid.uuid4().hex}"
        self.sent_ns = [0] * count
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.count = count
        self.window = asyncio.Semaphore(window)
        self.done = asyncio.Event()

    async def __aenter__(self) -> AckTracker:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_ack, pending_msgs_limit=1_000_000)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        index = int(msg.subject.rsplit(".", 1)[1])
        self.latencies_ns.append(time.perf_counter_ns() - self.sent_ns[index])
        if msg.data != OK_REPLY:
            self.errors += 1
        self.window.release()
        if len(self.latencies_ns) == self.count:
            self.done.set()

    async def send(self, index: int, subject: str, payload: bytes) -> None:
        self.sent_ns[index] = time.perf_counter_ns()
        await self.nc.publish(subject, payload, reply=f"{self.inbox}.{index}")


async def run_window(nc: NATS, work: Workload, window: int) -> Result:
    """Send everything as fast as acks allow with `window` requests in flight."""
    async with AckTracker(nc, len(work.messages), window) as tracker:
        start = time.perf_counter()
        for index, (subject, payload) in enumerate(work.messages):
            await tracker.window.acquire()
            await tracker.send(index, subject, payload)
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await tracker.done.wait()
        seconds = time.perf_counter() - start
    return Result(work.points, seconds, tracker.latencies_ns, tracker.errors)


async def run_rate(nc: NATS, work: Workload, rate: float) -> Result:
    """Open loop: send at a fixed rate whatever the acks do, so latency includes queueing."""
    async with AckTracker(nc, len(work.messages), len(work.messages)) as tracker:
        start = time.perf_counter()
        sent = 0
        while sent < len(work.messages):
            due = min(len(work.messages), int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                subject, payload = work.messages[sent]
                await tracker.send(sent, subject, payload)
                sent += 1
            await nc.flush()
            await asyncio.sleep(0.001)
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await tracker.done.wait()
        seconds = time.perf_counter() - start
    return Result(work.points, seconds, tracker.latencies_ns, tracker.errors)


# ---- raw limits ----


async def raw_publish_msgs_s(nc: NATS, payload: bytes, count: int) -> float:
    """A bare nats-py publish loop to a subject nobody handles, flushed at the end."""
    subject = f"bench.raw.{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(count):
        await nc.publish(subject, payload)
    await nc.flush()
    return count / (time.perf_counter() - start)


def raw_sqlite_rows_s(rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of `raw_sqlite` (the figure other benchmarks print beside theirs)."""
    return raw_sqlite(rows)[0]


def raw_sqlite(rows: list[tuple[Any, ...]]) -> tuple[float, float]:
    """`executemany` of the same rows into siot's schema in a scratch file: the point upsert and
    the point-log insert, SQLITE_ROWS_PER_TXN rows per transaction, as the store must write them.
    Returns rows/s and the file's SQLite bytes per logged row."""
    with tempfile.TemporaryDirectory(prefix="siot-bench-sqlite-") as tmp:
        path = Path(tmp) / "raw.db"
        db = connect(str(path), "NORMAL")
        try:
            migrate(db)
            ids = LogIds()
            cursor = db.cursor()
            start = time.perf_counter()
            for first in range(0, len(rows), SQLITE_ROWS_PER_TXN):
                chunk = rows[first : first + SQLITE_ROWS_PER_TXN]
                db.execute("BEGIN IMMEDIATE")
                # Local points with origin and via '': the row's ids are the series' alone.
                log = [
                    (first + i + 1, ids.series_id(cursor, (n, "", t, k)), tm, v, 0, 0, None, None, 0)
                    for i, (n, t, k, tm, v, _, _) in enumerate(chunk)
                ]
                db.executemany(NODE_UPSERT, chunk)
                db.executemany(LOG_INSERT, log)
                db.execute("COMMIT")
                ids.keep_new()
            rows_s = len(rows) / (time.perf_counter() - start)
        finally:
            db.close()
        return rows_s, sqlite_bytes_per_logged_point(path)


def sqlite_bytes_per_logged_point(path: Path) -> float:
    """The database's size after a TRUNCATE checkpoint (the WAL folded in), tables and indexes,
    per row of the point log: what keeping a logged point costs on disk. Pages are counted, not
    the file measured, so a checkpoint held back by a reader cannot leave rows uncounted."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM point_log").fetchone()
    return pages * page_size / rows if rows else float("nan")


# ---- the command ----


@dataclass(slots=True)
class Phase:
    name: str
    points_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    stored: int
    sent: int
    raw_publish_points_s: float | None = None
    raw_sqlite_rows_s: float | None = None
    raw_sqlite_bytes_per_point: float | None = None


async def ingest_main(
    instance: Instance,
    token: str,
    *,
    points: int,
    batch: int,
    batch_in_flight: int,
    in_flight: int,
    rate: int,
    rate_seconds: float,
    node_count: int,
) -> dict[str, Any]:
    """Run (a), (b) and (c) against the instance at `url`; return the report as plain data."""
    client = await connect_when_ready(instance, token)
    try:
        await asyncio.sleep(IDLE_SETTLE_S if instance.proc else 0)
        report: dict[str, Any] = {"url": instance.url, "idle_rss_mb": rss_mb(instance.pid), "phases": []}
        parent = await client.create_node(
            client.root_id, "group", [Point("description", "siot bench ingest")]
        )
        nodes = [
            await client.create_node(parent, "device", [Point("description", f"bench {i}")])
            for i in range(node_count)
        ]
        nc = client.nc

        async def measure(name: str, work: Workload, run: Any) -> Phase:
            before = (await client.stats())["acceptedPoints"]
            result = await run(work)
            stored = (await client.stats())["acceptedPoints"] - before
            return Phase(
                name,
                result.points_s,
                result.percentile_ms(0.5),
                result.percentile_ms(0.99),
                result.errors,
                stored,
                work.points,
            )

        batched = make_workload(nodes, points, batch)
        phase = await measure(
            f"(a) {batch} points/message, {batch_in_flight} in flight",
            batched,
            lambda w: run_window(nc, w, batch_in_flight),
        )
        phase.raw_publish_points_s = (
            await raw_publish_msgs_s(nc, batched.messages[0][1], len(batched.messages)) * batch
        )
        phase.raw_sqlite_rows_s, phase.raw_sqlite_bytes_per_point = await asyncio.to_thread(
            raw_sqlite, batched.rows
        )
        report["phases"].append(asdict(phase))

        single = make_workload(nodes, points, 1)
        phase = await measure(
            f"(b) 1 point/message, {in_flight} in flight", single, lambda w: run_window(nc, w, in_flight)
        )
        phase.raw_publish_points_s = await raw_publish_msgs_s(nc, single.messages[0][1], len(single.messages))
        phase.raw_sqlite_rows_s, phase.raw_sqlite_bytes_per_point = await asyncio.to_thread(
            raw_sqlite, single.rows
        )
        report["phases"].append(asdict(phase))

        paced = make_workload(nodes, int(rate * rate_seconds), 1)
        phase = await measure(
            f"(c) 1 point/message at {rate:,} points/s", paced, lambda w: run_rate(nc, w, rate)
        )
        report["phases"].append(asdict(phase))

        report["loaded_rss_mb"] = rss_mb(instance.pid)
        db_path = instance.db_path
        report["sqlite_bytes_per_point"] = (
            await asyncio.to_thread(sqlite_bytes_per_logged_point, db_path) if db_path else None
        )
        await client.delete_node(parent, client.root_id)
        return report
    finally:
        await client.close()


def print_report(report: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    click.echo(f"siot bench ingest against {report['url']}")
    targets = [TARGET_BATCH_POINTS_S, TARGET_SINGLE_POINTS_S, None]
    for phase, target in zip(report["phases"], targets, strict=True):
        click.echo(f"\n{phase['name']}")
        rate = f"{phase['points_s']:>10,.0f} points/s"
        stored = f"({phase['stored']:,}/{phase['sent']:,} stored, {phase['errors']} errors)"
        if target is not None:
            ok = verdict(phase["points_s"] >= target)
            click.echo(f"  stored          {rate}   target >= {target:,}: {ok}   {stored}")
        else:
            click.echo(f"  sent            {rate}   {stored}")
        latency = f"p50 {phase['p50_ms']:.2f} ms, p99 {phase['p99_ms']:.2f} ms"
        if target is None:
            latency += (
                f"   target p99 <= {TARGET_RATE_P99_MS} ms: {verdict(phase['p99_ms'] <= TARGET_RATE_P99_MS)}"
            )
        click.echo(f"  publish→ack     {latency}")
        if phase["raw_publish_points_s"] is not None:
            click.echo(
                f"  raw limits      nats-py publish {phase['raw_publish_points_s']:,.0f} points/s; "
                f"SQLite executemany {phase['raw_sqlite_rows_s']:,.0f} rows/s, "
                f"{phase['raw_sqlite_bytes_per_point']:.1f} bytes/row"
            )
    per_point = report["sqlite_bytes_per_point"]
    if per_point is not None:
        ok = verdict(per_point <= TARGET_BYTES_PER_POINT)
        click.echo(
            f"\nSQLite bytes per logged point   {per_point:.1f}   target <= {TARGET_BYTES_PER_POINT}: {ok}"
            "   (database file after the runs, checkpointed, / log rows)"
        )
    idle = report["idle_rss_mb"]
    if idle is None:
        click.echo("\nidle RSS        unknown (pass --pid of the siot serve process)")
        return
    ok = verdict(idle <= TARGET_IDLE_RSS_MB)
    click.echo(
        f"\nidle RSS        {idle:.1f} MB   target <= {TARGET_IDLE_RSS_MB:.0f} MB: {ok}"
        f"   (siot process; {report['loaded_rss_mb']:.1f} MB after the runs)"
    )


@bench.command()
@click.option(
    "--url",
    envvar="SIOT_URL",
    default=None,
    help="Benchmark this running instance (default: start one in a temp dir).",
)
@click.option("--token", envvar="SIOT_AUTH_TOKEN", default="", help="NATS auth token of --url.")
@click.option(
    "--pid",
    envvar="SIOT_BENCH_PID",
    type=int,
    default=None,
    help="Pid of the --url instance's siot serve, to report its RSS.",
)
@click.option(
    "--points",
    envvar="SIOT_BENCH_POINTS",
    type=int,
    default=DEFAULT_POINTS,
    show_default=True,
    help="Points sent in runs (a) and (b).",
)
@click.option(
    "--batch",
    envvar="SIOT_BENCH_BATCH",
    type=int,
    default=DEFAULT_BATCH,
    show_default=True,
    help="Points per message in run (a).",
)
@click.option(
    "--batch-in-flight",
    envvar="SIOT_BENCH_BATCH_IN_FLIGHT",
    type=int,
    default=DEFAULT_BATCH_IN_FLIGHT,
    show_default=True,
    help="Outstanding requests in run (a).",
)
@click.option(
    "--in-flight",
    envvar="SIOT_BENCH_IN_FLIGHT",
    type=int,
    default=DEFAULT_IN_FLIGHT,
    show_default=True,
    help="Outstanding requests in run (b).",
)
@click.option(
    "--rate",
    envvar="SIOT_BENCH_RATE",
    type=int,
    default=DEFAULT_RATE,
    show_default=True,
    help="Points/s of the fixed-rate run (c).",
)
@click.option(
    "--rate-seconds",
    envvar="SIOT_BENCH_RATE_SECONDS",
    type=float,
    default=DEFAULT_RATE_SECONDS,
    show_default=True,
    help="Length of run (c).",
)
@click.option(
    "--nodes",
    "node_count",
    envvar="SIOT_BENCH_NODES",
    type=int,
    default=DEFAULT_NODES,
    show_default=True,
    help="Nodes the points are spread over.",
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def ingest(url: str | None, token: str, pid: int | None, json_: bool, **options: Any) -> None:
    """Points/s stored and publish→ack latency of the write path, beside the raw limits.

    Runs (a) batches of --batch points per message, (b) one point per message with many
    requests in flight, (c) one point per message at a fixed --rate; and reads the idle RSS of
    the siot process. Without --url it starts `siot serve` in a temp dir and removes it after.
    Nodes it creates under the root of a --url instance are deleted at the end.

    Example usage:

    \b
        siot bench ingest
        siot bench ingest --url nats://127.0.0.1:4222 --pid $(pgrep -f 'siot serve')
    """

    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(own_instance()) if url is None else Instance(url, pid)
        report = _run(ingest_main(instance, token, **options))
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)


def _run(coro: Any) -> Any:
    """Run on uvloop when it is installed (as `siot serve` does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
