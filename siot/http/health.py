"""`GET /healthz`: 200 `{"ok":true}` once every node client has started, 503 before, for load
balancers and service managers. Public: no token."""

from __future__ import annotations

from aiohttp import web

from siot.http.context import HTTP, HttpContext
from siot.http.errors import error_response, json_response


async def healthz(request: web.Request) -> web.Response:
    if request.app[HTTP].ready:
        return json_response({"ok": True})
    return error_response(503, "starting or stopping: not every node client is running")


def setup(app: web.Application, _http: HttpContext) -> None:
    app.router.add_get("/healthz", healthz)
