"""Outbox: many PUB frames handed to nats-py at once, against a real nats-server."""

from __future__ import annotations

import asyncio
import tracemalloc

import nats
import pytest
from support import NatsServer

from siot.outbox import MAX_JOINED_BYTES, Outbox


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


async def test_a_large_fan_out_is_not_copied_per_subject(nats_server: NatsServer) -> None:
    """100 subjects x 256 KB would be 25 MB joined into one buffer; sent one by one through
    nats-py's publish (which waits for the socket when its buffer is full), memory stays small.
    Measured with nobody subscribed (a receiver in this process would count its own buffers);
    then 100 x 16 KB (still past MAX_JOINED_BYTES, so the same path) go to a receiver, which gets
    every message in order (25 MB to one Python receiver under load made it a slow consumer)."""
    sender = await nats.connect(nats_server.url)
    receiver = await nats.connect(nats_server.url)
    payload = b"v" * 256 * 1024
    subjects = [f"big.{i}" for i in range(100)]
    got: list[str] = []
    done = asyncio.Event()

    small = b"s" * 16 * 1024
    assert len(small) * len(subjects) > MAX_JOINED_BYTES

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        assert msg.data == small
        got.append(msg.subject)
        if len(got) == len(subjects):
            done.set()

    try:
        outbox = Outbox(sender)
        outbox.fan_out(subjects, payload)
        tracemalloc.start()
        try:
            await outbox.send()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * 1024 * 1024, f"sending allocated {peak / 1e6:.0f} MB at its peak"
        # Other subjects for delivery: the unsubscribed 25 MB may still be in flight under load.
        await receiver.subscribe("small.>", cb=on_msg)
        await receiver.flush()
        outbox.fan_out([f"small.{i}" for i in range(100)], small)
        await outbox.send()
        async with asyncio.timeout(30):
            await done.wait()
        assert got == [f"small.{i}" for i in range(100)]
    finally:
        await sender.close()
        await receiver.close()
