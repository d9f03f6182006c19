"""Every route set the HTTP server serves, in registration order: one list, in one place, as
siot/node_clients.py is for node clients. A route set is `setup(app, http)`, which adds its
routes to `app.router` (see siot/http/server.py for the rules a route set follows).

aiohttp matches resources in the order they were added, so a catch-all (the web UI's static
files at `/`) goes last."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from siot.http import auth, credentials, health, history, metrics, nodes, openapi, stream
from siot.http.context import HttpContext
from siot.web import routes as web_routes

RouteSetup = Callable[[web.Application, HttpContext], None]

ROUTE_SETUPS: tuple[RouteSetup, ...] = (
    health.setup,
    auth.setup,
    nodes.setup,
    credentials.setup,
    history.setup,
    stream.setup,
    openapi.setup,
    metrics.setup,
    web_routes.setup,  # the web UI (siot/web): its `/` and `/ui/...` files go last
)
