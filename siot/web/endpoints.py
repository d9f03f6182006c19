"""The endpoints the web UI needs beyond DESIGN §9, under `/v1/ui/` (so the HTTP server's auth
middleware asks for a token), each checked with the HTTP API's own scope and role rules
(siot/http/access.py):

- `GET /v1/ui/me`: the logged-in user, its role and the roots of its scope;
- `GET /v1/ui/tree`: every node of the user's scope in one compact reply (id, parent, type,
  deleted, name per edge), so the UI can search a 5,000-node tree by description or id
  and knows which nodes have children, without one request per node;
- `GET /v1/ui/status`: `siot stats` and `siot sync status`, for users whose scope is the whole
  instance (they hang under its root);
- `POST /v1/ui/nodes/{id}/undelete` `{"parent"}` and `POST /v1/ui/nodes/{id}/mirror` `{"to"}`:
  the edge writes §9 has no endpoint for (undelete the edge parent -> node; add an edge to -> node
  so the node sits under both), with the same checks as `DELETE` and `move`.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from siot import subjects
from siot.codec import decode_reply
from siot.http.access import Access
from siot.http.auth import current_user
from siot.http.body import json_body
from siot.http.context import HTTP
from siot.http.errors import HttpError, bad_request, json_response
from siot.points import NODE_TYPE, TOMBSTONE, Point
from siot.store.writer import unpack_value
from siot.sync import protocol as sync_protocol

STATUS_TIMEOUT_S = 2.0
# A node's name in the tree: its description, else (a user) its email.
NAMES_SQL = (
    "SELECT node, type, value FROM points WHERE type IN ('description', 'email') AND key = '0' "
    "AND tombstone % 2 = 0"
)
OK = {"ok": True}


def access_of(request: web.Request) -> Access:
    return Access(request.app[HTTP].app.store, current_user(request))


def scope_roots(request: web.Request, access: Access) -> list[str]:
    """Where the user's scope starts: its parents that exist (DESIGN §10)."""
    tree = request.app[HTTP].app.store.tree
    return sorted(p for p in access.roots if tree.has_node(p))


async def me(request: web.Request) -> web.Response:
    access = access_of(request)
    user = access.user
    return json_response(
        {
            "id": user.id,
            "email": user.email,
            "firstName": user.first_name,
            "lastName": user.last_name,
            "role": user.role,
            "scopes": scope_roots(request, access),
            "instance": request.app[HTTP].app.store.root_id,
            "instanceWide": access.whole_instance,
        }
    )


async def tree(request: web.Request) -> web.Response:
    """`roots`, and `nodes` as [id, parent, type, deleted, name] per edge (a root's parent is "";
    the name is the description, or a user's email). Deleted edges are listed but not walked
    below: what hangs only under a deleted node has no live path from the user's parent, so it
    is out of scope."""
    store = request.app[HTTP].app.store
    roots = scope_roots(request, access_of(request))
    edges: list[tuple[str, str, str, bool]] = []
    seen: set[str] = set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        edges.append((root, "", store.tree.node_type(root), False))
        stack = [root]
        while stack:
            parent = stack.pop()
            for child in sorted(store.tree.children.get(parent, ())):
                state = store.tree.edges[(parent, child)]
                edges.append((child, parent, state.node_type, state.deleted))
                if child not in seen:
                    seen.add(child)
                    if not state.deleted:
                        stack.append(child)
    described: dict[str, object] = {}
    for node, point_type, value in await store.fetch(NAMES_SQL):
        if point_type == "description" or node not in described:
            described[node] = unpack_value(value)
    nodes = [
        [node, parent, node_type, int(deleted), _text(described.get(node))]
        for node, parent, node_type, deleted in edges
    ]
    response = json_response({"roots": roots, "nodes": nodes})
    response.enable_compression()  # ~100 bytes a node: 5,000 nodes are 500 KB, ~60 KB gzipped
    return response


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    return uri


async def _ask(request: web.Request, subject: str) -> dict[str, Any]:
    msg = await request.app[HTTP].app.nc.request(subject, b"", timeout=STATUS_TIMEOUT_S)
    return decode_reply(msg.data)


async def status(request: web.Request) -> web.Response:
    """`siot stats` and `siot sync status` in one reply; one that failed is named in `statsError`
    or `syncError` and the other is still given. Sync URIs are shown without credentials."""
    if not access_of(request).whole_instance:
        raise HttpError(403, "the instance's health is shown to users who hang under its root node")
    answers = await asyncio.gather(
        _ask(request, subjects.STATS), _ask(request, sync_protocol.STATUS), return_exceptions=True
    )
    reply: dict[str, Any] = {}
    for name, answer in zip(("stats", "sync"), answers, strict=True):
        if isinstance(answer, asyncio.CancelledError):
            raise answer
        if isinstance(answer, BaseException):
            reply[f"{name}Error"] = f"no answer: {answer or type(answer).__name__}"
        else:
            reply[name] = answer
    for peer in reply.get("sync", {}).get("peers", []):
        peer["uri"] = _without_credentials(peer.get("uri", ""))
    return json_response(_json_safe(reply))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


async def _body_field(request: web.Request, name: str) -> str:
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get(name), str) or not body[name]:
        raise bad_request(f'the body must be {{"{name}": "<node id>"}}')
    return body[name]


async def undelete(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    parent = await _body_field(request, "parent")
    access.check_edge_change(parent, node)
    if http.app.store.tree.edge(parent, node) is None:
        raise HttpError(404, f"node '{node}' has no edge from '{parent}'")
    await http.app.client.submit(node, [Point(TOMBSTONE, 0, origin=access.user.id)], parent=parent)
    return json_response(OK)


async def mirror(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.match_info["id"]
    to = await _body_field(request, "to")
    access.check_read(node)
    node_type = http.app.store.tree.node_type(node)
    access.check_edge_change(to, node, node_type)
    user = access.user.id
    edge = [Point(NODE_TYPE, node_type, origin=user), Point(TOMBSTONE, 0, origin=user)]
    await http.app.client.submit(node, edge, parent=to)
    return json_response(OK)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/ui/me", me)
    app.router.add_get("/v1/ui/tree", tree)
    app.router.add_get("/v1/ui/status", status)
    app.router.add_post("/v1/ui/nodes/{id}/undelete", undelete)
    app.router.add_post("/v1/ui/nodes/{id}/mirror", mirror)
