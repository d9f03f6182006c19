"""Node clients act only on their own instance's nodes: an edge's rules, synced up to the cloud,
run on the edge alone (else every action would fire twice)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rules_support import make_rule, wait_point
from support import SiotProcess, stop_all
from sync_support import connect, until, upstream_settled

from siot.points import Point


async def test_edge_rule_fires_once_not_again_in_the_cloud(tmp_path: Path) -> None:
    cloud_proc = await asyncio.to_thread(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud").start)
    edge_proc = await asyncio.to_thread(
        SiotProcess(
            data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud_proc.url]
        ).start
    )
    try:
        edge, cloud = await connect(edge_proc), await connect(cloud_proc)
        tank = await edge.create_node(edge.root_id, "device", [Point("description", "tank")])
        alarms = await edge.create_node(edge.root_id, "device", [Point("description", "alarms")])
        await make_rule(
            edge,
            edge.root_id,
            "tank full",
            [{"nodeID": tank, "pointType": "level", "valueType": "number", "operator": ">=", "value": 90}],
            [{"action": "setValue", "nodeID": alarms, "pointType": "full", "value": 1}],
        )
        await until(lambda: upstream_settled(edge), timeout_s=60)
        await edge.send_points(tank, [Point("level", 95)])
        assert await wait_point(cloud, alarms, "full", lambda v: v == 1) == 1  # synced up
        # A later marker from the edge, settled both ways: anything the cloud would have fired
        # on seeing `level` has been committed and synced by then.
        await edge.send_points(tank, [Point("marker", 1)])
        await wait_point(cloud, tank, "marker", lambda v: v == 1)
        await until(lambda: upstream_settled(edge), timeout_s=60)
        for side in (edge, cloud):
            fired = await side.history(alarms, "full")
            assert [(p.value, p.origin) for p in fired] == [(1, fired[0].origin)]
        await edge.close()
        await cloud.close()
    finally:
        stop_all(edge_proc, cloud_proc)
