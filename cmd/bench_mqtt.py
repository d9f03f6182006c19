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
- a bare nats-py publish loop of that payload to a subject nobody handles: the client's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import click

from siot.client import Client
from siot.cmd.bench import (
    Instance,
    _free_port,
    _run,
    connect_when_ready,
    own_instance,
    raw_publish_msgs_s,
)
from siot.cmd.common import dumps
from siot.cmd.mqtt_link import DEFAULT_MQTT_HOST
from siot.cmd.sim import SimOptions, Simulator, Summary
from siot.nodes.listener import ListenerState, wait_state
from siot.points import Point

DEFAULT_DEVICES = 100
DEFAULT_MESSAGES = 50_000
DEFAULT_QOS = 1
RAW_MESSAGES = 200_000
POLL_S = 0.02
STALL_S = 15.0
SIM_SEED = 6


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

    @property
    def msgs_s(self) -> float:
        return self.committed / self.seconds if self.seconds else 0.0


async def make_ingest(client: Client, topic: str) -> str:
    """An ingest node for the simulated soil sensors on `<topic>/<device>`, listening."""
    ingest = await client.create_node(
        client.root_id,
        "ingest",
        [
            Point("description", "siot bench mqtt"),
            Point("topic", f"{topic}/+"),
            Point("deviceField", "name"),
            Point("field", "humidity", key="humidity"),
        ],
    )
    await wait_state(client, ingest, ListenerState.LISTENING)
    return ingest


async def accepted_points(client: Client) -> int:
    return int((await client.stats())["acceptedPoints"])


async def measure(client: Client, name: str, simulator: Simulator) -> Run:
    """Run the simulator and follow the store until every message it sent is committed (or no
    progress for STALL_S after the simulator finished, when something was lost)."""
    before = await accepted_points(client)
    start = time.perf_counter()
    sim_task = asyncio.create_task(simulator.run())
    committed, last_progress, done_at = 0, start, start
    while True:
        await asyncio.sleep(POLL_S)
        now_committed = await accepted_points(client) - before
        now = time.perf_counter()
        if now_committed != committed:
            committed, last_progress, done_at = now_committed, now, now
        if sim_task.done():
            sent = sim_task.result().points_sent
            if committed >= sent or now - last_progress > STALL_S:
                break
    summary: Summary = sim_task.result()
    return Run(
        name=name,
        sent=summary.messages_sent,
        committed=committed,
        seconds=done_at - start,
        sender_msgs_s=summary.rate,
        errors=summary.errors,
        last_error=summary.last_error,
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
        ingest = await make_ingest(client, topic)

        def simulator(transport: str, count: int, *, ack: bool = False) -> Simulator:
            options = SimOptions(
                devices=devices,
                rate=0,
                count=count,
                transport=transport,
                mode="raw",
                preset="soil",
                topic=f"{topic}/{{device}}",
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                qos=qos,
                ack=ack,
                seed=SIM_SEED,
            )
            return Simulator(options, url=instance.url, token=token)

        # one acknowledged message per device first: the devices exist before anything is timed
        warm = await simulator("nats", 1, ack=True).run()
        if warm.errors:
            raise click.ClickException(f"warm-up failed: {warm.last_error}")
        sample = simulator("nats", 1)
        payload = sample.messages(sample.ids[0], {"humidity": 29.5}, time.time_ns())[1]
        raw = await raw_publish_msgs_s(client.nc, payload, RAW_MESSAGES)
        nats_run = await measure(client, "JSON over NATS → ingest → store", simulator("nats", per_device))
        mqtt_run = await measure(
            client, f"JSON over MQTT QoS {qos} → ingest → store", simulator("mqtt", per_device)
        )
        await client.delete_node(ingest, client.root_id)
        return {
            "url": instance.url,
            "devices": devices,
            "messages": per_device * devices,
            "qos": qos,
            "raw_publish_msgs_s": raw,
            "runs": [
                asdict(nats_run) | {"msgs_s": nats_run.msgs_s},
                asdict(mqtt_run) | {"msgs_s": mqtt_run.msgs_s},
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
        if run["last_error"]:
            click.echo(f"  last error      {run['last_error']}")
    click.echo(
        f"\nraw limit       {report['raw_publish_msgs_s']:>10,.0f} msgs/s   nats-py publish, same payload"
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
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print the figures as JSON.")
def bench_mqtt(
    url: str | None, token: str, mqtt_port: int | None, qos: str, json_: bool, **options: Any
) -> None:
    """JSON messages/s committed from simulated MQTT devices through an ingest node, beside the
    same JSON over NATS and the raw nats-py publish rate, all measured in this run.

    Without --url it starts `siot serve --mqtt-port` in a temp dir and removes it after. With
    --url it creates an ingest node under the root (on a topic of its own) and deletes it at
    the end.

    Example usage:

    \b
        siot bench mqtt
        siot bench mqtt --qos 0 --messages 100000
        siot bench mqtt --url nats://127.0.0.1:4222 --mqtt-port 1883
    """

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
