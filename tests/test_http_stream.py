"""`GET /v1/stream` against a real daemon: changes written over NATS arrive as Server-Sent Events,
a dropped connection resumes from the point log without a gap, a resume the log cannot serve
says `reset`, and a user's stream carries its own group only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from http_support import EventReader, Http, http_daemon
from support import SiotProcess

from siot.client import Client
from siot.points import Point


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiotProcess]:
    with http_daemon(tmp_path_factory.mktemp("stream") / "data") as proc:
        yield proc


async def values_until(events: EventReader, device: str, wanted: set[object]) -> tuple[list[object], int]:
    """Values of `device`'s `n` points from the stream until every one of `wanted` came; and the
    last event id seen."""
    seen: list[object] = []
    last_id = 0
    while not wanted <= set(seen):
        event = await events.next()
        if event["id"] is not None:
            last_id = event["id"]
        data = event["data"]
        if data["node"] == device and data["parent"] is None:
            seen += [p["value"] for p in data["points"] if p["type"] == "n"]
    return seen, last_id


async def test_a_nats_write_arrives_on_the_stream(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    async with admin.session.get(f"/v1/stream?node={device}", headers=admin.headers()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        await nats.send_points(device, [Point("n", 1)])
        event = await EventReader(resp).next()
    assert event["data"]["node"] == device and event["data"]["parent"] is None
    assert [(p["type"], p["value"]) for p in event["data"]["points"]] == [("n", 1)]
    assert event["id"] > 0


async def test_a_dropped_stream_resumes_from_the_log_without_a_gap(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    group = await admin.create(root, "group")
    device = await admin.create(group, "device")
    other = await admin.create(root, "device")  # not under the group: never on its stream
    async with admin.session.get(f"/v1/stream?node={group}", headers=admin.headers()) as resp:
        events = EventReader(resp)
        for n in range(5):
            await nats.send_points(device, [Point("n", n)])
        seen, last_id = await values_until(events, device, set(range(5)))
    assert seen == list(range(5))

    # while the client is away: NATS writes, REST writes, a batch, a late reading, another node
    for n in range(5, 10):
        await nats.send_points(device, [Point("n", n)])
    await admin.call("POST", f"/v1/nodes/{device}/points", json_body=[{"type": "n", "value": 10}])
    await nats.send_points(device, [Point("n", 11, key="b"), Point("n", 12, key="c")])
    await nats.send_points(device, [Point("n", 13, time=1_000_000_000)])  # loses the merge; still history
    await nats.send_points(other, [Point("n", 99)])

    resume = admin.headers({"Last-Event-ID": str(last_id)})
    async with admin.session.get(f"/v1/stream?node={group}", headers=resume) as resp:
        events = EventReader(resp)
        missed, _ = await values_until(events, device, set(range(5, 14)))
        await nats.send_points(device, [Point("n", 14)])  # and then live again
        live, _ = await values_until(events, device, {14})
    assert missed == list(range(5, 14))
    assert live == [14]


async def test_a_resume_the_log_cannot_serve_says_reset(admin: Http) -> None:
    root = await admin.root_id()
    headers = admin.headers({"Last-Event-ID": str(10**12)})
    async with admin.session.get(f"/v1/stream?node={root}", headers=headers) as resp:
        event = await EventReader(resp).next()
    assert event["event"] == "reset"
    await admin.call("GET", f"/v1/stream?node={root}", 400, headers={"Last-Event-ID": "yesterday"})


async def test_a_users_stream_carries_its_group_only(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    group_a, group_b = await admin.create(root, "group"), await admin.create(root, "group")
    dev_a, dev_b = await admin.create(group_a, "device"), await admin.create(group_b, "device")
    viewer = await admin.add_user(group_a, "stream-viewer@example.com", "view")
    # EventSource sends no headers: the token may come as ?access_token=
    async with viewer.session.get(f"/v1/stream?access_token={viewer.token}") as resp:
        assert resp.status == 200
        events = EventReader(resp)
        await nats.send_points(dev_b, [Point("n", "b")])
        await nats.send_points(dev_a, [Point("n", "a")])
        event = await events.next()
        while event["data"]["node"] != dev_a:
            assert event["data"]["node"] != dev_b
            event = await events.next()
    assert event["data"]["points"][0]["value"] == "a"
    await viewer.call("GET", f"/v1/stream?node={group_b}", 403)
