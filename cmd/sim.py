"""`siot sim`: simulated devices publishing realistic data over NATS or MQTT.

Two modes. `points` (default) creates one device node per simulated device (under --parent) and
publishes siot point batches to `p.<device>` — over NATS each batch is a request, acknowledged
after commit. `raw` publishes device-shaped JSON/msgpack objects (the seed examples: soil
humidity, pressure/viscosity) on a topic such as `sensors/<device>`, for an `ingest` node to
map; over NATS these are requests too, answered by the ingest node after commit.
Over MQTT, QoS 1 acknowledgements come from the broker (the message is in), QoS 0 has none.
`--no-ack` makes NATS publishes plain (no reply subject), as a fire-and-forget device sends.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import click

from siot import subjects
from siot.client import Client
from siot.cmd.common import Target, client_options, dumps, json_option, resolve
from siot.cmd.mqtt_link import DEFAULT_MQTT_HOST, DEFAULT_MQTT_PORT, MqttLink
from siot.codec import encode
from siot.errors import RequestFailed, SiotError
from siot.points import NODE_TYPE, TOMBSTONE, Point

DEFAULT_DEVICES = 10
DEFAULT_RATE = 1.0
DEFAULT_DURATION_S = 10.0
DEFAULT_IN_FLIGHT = 256
DEFAULT_MQTT_CONNECTIONS = 4
SHORT_ID_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"


class Shape(StrEnum):
    WALK = "walk"
    SINE = "sine"
    RANDOM = "random"


@dataclass(slots=True)
class FieldSpec:
    """One simulated field: `int`/`float` in lo..hi moving as a random walk, sine or noise, or a
    `static` value. Spec text: `NAME=float:20..40:walk`, `NAME=int:0..9`, `NAME=static:north`."""

    name: str
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    shape: Shape = Shape.WALK
    static: Any = None

    @classmethod
    def parse(cls, text: str) -> FieldSpec:
        name, sep, rest = text.partition("=")
        kind, _, args = rest.partition(":")
        if not sep or not name:
            raise click.BadParameter(f"{text!r}: expected NAME=KIND:..., e.g. humidity=float:20..40:walk")
        if kind == "static":
            return cls(name, kind, static=_parse_static(args))
        if kind not in ("int", "float"):
            raise click.BadParameter(f"{text!r}: kind must be int, float or static, not {kind!r}")
        bounds, _, shape = args.partition(":")
        lo_text, _, hi_text = bounds.partition("..")
        try:
            lo, hi = float(lo_text), float(hi_text)
            return cls(name, kind, lo, hi, Shape(shape or Shape.WALK))
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected {kind}:LO..HI[:walk|sine|random]") from None

    def generator(self, rng: random.Random, phase: float) -> Callable[[float], Any]:
        """A function of elapsed seconds giving this field's next value for one device."""
        if self.kind == "static":
            return lambda t: self.static
        span = self.hi - self.lo
        state = {"v": self.lo + span * rng.random()}

        def value(t: float) -> Any:
            if self.shape is Shape.SINE:
                v = self.lo + span * (0.5 + 0.5 * math.sin(phase + t / 60 * 2 * math.pi))
            elif self.shape is Shape.RANDOM:
                v = self.lo + span * rng.random()
            else:
                v = min(self.hi, max(self.lo, state["v"] + rng.gauss(0, span / 50)))
                state["v"] = v
            return round(v) if self.kind == "int" else round(v, 3)

        return value


def _parse_static(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


@dataclass(slots=True, frozen=True)
class Preset:
    """A seed device: its fields, the topic it publishes on, how it names itself and the time."""

    fields: tuple[str, ...]
    topic: str
    device_field: str
    time_field: str
    time_format: str  # ms | s | rfc3339


PRESETS = {
    "generic": Preset(("temperature=float:15..25:sine",), "sim/{device}", "", "", ""),
    "soil": Preset(("humidity=float:20..40:walk",), "sensors/{device}", "name", "timeStampEpoch", "ms"),
    "pressure": Preset(
        ("pressure=int:700..900:walk", "viscosity=int:30..50:walk"),
        "/pressure/data",
        "deviceid",
        "sensordatetime",
        "rfc3339",
    ),
}


def device_ids(count: int, style: str, seed: int | None) -> list[str]:
    rng = random.Random(seed)
    if style == "uuid":
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    return ["".join(rng.choice(SHORT_ID_ALPHABET) for _ in range(8)) for _ in range(count)]


@dataclass(slots=True)
class Summary:
    """What a run did. `acked` means committed (NATS), or in the broker (MQTT QoS 1)."""

    transport: str
    mode: str
    devices: int
    ack_meaning: str = "committed"
    messages_sent: int = 0
    points_sent: int = 0
    acked: int = 0
    points_acked: int = 0
    errors: int = 0
    seconds: float = 0.0
    last_error: str = ""
    device_ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages_sent / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        ack = self.ack_meaning
        lines = [
            f"sent {self.messages_sent} messages ({self.points_sent} points) from {self.devices} devices "
            f"over {self.transport} in {self.seconds:.1f} s ({self.rate:.0f} msg/s)",
            f"acknowledged {self.acked} messages ({self.points_acked} points): {ack}",
            f"errors {self.errors}" + (f" (last: {self.last_error})" if self.last_error else ""),
        ]
        return "\n".join(lines)


@dataclass(slots=True)
class SimOptions:
    devices: int = DEFAULT_DEVICES
    rate: float = DEFAULT_RATE  # messages per device per second; 0 = as fast as possible
    duration_s: float = DEFAULT_DURATION_S
    count: int = 0  # messages per device; set: overrides duration
    transport: str = "nats"
    mode: str = "points"
    preset: str = "generic"
    fields: tuple[str, ...] = ()
    payload_format: str = "json"
    id_style: str = "short"
    topic: str = ""
    parent: str = "root"
    mqtt_host: str = DEFAULT_MQTT_HOST
    mqtt_port: int = DEFAULT_MQTT_PORT
    qos: int = 1
    ack: bool = True  # NATS: requests answered after commit; False: plain publishes
    in_flight: int = DEFAULT_IN_FLIGHT
    mqtt_connections: int = DEFAULT_MQTT_CONNECTIONS
    seed: int | None = None


class Simulator:
    """Runs one simulation. `progress` (if set) is called about once a second with the summary."""

    def __init__(
        self,
        options: SimOptions,
        *,
        url: str,
        token: str = "",
        progress: Callable[[Summary], None] | None = None,
    ) -> None:
        self.o = options
        self.url = url
        self.token = token
        self.progress = progress
        preset = PRESETS[options.preset]
        self.preset = preset
        self.specs = [FieldSpec.parse(text) for text in (options.fields or preset.fields)]
        self.summary = Summary(options.transport, options.mode, options.devices, self._ack_meaning())
        self.ids = device_ids(options.devices, options.id_style, options.seed)
        self.summary.device_ids = self.ids
        self._slots = asyncio.Semaphore(max(1, options.in_flight))
        self._tasks: set[asyncio.Task[None]] = set()

    def _ack_meaning(self) -> str:
        if self.o.transport == "mqtt":
            return "acknowledged by the broker (QoS 1)" if self.o.qos else "none asked (QoS 0)"
        return "committed" if self.o.ack else "none asked (--no-ack)"

    # ---- payloads ----

    def _encode(self, obj: Any) -> bytes:
        return dumps(obj, indent=None).encode() if self.o.payload_format == "json" else encode(obj)

    def _timestamp(self, now_ns: int) -> Any:
        fmt = self.preset.time_format
        if fmt == "ms":
            return now_ns // 1_000_000
        if fmt == "s":
            return now_ns // 1_000_000_000
        return (
            datetime.fromtimestamp(now_ns / 1e9, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z")
        )

    def messages(self, device: str, values: dict[str, Any], now_ns: int) -> tuple[str, bytes, int]:
        """(subject or topic, payload, number of points) of one reading."""
        if self.o.mode == "points":
            batch = [Point(name, value, time=now_ns).to_wire() for name, value in values.items()]
            target = (
                subjects.points(device).replace(".", "/")
                if self.o.transport == "mqtt"
                else subjects.points(device)
            )
            return target, self._encode(batch), len(batch)
        message = dict(values)
        if self.preset.device_field:
            message[self.preset.device_field] = device
        if self.preset.time_field:
            message[self.preset.time_field] = self._timestamp(now_ns)
        topic = (self.o.topic or self.preset.topic).replace("{device}", device)
        if self.o.transport == "nats":
            topic = topic.replace("/", ".")
        return topic, self._encode(message), len(values)

    # ---- the run ----

    def _schedule(self) -> Iterator[float]:
        """Start offsets (s) of each round of one message per device."""
        rounds = self.o.count or (
            math.inf if self.o.rate <= 0 else max(1, round(self.o.duration_s * self.o.rate))
        )
        n = 0
        while n < rounds:
            yield 0.0 if self.o.rate <= 0 else n / self.o.rate
            n += 1

    async def run(self) -> Summary:
        if self.o.transport == "nats":
            return await self._run_nats()
        return await self._run_mqtt()

    async def _loop(self, send: Callable[[str, bytes, int], Awaitable[None]]) -> None:
        rng = random.Random(self.o.seed)
        generators = [
            {s.name: s.generator(rng, rng.random() * 2 * math.pi) for s in self.specs} for _ in self.ids
        ]
        start = time.monotonic()
        deadline = start + self.o.duration_s if not self.o.count and self.o.rate <= 0 else math.inf
        last_report = start
        for offset in self._schedule():
            now = time.monotonic()
            if now >= deadline:
                break
            if offset > now - start:
                await asyncio.sleep(offset - (now - start))
            elapsed = time.monotonic() - start
            now_ns = time.time_ns()
            for device, gens in zip(self.ids, generators, strict=True):
                values = {name: gen(elapsed) for name, gen in gens.items()}
                target, payload, points = self.messages(device, values, now_ns)
                await self._slots.acquire()
                self.summary.messages_sent += 1
                self.summary.points_sent += points
                await send(target, payload, points)
            if self.progress and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                self.summary.seconds = last_report - start
                self.progress(self.summary)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.summary.seconds = time.monotonic() - start

    def _track(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failed(self, exc: BaseException) -> None:
        self.summary.errors += 1
        self.summary.last_error = str(exc)

    async def _acked(self, waiter: Any, points: int, *, is_ack: bool = True) -> None:
        """Wait for one send; it holds its slot until then. With `is_ack` False (MQTT QoS 0) the
        wait is only for paho to write it out, which is no acknowledgement: it is not counted,
        but the run does not end (and close its connections) before every message is out."""
        try:
            await waiter
            if is_ack:
                self.summary.acked += 1
                self.summary.points_acked += points
        except (TimeoutError, SiotError, OSError) as exc:
            self._failed(exc)
        finally:
            self._slots.release()

    async def _run_nats(self) -> Summary:
        client = await Client.connect(
            self.url, name="siot-sim", token=self.token or None, reconnect_forever=False
        )
        try:
            if self.o.mode == "points":
                parent = await resolve(client, self.o.parent)
                for n, device in enumerate(self.ids):
                    await client.create_node(
                        parent, "device", [Point("description", f"sim-{n}")], node_id=device
                    )

            async def send(subject: str, payload: bytes, points: int) -> None:
                if self.o.ack:
                    self._track(self._acked(client.request(subject, payload), points))
                    return
                try:
                    await client.nc.publish(subject, payload)
                except Exception as exc:  # nats-py: connection closed or draining
                    self._failed(exc)
                finally:
                    self._slots.release()

            await self._loop(send)
        finally:
            await client.close()
        return self.summary

    async def _run_mqtt(self) -> Summary:
        links = [
            await MqttLink.connect(
                self.o.mqtt_host,
                self.o.mqtt_port,
                client_id=f"siot-sim-{secrets.token_hex(4)}-{n}",
                token=self.token,
            )
            for n in range(max(1, min(self.o.mqtt_connections, self.o.devices)))
        ]
        try:
            if self.o.mode == "points":
                if self.o.parent == "root":
                    raise RequestFailed("over MQTT, pass --parent NODE_ID (the root id: `siot tree`)")
                edge = self._encode([Point(NODE_TYPE, "device").to_wire(), Point(TOMBSTONE, 0).to_wire()])
                for n, device in enumerate(self.ids):
                    link = links[n % len(links)]
                    await link.publish(f"p/{device}/{self.o.parent}", edge, qos=1)
                    desc = self._encode([Point("description", f"sim-{n}").to_wire()])
                    await link.publish(f"p/{device}", desc, qos=1)
            counter = iter(range(sys.maxsize))

            async def send(topic: str, payload: bytes, points: int) -> None:
                link = links[next(counter) % len(links)]
                future = link.publish(topic, payload, qos=self.o.qos)
                self._track(self._acked(future, points, is_ack=bool(self.o.qos)))

            await self._loop(send)
        finally:
            for link in links:
                link.close()
        return self.summary


@click.command()
@client_options
@click.option(
    "--devices",
    "-n",
    envvar="SIOT_SIM_DEVICES",
    default=DEFAULT_DEVICES,
    show_default=True,
    type=click.IntRange(1),
    help="Number of simulated devices.",
)
@click.option(
    "--rate",
    envvar="SIOT_SIM_RATE",
    default=DEFAULT_RATE,
    show_default=True,
    type=click.FloatRange(0),
    help="Messages per device per second (0 = as fast as acks allow).",
)
@click.option(
    "--duration",
    "duration_s",
    envvar="SIOT_SIM_DURATION",
    default=DEFAULT_DURATION_S,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to run (ignored with --count).",
)
@click.option(
    "--count",
    envvar="SIOT_SIM_COUNT",
    default=0,
    type=click.IntRange(0),
    help="Messages per device, then stop.",
)
@click.option(
    "--transport",
    envvar="SIOT_SIM_TRANSPORT",
    default="nats",
    show_default=True,
    type=click.Choice(["nats", "mqtt"]),
    help="Publish over NATS (--url) or MQTT (--mqtt-host/--mqtt-port).",
)
@click.option(
    "--mode",
    envvar="SIOT_SIM_MODE",
    default="points",
    show_default=True,
    type=click.Choice(["points", "raw"]),
    help="points: point batches to p.<device> (devices created under --parent); "
    "raw: device-shaped objects on --topic, for an ingest node.",
)
@click.option(
    "--preset",
    envvar="SIOT_SIM_PRESET",
    default="generic",
    show_default=True,
    type=click.Choice(sorted(PRESETS)),
    help="Seed device to imitate: soil (humidity, name, timeStampEpoch ms on sensors/<device>), "
    "pressure (pressure, viscosity, deviceid, sensordatetime on /pressure/data) or generic.",
)
@click.option(
    "--field",
    "fields",
    envvar="SIOT_SIM_FIELDS",
    multiple=True,
    help="Field spec, repeatable, replaces the preset's: NAME=float:LO..HI[:walk|sine|random], "
    "NAME=int:LO..HI[:...], NAME=static:VALUE.",
)
@click.option(
    "--format",
    "payload_format",
    envvar="SIOT_SIM_FORMAT",
    default="json",
    show_default=True,
    type=click.Choice(["json", "msgpack"]),
    help="Payload encoding.",
)
@click.option(
    "--id-style",
    envvar="SIOT_SIM_ID_STYLE",
    default="short",
    show_default=True,
    type=click.Choice(["short", "uuid"]),
    help="Device ids: 8-character short ids or UUIDs.",
)
@click.option(
    "--topic",
    envvar="SIOT_SIM_TOPIC",
    default="",
    help="Raw mode: topic template ({device} = device id); default: the preset's.",
)
@click.option(
    "--parent",
    envvar="SIOT_SIM_PARENT",
    default="root",
    show_default=True,
    help="Points mode: node the devices are created under (over MQTT: a node id).",
)
@click.option(
    "--mqtt-host",
    envvar="SIOT_MQTT_HOST",
    default=DEFAULT_MQTT_HOST,
    show_default=True,
    help="MQTT listener host.",
)
@click.option(
    "--mqtt-port",
    envvar="SIOT_MQTT_PORT",
    default=DEFAULT_MQTT_PORT,
    show_default=True,
    type=int,
    help="MQTT listener port.",
)
@click.option(
    "--qos",
    envvar="SIOT_SIM_QOS",
    default=1,
    show_default=True,
    type=click.Choice(["0", "1"]),
    help="MQTT QoS (1: the broker acknowledges each message).",
)
@click.option(
    "--ack/--no-ack",
    envvar="SIOT_SIM_ACK",
    default=True,
    show_default=True,
    help="NATS: send each message as a request answered after commit (--ack), or as a plain "
    "publish nobody answers (--no-ack, like MQTT QoS 0).",
)
@click.option(
    "--in-flight",
    envvar="SIOT_SIM_IN_FLIGHT",
    default=DEFAULT_IN_FLIGHT,
    show_default=True,
    type=click.IntRange(1),
    help="Unacknowledged messages allowed at once.",
)
@click.option(
    "--mqtt-connections",
    envvar="SIOT_SIM_MQTT_CONNECTIONS",
    default=DEFAULT_MQTT_CONNECTIONS,
    show_default=True,
    type=click.IntRange(1),
    help="MQTT connections the devices share.",
)
@click.option(
    "--seed",
    envvar="SIOT_SIM_SEED",
    default=None,
    type=int,
    help="Random seed (same seed, same device ids and values).",
)
@json_option
def sim(target: Target, json_: bool, qos: str, **options: Any) -> None:
    """Simulate devices publishing data, then print what was sent and acknowledged.

    Acknowledged means committed to the store (NATS: every message is a request), or received
    by the broker (MQTT QoS 1). A live count goes to stderr once a second.

    Example usage:

    \b
        siot sim -n 50 --rate 2 --duration 30                 # 50 devices, point batches over NATS
        siot sim --mode raw --preset soil --transport mqtt    # soil sensors, for an ingest node
        siot sim --mode raw --preset pressure --count 100 --field pressure=int:0..2000:random
    """
    opts = SimOptions(qos=int(qos), **options)
    tty = sys.stderr.isatty()

    def progress(summary: Summary) -> None:
        line = (
            f"sent {summary.messages_sent}  acked {summary.acked}  errors {summary.errors}"
            f"  ({summary.rate:.0f} msg/s)"
        )
        click.echo(f"\r{line}" if tty else line, err=True, nl=not tty)

    async def main() -> Summary:
        return await Simulator(opts, url=target.url, token=target.token, progress=progress).run()

    try:
        summary = asyncio.run(main())
    except SiotError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot connect: {exc}") from exc
    if tty:
        click.echo("", err=True)
    if json_:
        click.echo(dumps({**asdict(summary), "rate": summary.rate}))
    else:
        click.echo(summary.text())
