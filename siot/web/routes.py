"""The web UI's route set (last in siot/http/routes.py): the static files, public, at `/` and
`/ui/<version>/<file>` (siot/web/assets.py), and the UI's endpoints under `/v1/ui/`
(siot/web/endpoints.py)."""

from __future__ import annotations

from aiohttp import web

from siot.http.context import HttpContext
from siot.http.errors import HttpError
from siot.web.assets import REVALIDATE, Asset, Assets
from siot.web.endpoints import add_routes

ASSETS = web.AppKey("siot_web_assets", Assets)


def _send(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body, gzipped = asset.choose(request.headers.get("Accept-Encoding", ""))
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = asset.content_type
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _send(request, request.app[ASSETS].index, REVALIDATE)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = request.app[ASSETS].lookup(request.match_info["version"], name)
    if found is None:
        raise HttpError(404, f"no such file of the web UI: {name}")
    return _send(request, *found)


def setup(app: web.Application, _http: HttpContext) -> None:
    app[ASSETS] = Assets.from_package()
    add_routes(app)
    app.router.add_get("/ui/{version}/{name:.+}", static_file)
    app.router.add_get("/", index)
