"""Outbox: many PUB frames handed to nats-py at once, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from support import NatsServer

from siot.outbox import Outbox


async def test_frames_arrive_in_order_with_their_reply_subjects(nats_server: NatsServer) -> None:
    sender = await nats.connect(nats_server.url)
    receiver = await nats.connect(nats_server.url)
    got: list[tuple[str, bytes, str]] = []
    done = asyncio.Event()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        got.append((msg.subject, msg.data, msg.reply))
        if len(got) == 7:
            done.set()

    try:
        await receiver.subscribe("ob.>", cb=on_msg)
        await receiver.flush()
        outbox = Outbox(sender)
        outbox.fan_out(["ob.a", "ob.b", "ob.c"], b"same")
        outbox.add("ob.d", b"", reply="ob.reply.1")  # an empty payload is a valid message
        outbox.add("ob.e", b"x" * 70_000)  # larger than one socket write
        outbox.fan_out(["ob.f", "ob.g"], b"\r\nPUB ob.fake 1\r\n")  # framing survives payload bytes
        assert len(outbox) == 7
        out_before = sender.stats["out_msgs"]
        await outbox.send()
        assert len(outbox) == 0
        async with asyncio.timeout(5):
            await done.wait()
        assert sender.stats["out_msgs"] - out_before == 7
        assert got == [
            ("ob.a", b"same", ""),
            ("ob.b", b"same", ""),
            ("ob.c", b"same", ""),
            ("ob.d", b"", "ob.reply.1"),
            ("ob.e", b"x" * 70_000, ""),
            ("ob.f", b"\r\nPUB ob.fake 1\r\n", ""),
            ("ob.g", b"\r\nPUB ob.fake 1\r\n", ""),
        ]
        await outbox.send()  # nothing queued: a no-op
    finally:
        await sender.close()
        await receiver.close()


async def test_a_closed_connection_refuses_instead_of_dropping_silently(nats_server: NatsServer) -> None:
    sender = await nats.connect(nats_server.url)
    await sender.close()
    outbox = Outbox(sender)
    outbox.add("ob.a", b"1")
    with pytest.raises(nats.errors.ConnectionClosedError):
        await outbox.send()
