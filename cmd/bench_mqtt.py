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
    own_instance,
    raw_publish_msgs_s,
    serve_process,
)
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


def daemon_cpu_s(pid: int | None) -> float | None:
    """CPU seconds used so far by `pid` and its children (siot serve and its nats-server), from
    /proc; None where that is not readable (not Linux, or not our own instance)."""
    if pid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(proc: str) -> list[str]:
        with open(f"/proc/{proc}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields after the command name

    try:
        total = 0.0
        for proc in os.listdir("/proc"):
            if not proc.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = stat(proc)
                if int(proc) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
                    total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return total
    except OSError:
        return None


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
) -> Simulator:
    """`count` raw soil-sensor messages from each of `devices` devices on `<topic>/<device>`,
    as fast as they are taken."""
    options = SimOptions(
        devices=devices,
        rate=0,
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


async def measure(client: Client, name: str, simulator: Simulator, pid: int | None = None) -> Run:
    """Run the simulator and follow the store until every message it sent is committed (or no
    progress for STALL_S after the simulator finished, when something was lost)."""
    before = await quiet_accepted_points(client)
    cpu_before = daemon_cpu_s(pid)
    start = time.perf_counter()
    sim_task = asyncio.create_task(simulator.run())
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
        if sim_task.done():
            sent = sim_task.result().points_sent
            if committed >= sent or now - last_progress > STALL_S:
                break
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


async def mqtt_main(
    instance: Instance,
    token: str,
    *,
    mqtt_host: str,
    mqtt_port: int,
    devices: int,
    messages: int,
    qos: int,
) -> dict[str, Any]:
    client = await connect_when_ready(instance, token)
    topic = f"siot-bench-{secrets.token_hex(4)}"
    per_device = max(1, messages // devices)
    try:
        ingest = await make_ingest(client, topic, devices=devices)

        def simulator(transport: str, count: int, *, ack: bool = False) -> Simulator:
            return soil_simulator(
                instance.url,
                topic,
                devices,
                count,
                transport,
                ack=ack,
                qos=qos,
                seed=SIM_SEED,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                token=token,
            )

        # one acknowledged message per device first: the devices exist before anything is timed
        warm = await simulator("nats", 1, ack=True).run()
        if warm.errors:
            raise click.ClickException(f"warm-up failed: {warm.last_error}")
        sample = simulator("nats", 1)
        payload = sample.messages(sample.ids[0], {"humidity": 29.5}, time.time_ns())[1]
        raw = await raw_publish_msgs_s(client.nc, payload, RAW_MESSAGES)
        pid = instance.pid
        runs = [await measure(client, "JSON over NATS → ingest → store", simulator("nats", per_device), pid)]
        if qos == 1:
            name = "JSON over MQTT QoS 1 → ingest (durable: PUBACK once held) → store"
            runs.append(await measure(client, name, simulator("mqtt", per_device), pid))
            await set_durable(client, ingest, False)
            name = "JSON over MQTT QoS 1 → ingest (durable=false: the broker's PUBACK) → store"
            runs.append(await measure(client, name, simulator("mqtt", per_device), pid))
        else:
            name = "JSON over MQTT QoS 0 → ingest → store"
            runs.append(await measure(client, name, simulator("mqtt", per_device), pid))
        await client.delete_node(ingest, client.root_id)
        return {
            "url": instance.url,
            "devices": devices,
            "messages": per_device * devices,
            "qos": qos,
            "raw_publish_msgs_s": raw,
            "runs": [
                asdict(run) | {"msgs_s": run.msgs_s, "cpu_us_per_msg": run.cpu_us_per_msg} for run in runs
            ],
        }
    finally:
        await client.close()


def print_report(report: dict[str, Any]) -> None:
    click.echo(
        f"siot bench mqtt against {report['url']}: {report['devices']} devices, "
        f"{report['messages']:,} JSON messages per run (one point each)"
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
            warm = await simulator("nats", 1, ack=True).run()  # the devices exist before the trial
            if warm.errors:
                raise click.ClickException(f"warm-up failed: {warm.last_error}")
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
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def bench_mqtt(
    url: str | None,
    token: str,
    mqtt_port: int | None,
    qos: str,
    kill: bool,
    trials: int,
    json_: bool,
    **options: Any,
) -> None:
    """JSON messages/s committed from simulated MQTT devices through an ingest node, beside the
    same JSON over NATS and the raw nats-py publish rate, all measured in this run. At QoS 1 the
    MQTT run is made with the ingest node durable (its default) and with durable=false.

    Without --url it starts `siot serve --mqtt-port` in a temp dir and removes it after. With
    --url it creates an ingest node under the root (on a topic of its own) and deletes it at
    the end.

    With --kill: for each path and trial, a fresh `siot serve` takes --messages QoS 1
    messages, is SIGKILLed as soon as the last PUBACK is in, restarted, and its history is
    counted against the PUBACKs.

    Example usage:

    \b
        siot bench mqtt
        siot bench mqtt --qos 0 --messages 100000
        siot bench mqtt --url nats://127.0.0.1:4222 --mqtt-port 1883
        siot bench mqtt --kill --trials 3
    """
    if kill:
        if url is not None:
            raise click.ClickException("--kill runs instances of its own; leave out --url")
        report = _run(kill_main(devices=options["devices"], messages=options["messages"], trials=trials))
        if json_:
            click.echo(dumps(report))
        else:
            print_kill_report(report)
        return

    async def main(instance: Instance, port: int) -> dict[str, Any]:
        return await mqtt_main(instance, token, mqtt_port=port, qos=int(qos), **options)

    with contextlib.ExitStack() as stack:
        if url is None:
            port = mqtt_port or _free_port()
            instance = stack.enter_context(own_instance(extra_args=["--mqtt-port", str(port)]))
        elif mqtt_port is None:
            raise click.ClickException("with --url, pass --mqtt-port (the instance's MQTT listener)")
        else:
            port, instance = mqtt_port, Instance(url)
        report = _run(main(instance, port))
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)
