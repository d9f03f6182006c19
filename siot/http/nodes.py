"""The node endpoints (DESIGN §9): read a node and its children, create, delete, move, write points.

Reads come from the store and its in-memory tree (as the NATS `nodes.*` API's); every write goes
through the in-process client (siot/local.py), so it meets the same checks and errors as the
same write over NATS and is answered after commit. A point written here without an `origin`
gets the user's id: who changed what stays visible in history.

`passwordHash` points are never answered over HTTP (siot/http/access.py `visible`).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from siot import subjects
from siot.api import node_wire
from siot.client import NodeInfo
from siot.codec import decode_points
from siot.errors import SiotError
from siot.http.access import Access, visible
from siot.http.auth import current_user
from siot.http.body import json_body, points_from_json, raw_json
from siot.http.context import HTTP, HttpContext
from siot.http.errors import HttpError, bad_request, json_response
from siot.points import NODE_TYPE, TOMBSTONE, Point, check_token
from siot.subjects import check_node_token

OK = {"ok": True}
MOVE_FIELDS = ("from", "to")


def access_of(request: web.Request) -> Access:
    return Access(request.app[HTTP].app.store, current_user(request))


def node_json(info: NodeInfo) -> dict[str, Any]:
    return node_wire(info.id, info.type, info.parent, visible(info.points), visible(info.edge_points))


def flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0", ""):
        raise bad_request(f"query '{name}' must be true or false, not {text!r}")
    return text in ("true", "1")


def owned(points: list[Point], user: str) -> list[Point]:
    """Points without an origin get the writing user's id."""
    return [p if p.origin else p._replace(origin=user) for p in points]


async def get_node(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    access.check_read(node)
    parent = request.query.get("parent")
    if parent:
        found = await http.app.client.nodes(parent, node, deleted=True)
    else:
        found = await http.app.client.nodes(subjects.ALL, node, deleted=True)
        # Under a live parent in the user's scope first: the edge the user knows the node by.
        found.sort(key=lambda n: (n.deleted, not access.in_scope(n.parent)))
    if not found:
        raise HttpError(404, f"unknown node '{node}'")
    return json_response(node_json(found[0]))


async def get_children(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    node = request.match_info["id"]
    access_of(request).check_read(node)
    node_type = request.query.get("type") or None
    children = await http.app.client.nodes(
        node, subjects.ALL, type=node_type, deleted=flag(request, "deleted")
    )
    return json_response({"nodes": [node_json(c) for c in children]})


async def post_node(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    user = access.user.id
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request('the body must be {"parent": "...", "type": "...", "points": [...], "id"?: "..."}')
    unknown = body.keys() - {"parent", "type", "points", "id"}
    if unknown:
        raise bad_request(f"unknown field(s) {sorted(unknown)}")
    parent, node_type = body.get("parent"), body.get("type")
    if not isinstance(parent, str) or not parent:
        raise bad_request("'parent' must be the id of the new node's parent")
    if not isinstance(node_type, str):
        raise bad_request("'type' must be the new node's type, e.g. \"device\"")
    check_token(node_type, field="type", allow_empty=False)
    node = body.get("id") or str(uuid.uuid4())
    if not isinstance(node, str):
        raise bad_request("'id' must be a string")
    check_node_token(node)
    points = owned(points_from_json(body.get("points", []), http.app.write_path.max_batch_points), user)
    access.check_edge_change(parent, node, node_type)
    if http.app.store.tree.has_node(node):
        raise bad_request(f"node '{node}' exists already; to give it another parent, move it")
    client = http.app.client
    edge = [Point(NODE_TYPE, node_type, origin=user), Point(TOMBSTONE, 0, origin=user)]
    await client.submit(node, edge, parent=parent)
    if points:
        try:
            await client.submit(node, points)
        except SiotError:
            # No half-made node: the edge goes again, the points' error is the answer.
            await client.submit(node, [Point(TOMBSTONE, 1, origin=user)], parent=parent)
            raise
    return json_response({"id": node}, status=201)


def sole_parent(http: HttpContext, access: Access, node: str, given: str | None) -> str:
    if given:
        return given
    access.check_read(node)
    parents = http.app.store.tree.live_parents(node)
    if len(parents) != 1:
        raise bad_request(
            f"node '{node}' has {len(parents)} live parents ({', '.join(sorted(parents))}): give ?parent="
            if parents
            else f"node '{node}' has no live parent"
        )
    return parents[0]


async def delete_node(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    parent = sole_parent(http, access, node, request.query.get("parent"))
    access.check_edge_change(parent, node)
    if http.app.store.tree.edge(parent, node) is None:
        raise HttpError(404, f"node '{node}' has no edge from '{parent}'")
    await http.app.client.submit(node, [Point(TOMBSTONE, 1, origin=access.user.id)], parent=parent)
    return json_response(OK)


async def post_move(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    body = await json_body(request)
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) and body[k] for k in ("from", "to")
    ):
        raise bad_request('the body must be {"from": "<current parent>", "to": "<new parent>"}')
    old, new = body["from"], body["to"]
    access.check_edge_change(old, node)
    access.check_edge_change(new, node)
    state = http.app.store.tree.edge(old, node)
    if state is None or state.deleted:
        raise HttpError(404, f"node '{node}' is not under '{old}'")
    user = access.user.id
    client = http.app.client
    # The new edge first, so the node is never without a parent (a refused one, a cycle say,
    # leaves it where it was).
    await client.submit(
        node, [Point(NODE_TYPE, state.node_type, origin=user), Point(TOMBSTONE, 0, origin=user)], parent=new
    )
    await client.submit(node, [Point(TOMBSTONE, 1, origin=user)], parent=old)
    return json_response(OK)


async def post_points(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    points = decode_points(await raw_json(request), max_points=http.app.write_path.max_batch_points)
    access.check_write_points(node, (p.type for p in points))
    await http.app.client.submit(node, owned(points, access.user.id))
    return json_response(OK)


def setup(app: web.Application, _http: HttpContext) -> None:
    app.router.add_get("/v1/nodes/{id}", get_node)
    app.router.add_get("/v1/nodes/{id}/children", get_children)
    app.router.add_post("/v1/nodes", post_node)
    app.router.add_delete("/v1/nodes/{id}", delete_node)
    app.router.add_post("/v1/nodes/{id}/move", post_move)
    app.router.add_post("/v1/nodes/{id}/points", post_points)
