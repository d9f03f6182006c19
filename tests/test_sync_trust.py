"""The sync server writes only what belongs to the edge that sends it (issue 12: sync subjects
trusted anyone). Before, any client could say hello as a new edge and then write any node of
the instance with one sync.up row, or say hello as an existing node and write its subtree."""

from __future__ import annotations

import msgpack
from support import SiotProcess

from siot.client import Client
from siot.errors import RequestFailed
from siot.points import Point


def row(seq: int, node: str, parent: str, ptype: str, value: object, time: int) -> list[object]:
    return [seq, node, parent, ptype, "0", time, msgpack.packb(value), 0, "", "intruder", seq]


async def test_rows_outside_the_edges_subtree_are_refused_and_the_rest_applied(
    siot_process: SiotProcess, siot: Client
) -> None:
    victim = await siot.create_node(siot.root_id, "device", [Point("setpoint", 20, time=1000)])
    child = await siot.create_node(victim, "device", [Point("setpoint", 5, time=1000)])
    hello = await siot.request("sync.hello.intruder", msgpack.packb({"instance": "intruder", "version": 1}))
    assert hello["attached"]
    rows = [
        row(1, victim, "", "setpoint", 99, 2000),  # a node of ours
        row(2, "intruder", "", "temp", 21.5, 2000),  # its own root: fine
        row(3, "new-1", "intruder", "nodeType", "device", 2000),  # a new node under it: fine
        row(4, "new-1", "", "temp", 1.0, 2000),  # ...and that node's points
        row(5, child, "intruder", "nodeType", "device", 2000),  # adopting a node of ours
        row(6, child, "", "setpoint", 99, 2000),
    ]
    reply = await siot.request("sync.up.intruder", msgpack.packb({"from": 0, "to": 6, "rows": rows}))
    assert reply["refused"] == reply["outside"] == 3 and len(reply["errors"]) == 3
    assert "outside the subtree of 'intruder'" in reply["errors"][0]
    assert (await siot.get_node(victim)).value("setpoint") == 20
    assert (await siot.get_node(child)).value("setpoint") == 5
    assert [p.parent for p in await siot.nodes("all", child)] == [victim]
    assert (await siot.get_node("new-1")).value("temp") == 1.0
    assert (await siot.stats())["syncErrors"] == {"intruder": 1}


async def test_an_existing_node_cannot_say_hello_or_sync(siot_process: SiotProcess, siot: Client) -> None:
    victim = await siot.create_node(siot.root_id, "device", [Point("setpoint", 20, time=1000)])
    for subject in (
        f"sync.hello.{victim}",
        f"sync.up.{victim}",
        f"sync.pull.{victim}",
        f"sync.digest.{victim}",
    ):
        try:
            await siot.request(subject, msgpack.packb({"rows": [row(1, victim, "", "setpoint", 99, 2000)]}))
        except RequestFailed as exc:
            assert "not an edge" in str(exc)
        else:
            raise AssertionError(f"{subject} was served for a node that is no edge")
    assert (await siot.get_node(victim)).value("setpoint") == 20
    status = await siot.request("siot.sync.status", msgpack.packb({}))
    assert status["peers"] == []
