"""`/v1/nodes/{id}/credentials`: device and edge credentials over HTTP (issue 16), served by the
daemon's credential service (siot/credentials.py), so HTTP, NATS and the CLI issue them alike.

An `admin` user in whose scope the node is may issue (`POST`, the secret in the answer, once),
list (`GET`, no secrets) and revoke (`DELETE`) them. An edge credential names an edge id that is
not a node yet: the scope check is then on the `parent` it will attach under (the root without).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from siot.errors import InvalidInput
from siot.http.body import json_body
from siot.http.context import HTTP, HttpContext
from siot.http.errors import HttpError, json_response
from siot.http.nodes import access_of


def _service(request: web.Request) -> Any:
    service = request.app[HTTP].app.credentials
    if service is None:
        raise HttpError(503, "this daemon has no credential service")
    return service


async def post_credential(request: web.Request) -> web.Response:
    node = request.match_info["id"]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise HttpError(400, 'the body must be an object, e.g. {} or {"rotate": true, "grace": 600}')
    access = access_of(request)
    store = request.app[HTTP].app.store
    if body.get("kind") == "edge" and not store.tree.has_node(node):
        parent = body.get("parent") or store.root_id
        access.check_manage_credentials(parent if isinstance(parent, str) else store.root_id)
    else:
        access.check_manage_credentials(node)
    try:
        issued = await _service(request).issue({**body, "node": node})
    except InvalidInput as exc:
        raise HttpError(400, str(exc)) from exc
    return json_response({k: issued[k] for k in ("user", "secret", "node", "kind", "expiring")}, status=201)


async def get_credentials(request: web.Request) -> web.Response:
    node = request.match_info["id"]
    access_of(request).check_manage_credentials(node)
    return json_response(await _service(request).list({"node": node}))


async def delete_credentials(request: web.Request) -> web.Response:
    node = request.match_info["id"]
    access_of(request).check_manage_credentials(node)
    return json_response(await _service(request).revoke({"node": node}))


def setup(app: web.Application, _http: HttpContext) -> None:
    app.router.add_post("/v1/nodes/{id}/credentials", post_credential)
    app.router.add_get("/v1/nodes/{id}/credentials", get_credentials)
    app.router.add_delete("/v1/nodes/{id}/credentials", delete_credentials)
