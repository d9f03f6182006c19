"""Client library connection behaviour against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from support import NatsServer, free_port

from siot.client import Client
from siot.errors import ConnectFailed


async def test_first_connect_fails_fast_with_the_url() -> None:
    port = free_port()
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        async with asyncio.timeout(10):  # nats-py's default would retry for 30 s
            await Client.connect(f"nats://127.0.0.1:{port}")


async def test_reconnects_after_the_server_comes_back(nats_server: NatsServer) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await Client.connect(nats_server.url, timeout_s=2, reconnected_cb=on_reconnect)
    try:
        nats_server.stop()
        nats_server.start()  # same port
        async with asyncio.timeout(20):
            await reconnected.wait()
        sub = await client.nc.subscribe("ping")
        await client.nc.publish("ping", b"1")
        assert (await sub.next_msg(timeout=5)).data == b"1"
    finally:
        await client.close()
