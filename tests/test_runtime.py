"""The node-client runtime: the daemon's node clients are one explicit list, in start order, and
each reaches the instance through the in-process client (DESIGN §1)."""

from __future__ import annotations

from pathlib import Path

from support import serve_config

from siot.app import App
from siot.bus import Scope
from siot.errors import InvalidPoint, UnknownNode
from siot.local import LocalClient
from siot.node_clients import NODE_CLIENTS
from siot.points import Point


def test_the_node_clients_and_their_start_order() -> None:
    names = [f"{client.__module__}.{client.__name__}" for client in NODE_CLIENTS]
    assert names == [
        "siot.sync.service.sync_service",  # first: which subtrees belong to edges
        "siot.users.users_client",  # the first admin on a start without users
        "siot.nodes.models.client.model_client",  # before ingest: validators in place
        "siot.nodes.ingest.ingest_client",
        "siot.nodes.manager.start",  # archive: one runner per archive node
        "siot.nodes.export.export_client",  # db exporters read the log from their cursors
        "siot.nodes.rules.manager.rules_client",  # last: rules act on the others
    ]


async def test_the_in_process_client_writes_through_the_one_path(tmp_path: Path) -> None:
    """Same checks and errors as the wire, an ack after commit, refusals counted like the API's,
    and changes delivered as objects, in commit order."""
    async with App(serve_config(tmp_path), node_clients=()) as app:
        client = app.context.client
        assert isinstance(client, LocalClient)
        root = client.root_id
        seen: list[tuple[str, str, str | None, list[str]]] = []
        watch = client.watch(
            root, Scope.SUBTREE, lambda a, c: seen.append((a, c.node, c.parent, [p.type for p in c.points]))
        )
        node = await client.create_node(root, "device", [Point("temp", 21.5, origin="me")])
        assert (await client.get_node(node)).value("temp") == 21.5
        assert seen == [(root, node, root, ["nodeType", "tombstone"]), (root, node, None, ["temp"])]
        for bad, error in [
            ([Point("t", float("nan"))], InvalidPoint),
            ([Point("a.b", 1)], InvalidPoint),
        ]:
            try:
                await client.send_points(node, bad)
            except error:
                pass
            else:
                raise AssertionError(f"{bad} was accepted")
        try:
            await client.send_points("no-such-node", [Point("t", 1)])
        except UnknownNode:
            pass
        else:
            raise AssertionError("a write to an unknown node was accepted")
        assert app.context.write_path.errors[node] == 2 and app.context.write_path.errors["no-such-node"] == 1
        watch.cancel()
        await client.send_points(node, [Point("temp", 22.0)])
        assert len(seen) == 2  # nothing after the watch was cancelled
