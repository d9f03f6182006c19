"""`siot bench tls`: what TLS and credentials cost, on two instances of our own started side by
side, one plain and one with `--tls-cert` (a certificate from `siot cert`), both with
`--require-credentials`:
- connection setup: sequential NATS connects (TCP, INFO, TLS handshake, CONNECT with the bcrypt
  check of a device credential, the first PONG), median and p95 ms; also anonymous-equivalent
  admin connects for comparison;
- broker throughput: 128-byte messages from one connection through nats-server to another;
- siot writes: points acknowledged after commit (`p.<node>` requests, 64 in flight).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import nats

from siot import credfile
from siot.client import Client
from siot.cmd.certs import make_certificates
from siot.cmd.chaos_support import ServeProcess, free_port
from siot.cmd.common import dumps
from siot.codec import encode
from siot.points import Point

DEFAULT_CONNECTS = 40
DEFAULT_MESSAGES = 200_000
MESSAGE_BYTES = 128
DEFAULT_WRITES = 5_000
WRITES_IN_FLIGHT = 64


async def connect_times(
    url: str, credential: credfile.Credential, tls_ca: str | None, count: int
) -> dict[str, float]:
    """ms per connect, from nothing to a connection that has had its first round trip."""
    samples = []
    tls = credfile.client_tls(tls_ca) if tls_ca else None
    for _ in range(count):
        started = time.perf_counter()
        nc = await nats.connect(url, user=credential.user, password=credential.secret, tls=tls)
        await nc.flush()
        samples.append((time.perf_counter() - started) * 1000)
        await nc.close()
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
    }


async def broker_throughput(
    url: str, admin: credfile.Credential, tls_ca: str | None, count: int
) -> dict[str, Any]:
    tls = credfile.client_tls(tls_ca) if tls_ca else None
    options: dict[str, Any] = {"user": admin.user, "password": admin.secret, "tls": tls}
    publisher = await nats.connect(url, pending_size=16 * 1024 * 1024, **options)
    subscriber = await nats.connect(url, **options)
    received = 0
    done = asyncio.Event()

    async def on_msg(_: Any) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    await subscriber.subscribe("bench.tls", cb=on_msg, pending_msgs_limit=count, pending_bytes_limit=-1)
    await subscriber.flush()
    payload = b"x" * MESSAGE_BYTES
    started = time.perf_counter()
    for index in range(count):
        await publisher.publish("bench.tls", payload)
        if index % 1000 == 0:
            await asyncio.sleep(0)
    await publisher.flush()
    await asyncio.wait_for(done.wait(), 120)
    seconds = time.perf_counter() - started
    await publisher.close()
    await subscriber.close()
    return {
        "messages": count,
        "msgs_s": round(count / seconds),
        "mb_s": round(count * MESSAGE_BYTES / seconds / 1e6, 1),
    }


async def siot_writes(url: str, admin: credfile.Credential, tls_ca: str | None, count: int) -> dict[str, Any]:
    async with await Client.connect(url, credential=admin, tls_ca=tls_ca, reconnect_forever=False) as client:
        node = await client.create_node(await client.load_root(), "device")
        subject = f"p.{node}"
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                next_index += 1
                await client.request(subject, encode([Point("n", next_index).to_wire()]))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WRITES_IN_FLIGHT)))
        seconds = time.perf_counter() - started
    return {"points": count, "points_s": round(count / seconds)}


async def measure(proc: ServeProcess, device: credfile.Credential, options: dict[str, Any]) -> dict[str, Any]:
    url, admin, ca = options["url"], options["credential"], options.get("tls_ca")
    return {
        "url": url,
        "connect_device": await connect_times(url, device, ca, options["connects"]),
        "connect_admin": await connect_times(url, admin, ca, options["connects"]),
        "broker": await broker_throughput(url, admin, ca, options["messages"]),
        "siot_writes": await siot_writes(url, admin, ca, options["writes"]),
    }


async def issue_device(options: dict[str, Any]) -> credfile.Credential:
    async with await Client.connect(
        options["url"],
        credential=options["credential"],
        tls_ca=options.get("tls_ca"),
        reconnect_forever=False,
    ) as admin:
        node = await admin.create_node(await admin.load_root(), "device")
        reply = await admin.request("siot.cred.issue", encode({"node": node}))
    return credfile.Credential(reply["user"], reply["secret"], node)


@click.command("tls")
@click.option("--connects", default=DEFAULT_CONNECTS, show_default=True, type=click.IntRange(5))
@click.option("--messages", default=DEFAULT_MESSAGES, show_default=True, type=click.IntRange(1000))
@click.option("--writes", default=DEFAULT_WRITES, show_default=True, type=click.IntRange(100))
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
def bench_tls(connects: int, messages: int, writes: int, json_: bool) -> None:
    """Connection setup and throughput with TLS off and on (two instances of our own).

    Example usage:

    \b
        siot bench tls
        siot bench tls --connects 100 --messages 500000 --json
    """
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="siot-bench-tls-") as tmp:
        certs = Path(tmp) / "tls"
        make_certificates(certs, (), 30)
        tls_args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
        for name, extra in (("plain", []), ("tls", tls_args)):
            proc = ServeProcess(
                data_dir=Path(tmp) / name, port=free_port(), extra_args=["--require-credentials", *extra]
            )
            proc.start()
            try:
                options = {
                    **proc.client_options(),
                    "connects": connects,
                    "messages": messages,
                    "writes": writes,
                }
                if name == "tls":
                    options["tls_ca"] = str(certs / "ca.pem")

                async def run(options: dict[str, Any] = options, proc: ServeProcess = proc) -> dict[str, Any]:
                    device = await issue_device(options)
                    return await measure(proc, device, options)

                report[name] = asyncio.run(run())
            finally:
                proc.stop()
    if json_:
        click.echo(dumps(report))
        return
    for name, figures in report.items():
        device, admin = figures["connect_device"], figures["connect_admin"]
        broker, writes = figures["broker"], figures["siot_writes"]
        click.echo(
            f"{name:5}  connect (device credential) median {device['median_ms']} ms, "
            f"p95 {device['p95_ms']} ms; admin median {admin['median_ms']} ms"
        )
        click.echo(
            f"       broker {broker['msgs_s']:,} msg/s ({broker['mb_s']} MB/s of {MESSAGE_BYTES}-byte "
            f"messages); siot acked writes {writes['points_s']:,} points/s"
        )
