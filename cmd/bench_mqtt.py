"""`siot bench mqtt`: JSON device messages/s committed through MQTT → nats-server's MQTT
listener → an `ingest` node → the store, from simulated devices, beside the raw limits
measured in the same run.

The devices are `siot sim`'s (the soil preset: `{"name", "humidity", "timeStampEpoch"}` on
`<topic>/<device>`), sending as fast as the broker acknowledges (QoS 1) or as fast as they can
(QoS 0). One `ingest` node maps them (`deviceField=name`, only `humidity`, receive time, so every
message is one new point). A message counts when its point is committed: the bench reads the
store's `acceptedPoints` (`siot.stats`) until every point is in, so the figure is the sustained
rate of the whole path, not of the sender.

Beside it, in the same run and with the same devices and payloads:
- the same JSON published over NATS (plain publishes, no reply) → ingest → store: the path
  without the MQTT bridge;
- at QoS 1, the MQTT run twice: with the ingest node `durable` (its default: nats-server holds
  each message until the node acks it after commit), then with `durable=false` (the broker's own
  PUBACK, sent before siot has the message), so the cost of the durable path is visible;
- a bare nats-py publish loop of that payload to a subject nobody handles: the client's limit.

`--rate R` paces every run at R messages/s over all devices (open loop, up to the simulator's
in-flight limit): CPU per message at a device-like rate rather than at saturation.

`siot bench mqtt --drain` measures the MQTT path's own ceiling, which a Python sender on the
same cores cannot reach: `siot serve` is SIGSTOPped (its nats-server keeps running), the devices
publish a QoS 1 burst (the durable path's PUBACK comes from nats-server's own store, so nothing
waits for siot), siot is SIGCONTed and the drain timed, with the CPU of siot serve and of its
nats-server read from /proc per phase.

`siot bench mqtt --kill` is the chaos trial instead: per path (durable, broker's PUBACK) and
trial, a fresh instance takes `--messages` QoS 1 messages, is SIGKILLed as soon as the last
PUBACK is in, restarted on the same data, and the readings in history are counted against the
PUBACKs (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import nats.js.errors

from siot.client import Client
from siot.cmd.bench import (
    Instance,
    _free_port,
    _run,
    connect_when_ready,
    raw_publish_msgs_s,
    serve_process,
)
from siot.cmd.bench_rules import cpu_s
from siot.cmd.chaos_support import unexpected_blocks
from siot.cmd.common import dumps
from siot.cmd.mqtt_link import DEFAULT_MQTT_HOST
from siot.cmd.sim import SimOptions, Simulator, Summary
from siot.errors import RequestFailed
from siot.nodes.ingest.config import DEFAULT_MAX_DEVICES
from siot.nodes.ingest.durable import MQTT_STREAM, consumer_name
from siot.nodes.listener import ListenerState, wait_state
from siot.points import Point

DEFAULT_DEVICES = 100
DEFAULT_MESSAGES = 50_000
DEFAULT_QOS = 1
RAW_MESSAGES = 200_000
POLL_S = 0.02
STALL_S = 15.0
STATS_ATTEMPTS = 6
QUIET_S = 0.5
SWITCH_TIMEOUT_S = 60.0
SIM_SEED = 6
DEFAULT_TRIALS = 3
# After the restart, the count of stored readings is final once it reaches the PUBACKs or stops
# growing for longer than the ingest node's ackWait (held messages in flight at the kill come
# back after it).
KILL_SETTLE_S = 15.0
PORT_FREE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
LOG_BLOCKS_KEPT = 3


@dataclass(slots=True)
class Run:
    """One measured path: messages sent, points committed, and the time from the first send to
    the last commit."""

    name: str
    sent: int
    committed: int
    seconds: float
    sender_msgs_s: float
    errors: int
    last_error: str = ""
    daemon_cpu_s: float | None = None  # siot + its nats-server, when the instance is our own

    @property
    def msgs_s(self) -> float:
        return self.committed / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_msg(self) -> float | None:
        if self.daemon_cpu_s is None or not self.committed:
            return None
        return self.daemon_cpu_s / self.committed * 1e6


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (siot serve's nats-server), from /proc."""
    children = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            with contextlib.suppress(OSError, IndexError):
                # the fields after the command name; [1] is the parent's pid
                if int(Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(proc))
    return children


def nats_server_pid(pid: int) -> int:
    """The nats-server that `siot serve` (`pid`) runs: what keeps taking messages while siot is
    stopped."""
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "nats-server":
                return child
    raise click.ClickException(f"siot serve (pid {pid}) runs no nats-server")


def daemon_cpu_s(pid: int | None) -> float | None:
    """CPU seconds used so far by `pid` and its children (siot serve and its nats-server), from
    /proc; None where that is not readable (not Linux, or not our own instance)."""
    if pid is None:
        return None
    own = cpu_s(pid)
    if own is None:
        return None
    return own + sum(cpu for child in child_pids(pid) if (cpu := cpu_s(child)) is not None)


def soil_simulator(
    url: str,
    topic: str,
    devices: int,
    count: int,
    transport: str,
    *,
    ack: bool,
    qos: int,
    seed: int,
    mqtt_port: int,
    mqtt_host: str = DEFAULT_MQTT_HOST,
    token: str = "",
    rate: float = 0.0,
) -> Simulator:
    """`count` raw soil-sensor messages from each of `devices` devices on `<topic>/<device>`,
    `rate` a second per device (0: as fast as they are taken)."""
    options = SimOptions(
        devices=devices,
        rate=rate,
        count=count,
        transport=transport,
        mode="raw",
        preset="soil",
        topic=f"{topic}/{{device}}",
        mqtt_port=mqtt_port,
        qos=qos,
        ack=ack,
        seed=seed,
        mqtt_host=mqtt_host,
    )
    return Simulator(options, url=url, token=token)


async def warm_up(simulator: Simulator) -> Summary:
    """One acknowledged message per device over NATS, so the devices exist before anything is
    timed (a new device costs a node creation the runs must not pay)."""
    warm = await simulator.run()
    if warm.errors:
        raise click.ClickException(f"warm-up failed: {warm.last_error}")
    return warm


@dataclass(slots=True, frozen=True)
class Fleet:
    """The simulated devices of one bench run and where they send; `rate`: messages a second
    over all devices (0: as fast as they are taken)."""

    url: str
    topic: str
    devices: int
    qos: int
    mqtt_host: str
    mqtt_port: int
    token: str = ""
    rate: float = 0.0

    def simulator(self, transport: str, count: int, *, ack: bool = False, paced: bool = True) -> Simulator:
        return soil_simulator(
            self.url,
            self.topic,
            self.devices,
            count,
            transport,
            ack=ack,
            qos=self.qos,
            seed=SIM_SEED,
            mqtt_host=self.mqtt_host,
            mqtt_port=self.mqtt_port,
            token=self.token,
            rate=self.rate / self.devices if paced else 0.0,
        )

    async def start(self, client: Client) -> str:
        """The bench's ingest node (durable), with every device created: its id."""
        ingest = await make_ingest(client, self.topic, devices=self.devices)
        await warm_up(self.simulator("nats", 1, ack=True, paced=False))
        return ingest


async def make_ingest(client: Client, topic: str, *, durable: bool = True, devices: int = 0) -> str:
    """An ingest node for the simulated soil sensors on `<topic>/<device>`, listening; `devices`:
    how many it must be able to create (past the node's default `maxDevices`, 1,000)."""
    ingest = await client.create_node(
        client.root_id,
        "ingest",
        [
            Point("description", "siot bench mqtt"),
            Point("topic", f"{topic}/+"),
            Point("deviceField", "name"),
            Point("field", "humidity", key="humidity"),
            Point("durable", int(durable)),
            *([Point("maxDevices", devices)] if devices > DEFAULT_MAX_DEVICES else []),
        ],
    )
    await wait_state(client, ingest, ListenerState.LISTENING)
    return ingest


async def set_durable(client: Client, ingest: str, durable: bool) -> None:
    """Switch the node's `durable` and wait until its consumer on `$MQTT_msgs` is there (or gone)."""
    await client.send_points(ingest, [Point("durable", int(durable))])
    js = client.nc.jetstream()
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            await js.consumer_info(MQTT_STREAM, consumer_name(ingest))
            exists = True
        except nats.js.errors.NotFoundError:
            exists = False
        if exists == durable:
            return
        await asyncio.sleep(POLL_S)
    raise click.ClickException(
        f"the ingest node did not switch to durable={durable} in {SWITCH_TIMEOUT_S:.0f} s"
    )


async def accepted_points(client: Client, *, attempts: int = 1) -> int:
    """The store's accepted points; a busy daemon may not answer in time, so try `attempts` times."""
    for attempt in range(attempts):
        try:
            return int((await client.stats())["acceptedPoints"])
        except RequestFailed:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def quiet_accepted_points(client: Client) -> int:
    """The accepted points once they stop moving: what a previous run left queued is not counted
    in the next."""
    last = await accepted_points(client, attempts=STATS_ATTEMPTS)
    while True:
        await asyncio.sleep(QUIET_S)
        now = await accepted_points(client, attempts=STATS_ATTEMPTS)
        if now == last:
            return now
        last = now


async def follow_store(
    client: Client, before: int, sent: Callable[[], int | None], *, start: float
) -> tuple[int, float]:
    """Follow the store's accepted points past `before` until they reach `sent()` (None while
    the sender still runs) or make no progress for STALL_S after it: (committed, time of the
    last commit seen)."""
    committed, last_progress, done_at = 0, start, start
    while True:
        await asyncio.sleep(POLL_S)
        try:
            now_committed = await accepted_points(client) - before
        except RequestFailed:  # no reply in time: the daemon is flooded (plain NATS publishes)
            now_committed = committed
        now = time.perf_counter()
        if now_committed != committed:
            committed, last_progress, done_at = now_committed, now, now
        target = sent()
        if target is not None and (committed >= target or now - last_progress > STALL_S):
            return committed, done_at


async def measure(client: Client, name: str, simulator: Simulator, pid: int | None = None) -> Run:
    """Run the simulator and follow the store until every message it sent is committed (or no
    progress for STALL_S after the simulator finished, when something was lost)."""
    before = await quiet_accepted_points(client)
    cpu_before = daemon_cpu_s(pid)
    start = time.perf_counter()
    sim_task = asyncio.create_task(simulator.run())

    def sent() -> int | None:
        return sim_task.result().points_sent if sim_task.done() else None

    committed, done_at = await follow_store(client, before, sent, start=start)
    summary: Summary = sim_task.result()
    cpu_after = daemon_cpu_s(pid)
    return Run(
        name=name,
        sent=summary.messages_sent,
        committed=committed,
        seconds=done_at - start,
        sender_msgs_s=summary.rate,
        errors=summary.errors,
        last_error=summary.last_error,
        daemon_cpu_s=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
    )


async def raw_limit(client: Client, fleet: Fleet) -> float:
    """The bare nats-py publish rate of one device's payload: the client's limit."""
    sample = fleet.simulator("nats", 1)
    payload = sample.messages(sample.ids[0], {"humidity": 29.5}, time.time_ns())[1]
    return await raw_publish_msgs_s(client.nc, payload, RAW_MESSAGES)


def run_fields(run: Run) -> dict[str, Any]:
    return asdict(run) | {"msgs_s": run.msgs_s, "cpu_us_per_msg": run.cpu_us_per_msg}


async def mqtt_main(instance: Instance, fleet: Fleet, messages: int) -> dict[str, Any]:
    client = await connect_when_ready(instance, fleet.token)
    per_device = max(1, messages // fleet.devices)
    try:
        ingest = await fleet.start(client)
        raw = await raw_limit(client, fleet)
        pid = instance.pid
        runs = [
            await measure(client, "JSON over NATS → ingest → store", fleet.simulator("nats", per_device), pid)
        ]
        if fleet.qos == 1:
            name = "JSON over MQTT QoS 1 → ingest (durable: PUBACK once held) → store"
            runs.append(await measure(client, name, fleet.simulator("mqtt", per_device), pid))
            await set_durable(client, ingest, False)
            name = "JSON over MQTT QoS 1 → ingest (durable=false: the broker's PUBACK) → store"
            runs.append(await measure(client, name, fleet.simulator("mqtt", per_device), pid))
        else:
            name = "JSON over MQTT QoS 0 → ingest → store"
            runs.append(await measure(client, name, fleet.simulator("mqtt", per_device), pid))
        await client.delete_node(ingest, client.root_id)
        return {
            "url": instance.url,
            "devices": fleet.devices,
            "messages": per_device * fleet.devices,
            "qos": fleet.qos,
            "rate": fleet.rate,
            "raw_publish_msgs_s": raw,
            "runs": [run_fields(run) for run in runs],
        }
    finally:
        await client.close()


def print_report(report: dict[str, Any]) -> None:
    pace = f", paced at {report['rate']:,.0f} msgs/s" if report["rate"] else ""
    click.echo(
        f"siot bench mqtt against {report['url']}: {report['devices']} devices, "
        f"{report['messages']:,} JSON messages per run (one point each){pace}"
    )
    for run in report["runs"]:
        lost = run["sent"] - run["committed"]
        click.echo(f"\n{run['name']}")
        click.echo(
            f"  committed       {run['msgs_s']:>10,.0f} msgs/s   ({run['committed']:,}/{run['sent']:,} "
            f"committed in {run['seconds']:.2f} s, {run['errors']} send errors"
            + (f", {lost:,} LOST" if lost else "")
            + ")"
        )
        click.echo(f"  devices sent    {run['sender_msgs_s']:>10,.0f} msgs/s")
        if run["cpu_us_per_msg"] is not None:
            click.echo(
                f"  daemon CPU      {run['cpu_us_per_msg']:>10,.0f} µs/msg   siot serve + its nats-server"
            )
        if run["last_error"]:
            click.echo(f"  last error      {run['last_error']}")
    click.echo(
        f"\nraw limit       {report['raw_publish_msgs_s']:>10,.0f} msgs/s   nats-py publish, same payload"
    )


@dataclass(slots=True)
class Drain:
    """A burst the devices published while `siot serve` was stopped (nats-server took, stored and
    PUBACKed it), drained after SIGCONT: the MQTT path's own ceiling behind the broker, with no
    Python sender competing for the cores. CPU is split by process and phase, from /proc."""

    sent: int
    acknowledged: int  # PUBACKs the devices got, all while siot was stopped
    committed: int  # accepted points after the drain (`siot.stats`)
    stored: int  # readings that reached history
    send_errors: int
    burst_seconds: float
    drain_seconds: float  # SIGCONT to the last commit seen
    siot_cpu_s: float  # during the drain (it is stopped during the burst)
    nats_intake_cpu_s: float  # nats-server during the burst: MQTT in, the $MQTT_msgs store, PUBACKs
    nats_drain_cpu_s: float  # nats-server during the drain: delivery to siot, its acks and writes

    @property
    def msgs_s(self) -> float:
        return self.stored / self.drain_seconds if self.drain_seconds else 0.0

    def ms_per_msg(self, cpu: float) -> float | None:
        return cpu / self.stored * 1e3 if self.stored else None

    def fields(self) -> dict[str, Any]:
        total = self.siot_cpu_s + self.nats_intake_cpu_s + self.nats_drain_cpu_s
        return asdict(self) | {
            "drain_msgs_s": self.msgs_s,
            "siot_cpu_ms_per_msg": self.ms_per_msg(self.siot_cpu_s),
            "nats_drain_cpu_ms_per_msg": self.ms_per_msg(self.nats_drain_cpu_s),
            "nats_intake_cpu_ms_per_msg": self.ms_per_msg(self.nats_intake_cpu_s),
            "total_cpu_ms_per_msg": self.ms_per_msg(total),
        }


def process_cpu_s(pid: int) -> float:
    """CPU seconds of one process of our own instance; the drain has no figure without them."""
    cpu = cpu_s(pid)
    if cpu is None:
        raise click.ClickException(f"cannot read /proc/{pid}/stat")
    return cpu


def wait_stopped(pid: int) -> None:
    """Until the kernel has stopped `pid` (state T): SIGSTOP is delivered asynchronously, and the
    CPU read next must be its last."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise click.ClickException(f"pid {pid} did not stop in {STOP_TIMEOUT_S:.0f} s")
        time.sleep(0.001)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """`pid` SIGSTOPped for the block, and SIGCONTed however the block ends: no stopped daemon
    may outlive the bench (a stopped process ignores SIGTERM until continued)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_stopped(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def drain_burst(client: Client, siot_pid: int, ingest: str, burst: Simulator) -> Drain:
    """Stop siot, let `burst` publish into nats-server (the PUBACK of the durable path comes from
    nats-server's own store, so the devices are not held up), continue siot and time the drain."""
    nats_pid = nats_server_pid(siot_pid)
    before = await quiet_accepted_points(client)
    stored_before = await count_stored(client, ingest)
    nats_start = process_cpu_s(nats_pid)
    with stopped(siot_pid):
        siot_start = process_cpu_s(siot_pid)
        burst_start = time.perf_counter()
        summary = await burst.run()
        burst_seconds = time.perf_counter() - burst_start
        nats_burst = process_cpu_s(nats_pid)
        start = time.perf_counter()  # SIGCONT follows at once
    committed, done_at = await follow_store(client, before, lambda: summary.points_sent, start=start)
    siot_end, nats_end = process_cpu_s(siot_pid), process_cpu_s(nats_pid)
    return Drain(
        sent=summary.messages_sent,
        acknowledged=summary.acked,
        committed=committed,
        stored=await count_stored(client, ingest) - stored_before,
        send_errors=summary.errors,
        burst_seconds=burst_seconds,
        drain_seconds=done_at - start,
        siot_cpu_s=siot_end - siot_start,
        nats_intake_cpu_s=nats_burst - nats_start,
        nats_drain_cpu_s=nats_end - nats_burst,
    )


async def drain_main(instance: Instance, fleet: Fleet, messages: int) -> dict[str, Any]:
    """The drain beside, in the same run, the durable MQTT path at the devices' full rate and the
    raw nats-py publish rate."""
    assert instance.pid is not None, "--drain needs an instance of our own"
    client = await connect_when_ready(instance, fleet.token)
    per_device = max(1, messages // fleet.devices)
    try:
        ingest = await fleet.start(client)
        raw = await raw_limit(client, fleet)
        name = "JSON over MQTT QoS 1 → ingest (durable) → store, devices at full rate"
        full_rate = await measure(client, name, fleet.simulator("mqtt", per_device), instance.pid)
        drain = await drain_burst(client, instance.pid, ingest, fleet.simulator("mqtt", per_device))
        await client.delete_node(ingest, client.root_id)
    finally:
        await client.close()
    return {
        "url": instance.url,
        "devices": fleet.devices,
        "messages": per_device * fleet.devices,
        "raw_publish_msgs_s": raw,
        "full_rate": run_fields(full_rate),
        "drain": drain.fields(),
    }


def print_drain_report(report: dict[str, Any]) -> None:
    d, full = report["drain"], report["full_rate"]
    click.echo(
        f"siot bench mqtt --drain against {report['url']}: {report['devices']} devices, "
        f"{report['messages']:,} QoS 1 messages published while siot serve was stopped (SIGSTOP), "
        "then drained (SIGCONT); ingest node durable"
    )
    click.echo(
        f"\nburst           {d['sent']:>10,} sent, {d['acknowledged']:,} PUBACKed by nats-server in "
        f"{d['burst_seconds']:.2f} s, {d['send_errors']} send errors"
    )
    click.echo(
        f"drained         {d['drain_msgs_s']:>10,.0f} msgs/s   ({d['stored']:,} stored in history, "
        f"{d['committed']:,} accepted points, in {d['drain_seconds']:.2f} s after SIGCONT)"
    )
    for label, key, note in (
        ("siot serve", "siot_cpu_ms_per_msg", "during the drain"),
        (
            "nats-server",
            "nats_drain_cpu_ms_per_msg",
            "during the drain: delivery to siot, acks, siot's writes",
        ),
        ("nats-server in", "nats_intake_cpu_ms_per_msg", "during the burst: MQTT in, its stream, PUBACKs"),
        ("total", "total_cpu_ms_per_msg", "siot serve + its nats-server, burst and drain"),
    ):
        click.echo(f"  {label:<14}{d[key] or 0:>10.3f} ms/msg CPU   {note}")
    click.echo(
        f"\nfull rate       {full['msgs_s']:>10,.0f} msgs/s   devices sending as fast as PUBACKs come, "
        f"{(full['cpu_us_per_msg'] or 0) / 1e3:.3f} ms/msg CPU (siot serve + its nats-server), "
        f"{full['committed']:,}/{full['sent']:,} committed"
    )
    click.echo(
        f"raw limit       {report['raw_publish_msgs_s']:>10,.0f} msgs/s   nats-py publish, same payload"
    )


def print_log_check(report: dict[str, Any]) -> None:
    """What the daemon's log says beyond the figures: a figure from a daemon that logged errors
    on the way is suspect."""
    if "log_errors" not in report:  # --url: not our daemon, not our log
        return
    if not report["log_errors"]:
        click.echo("daemon log      no ERRORs or tracebacks")
        return
    click.echo(f"daemon log      {report['log_errors']} ERRORs or tracebacks, e.g.:", err=True)
    for block in report["log_error_samples"]:
        click.echo(block, err=True)


@dataclass(slots=True)
class KillTrial:
    """One SIGKILL trial: PUBACKs the devices got, readings found in history after the restart,
    and the time from the first send to the last PUBACK."""

    path: str
    trial: int
    acknowledged: int
    stored: int
    seconds: float
    send_errors: int
    held_at_kill: int | None = None  # durable: messages nats-server held, not yet acked by siot

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - self.stored)

    @property
    def msgs_s(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0


def wait_ports_free(*ports: int) -> None:
    """The killed instance's nats-server (SIGTERMed by the kernel when siot dies) has let go."""
    deadline = time.monotonic() + PORT_FREE_TIMEOUT_S
    for port in ports:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            if time.monotonic() > deadline:
                raise click.ClickException(f"port {port} still busy {PORT_FREE_TIMEOUT_S:.0f} s after a kill")
            time.sleep(0.05)


async def count_stored(client: Client, ingest: str) -> int:
    """Readings in history, over every device of the ingest node."""
    total = 0
    for child in await client.children(ingest):
        total += len(await client.history(child.id, "humidity", limit=1_000_000))
    return total


async def settle(client: Client, ingest: str, target: int) -> int:
    """The stored count once it reaches `target` or has not grown for KILL_SETTLE_S."""
    last, changed_at = -1, time.monotonic()
    while True:
        count = await count_stored(client, ingest)
        now = time.monotonic()
        if count != last:
            last, changed_at = count, now
        if count >= target or now - changed_at > KILL_SETTLE_S:
            return count
        await asyncio.sleep(0.5)


async def kill_trial(workdir: Path, *, durable: bool, trial: int, devices: int, messages: int) -> KillTrial:
    nats_port, mqtt_port = _free_port(), _free_port()
    args = ["--mqtt-port", str(mqtt_port)]
    url = f"nats://127.0.0.1:{nats_port}"
    topic = f"siot-kill-{secrets.token_hex(4)}"

    def simulator(transport: str, count: int, *, ack: bool = False) -> Simulator:
        return soil_simulator(
            url, topic, devices, count, transport, ack=ack, qos=1, seed=SIM_SEED + trial, mqtt_port=mqtt_port
        )

    held_at_kill = None
    with serve_process(workdir, nats_port, args) as instance:
        client = await connect_when_ready(instance, "")
        try:
            ingest = await make_ingest(client, topic, durable=durable, devices=devices)
            warm = await warm_up(simulator("nats", 1, ack=True))
            summary = await simulator("mqtt", max(1, messages // devices)).run()
            if durable:  # one request (~1 ms): what the kill is about to interrupt
                info = await client.nc.jetstream().consumer_info(MQTT_STREAM, consumer_name(ingest))
                held_at_kill = info.num_pending + info.num_ack_pending
            assert instance.proc is not None
            os.kill(instance.proc.pid, signal.SIGKILL)  # the last PUBACK is in: now
            instance.proc.wait()
        finally:
            with contextlib.suppress(Exception):
                await client.nc.close()
    wait_ports_free(nats_port, mqtt_port)
    with serve_process(workdir, nats_port, args) as instance:
        client = await connect_when_ready(instance, "")
        try:
            # each warm-up message is a reading too
            stored = await settle(client, ingest, summary.acked + warm.acked) - warm.acked
        finally:
            await client.close()
    path = "durable (PUBACK once held)" if durable else "durable=false (broker's PUBACK)"
    return KillTrial(path, trial, summary.acked, stored, summary.seconds, summary.errors, held_at_kill)


async def kill_main(*, devices: int, messages: int, trials: int) -> dict[str, Any]:
    results = []
    for durable in (True, False):
        for trial in range(1, trials + 1):
            with tempfile.TemporaryDirectory(prefix="siot-bench-kill-") as tmp:
                result = await kill_trial(
                    Path(tmp), durable=durable, trial=trial, devices=devices, messages=messages
                )
            results.append(result)
            click.echo(
                f"{result.path}, trial {trial}: {result.acknowledged:,} acknowledged, "
                f"{result.lost:,} lost, {result.msgs_s:,.0f} msgs/s",
                err=True,
            )
    return {
        "devices": devices,
        "messages": max(1, messages // devices) * devices,
        "trials": [asdict(r) | {"lost": r.lost, "msgs_s": r.msgs_s} for r in results],
    }


def print_kill_report(report: dict[str, Any]) -> None:
    click.echo(
        f"siot bench mqtt --kill: {report['devices']} devices, {report['messages']:,} QoS 1 messages "
        "per trial; siot serve SIGKILLed right after the last PUBACK, restarted, history counted"
    )
    click.echo(
        f"\n{'path':<34} {'trial':>5} {'acknowledged':>12} {'stored':>8} {'lost':>8} {'msgs/s':>8} "
        f"{'held at kill':>12}"
    )
    for t in report["trials"]:
        held = "" if t["held_at_kill"] is None else f"{t['held_at_kill']:,}"
        click.echo(
            f"{t['path']:<34} {t['trial']:>5} {t['acknowledged']:>12,} {t['stored']:>8,} "
            f"{t['lost']:>8,} {t['msgs_s']:>8,.0f} {held:>12}"
            + (f"  ({t['send_errors']} send errors)" if t["send_errors"] else "")
        )
    click.echo(
        "\nmsgs/s: acknowledged (PUBACKs the devices got) per second, first send to last PUBACK;"
        "\nheld at kill: messages nats-server held for the ingest node, not yet committed and acked"
    )


@click.command(name="mqtt")
@click.option(
    "--url",
    envvar="SIOT_URL",
    default=None,
    help="Benchmark this running instance, which must have MQTT on (default: start one in a temp dir).",
)
@click.option("--token", envvar="SIOT_AUTH_TOKEN", default="", help="Auth token of --url (NATS and MQTT).")
@click.option(
    "--mqtt-host",
    envvar="SIOT_MQTT_HOST",
    default=DEFAULT_MQTT_HOST,
    show_default=True,
    help="MQTT listener host of --url.",
)
@click.option(
    "--mqtt-port",
    envvar="SIOT_MQTT_PORT",
    type=int,
    default=None,
    help="MQTT listener port of --url (required with --url; default: a free port for our own instance).",
)
@click.option(
    "--devices",
    envvar="SIOT_BENCH_DEVICES",
    type=click.IntRange(1),
    default=DEFAULT_DEVICES,
    show_default=True,
    help="Simulated devices.",
)
@click.option(
    "--messages",
    envvar="SIOT_BENCH_MESSAGES",
    type=click.IntRange(1),
    default=DEFAULT_MESSAGES,
    show_default=True,
    help="Messages per run, spread evenly over the devices.",
)
@click.option(
    "--qos",
    envvar="SIOT_BENCH_QOS",
    type=click.Choice(["0", "1"]),
    default=str(DEFAULT_QOS),
    show_default=True,
    help="MQTT QoS of the devices (1: each publish waits for the broker's acknowledgement).",
)
@click.option(
    "--kill",
    is_flag=True,
    help="Run the SIGKILL trial instead (own instances only): acknowledged vs stored readings "
    "for the durable path and for durable=false.",
)
@click.option(
    "--trials",
    type=click.IntRange(1),
    default=DEFAULT_TRIALS,
    show_default=True,
    help="Trials per path with --kill.",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Measure the MQTT path's own ceiling instead (own instance, QoS 1, durable): publish "
    "--messages while siot serve is stopped (SIGSTOP; nats-server takes them), then continue it "
    "and time the drain, with the CPU of siot serve and of its nats-server per message.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Pace the runs: messages a second over all devices, open loop (default: as fast as they are taken).",
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def bench_mqtt(
    url: str | None,
    token: str,
    mqtt_host: str,
    mqtt_port: int | None,
    devices: int,
    messages: int,
    qos: str,
    kill: bool,
    trials: int,
    drain: bool,
    rate: float,
    json_: bool,
) -> None:
    """JSON messages/s committed from simulated MQTT devices through an ingest node, beside the
    same JSON over NATS and the raw nats-py publish rate, all measured in this run. At QoS 1 the
    MQTT run is made with the ingest node durable (its default) and with durable=false. With
    --rate every run is paced at that many messages a second.

    Without --url it starts `siot serve --mqtt-port` in a temp dir, checks its log for ERRORs
    and tracebacks once it stopped, and removes the dir. With --url it creates an ingest node
    under the root (on a topic of its own) and deletes it at the end.

    With --drain (own instance): the durable QoS 1 run at full rate, then --messages published
    while `siot serve` is stopped and drained once it continues; what a Python sender on the
    same cores cannot show.

    With --kill: for each path and trial, a fresh `siot serve` takes --messages QoS 1
    messages, is SIGKILLed as soon as the last PUBACK is in, restarted, and its history is
    counted against the PUBACKs.

    Example usage:

    \b
        siot bench mqtt
        siot bench mqtt --qos 0 --messages 100000
        siot bench mqtt --rate 2000
        siot bench mqtt --drain
        siot bench mqtt --url nats://127.0.0.1:4222 --mqtt-port 1883
        siot bench mqtt --kill --trials 3
    """
    check_modes(url=url, qos=int(qos), kill=kill, drain=drain, rate=rate)
    if kill:
        report = _run(kill_main(devices=devices, messages=messages, trials=trials))
        if json_:
            click.echo(dumps(report))
        else:
            print_kill_report(report)
        return

    async def main(instance: Instance, port: int) -> dict[str, Any]:
        topic = f"siot-bench-{secrets.token_hex(4)}"
        fleet = Fleet(instance.url, topic, devices, int(qos), mqtt_host, port, token, rate)
        return await (drain_main if drain else mqtt_main)(instance, fleet, messages)

    if url is None:
        report = run_own(main, mqtt_port or _free_port())
    elif mqtt_port is None:
        raise click.ClickException("with --url, pass --mqtt-port (the instance's MQTT listener)")
    else:
        report = _run(main(Instance(url), mqtt_port))
    if json_:
        click.echo(dumps(report))
        return
    if drain:
        print_drain_report(report)
    else:
        print_report(report)
    print_log_check(report)


def check_modes(*, url: str | None, qos: int, kill: bool, drain: bool, rate: float) -> None:
    """Refuse combinations that would measure something else than asked."""
    if (kill or drain) and url is not None:
        raise click.ClickException("--kill and --drain run instances of their own; leave out --url")
    if kill and (drain or rate):
        raise click.ClickException("--kill is a trial of its own; leave out --drain and --rate")
    if drain and (rate or qos != 1):
        raise click.ClickException(
            "--drain publishes a QoS 1 burst as fast as it can; leave out --rate and --qos"
        )


def run_own(main: Callable[[Instance, int], Awaitable[dict[str, Any]]], mqtt_port: int) -> dict[str, Any]:
    """`main` against a `siot serve --mqtt-port` of our own in a temp dir, with the ERRORs and
    tracebacks of its log (read once it has stopped, so its shutdown counts too) in the report."""
    with tempfile.TemporaryDirectory(prefix="siot-bench-mqtt-") as tmp:
        with serve_process(Path(tmp), _free_port(), ["--mqtt-port", str(mqtt_port)]) as instance:
            report = _run(main(instance, mqtt_port))
        assert instance.log_path is not None
        bad = unexpected_blocks(instance.log_path.read_text(errors="replace"))
    return report | {"log_errors": len(bad), "log_error_samples": bad[:LOG_BLOCKS_KEPT]}
