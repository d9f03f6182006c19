"""`GET /metrics`: the daemon's Prometheus metrics (siot/metrics.py, docs/metrics.md). Public, as
Prometheus scrapes without logging in, unless `siot serve --metrics-token` is set: then only with
`Authorization: Bearer <that token>` (Prometheus: `authorization: {credentials: ...}` in the
scrape config). The metrics carry counts and ids, never point values or secrets."""

from __future__ import annotations

import hmac

from aiohttp import web

from siot import metrics
from siot.http.auth import bearer_token, unauthorized
from siot.http.context import HTTP, HttpContext

REGISTRY = web.AppKey("siot_metrics", metrics.CollectorRegistry)


async def get_metrics(request: web.Request) -> web.Response:
    wanted = request.app[HTTP].app.config.metrics_token
    if wanted:
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), wanted.encode()):
            raise unauthorized("/metrics needs 'Authorization: Bearer <the --metrics-token>'")
    body = metrics.render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def setup(app: web.Application, http: HttpContext) -> None:
    app[REGISTRY] = metrics.registry(http.app)
    app.router.add_get("/metrics", get_metrics)
