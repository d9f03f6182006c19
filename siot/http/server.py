"""The HTTP server in the daemon (DESIGN §9): one aiohttp application on the daemon's own loop.

Wiring: siot/app.py enters `HttpServer` right after the NATS API and the in-process client exist
and before the node clients start (when `--http-port` is not 0). So `/healthz` answers 503 while
the node clients start and 200 once they all run, and the server stops after them, its streams
closed first. It is not a node client: it owns no node type, and it must be up, answering 503,
before they are.

Adding routes (e.g. `/metrics`, the web UI): write a route set in a module of this package,

    def setup(app: web.Application, http: HttpContext) -> None:
        app.router.add_get("/metrics", metrics)

and add `setup` to `ROUTE_SETUPS` in siot/http/routes.py (static files: `app.router.add_static`,
or a handler, registered last). A handler reaches the daemon through `request.app[HTTP]`
(siot/http/context.py). What every route gets from the middlewares here:
- errors: raise `HttpError(status, message)` (siot/http/errors.py) or let a `SiotError` of the
  write path through; the answer is `{"error": "..."}` with the status of DESIGN §9;
- request bodies are limited to `HttpConfig.max_body_bytes` (413 past it);
- authentication: every route under `/v1/` needs a bearer token (401 without a valid one) except
  handlers marked `@public`; `current_user(request)` is the caller (siot/http/auth.py). Routes
  outside `/v1/` (`/healthz`, `/metrics`, the web UI's files) are public and check whatever
  they need themselves;
- scope and role checks are the handler's: siot/http/access.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from siot.errors import SiotError
from siot.http.auth import auth_middleware
from siot.http.context import HTTP, HttpConfig, HttpContext
from siot.http.errors import error_middleware
from siot.http.routes import ROUTE_SETUPS, RouteSetup
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

# How long a stopping server waits for requests still being answered. Streams are closed before.
SHUTDOWN_TIMEOUT_S = 2.0


class HttpServer:
    """`async with HttpServer(context, config) as server:` listens on `config.host:config.port`
    when it returns; leaving closes the streams, then the listener."""

    def __init__(
        self, context: AppContext, config: HttpConfig, setups: Sequence[RouteSetup] = ROUTE_SETUPS
    ) -> None:
        """`setups`: the route sets to serve instead of siot/http/routes.py's list (a test)."""
        self.http = HttpContext(app=context, config=config)
        self.setups = tuple(setups)
        self.app = self._build()
        self._runner: web.AppRunner | None = None

    def _build(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware, auth_middleware], client_max_size=self.http.config.max_body_bytes
        )
        app[HTTP] = self.http
        for setup in self.setups:
            setup(app, self.http)
        return app

    async def __aenter__(self) -> HttpServer:
        config = self.http.config
        # access_log=None: one log line per request would be the daemon's loudest output under
        # load; refusals that matter are logged by the write path and the auth module.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host, config.port, ssl_context=config.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SiotError(
                f"cannot serve HTTP on {config.host}:{config.port}: {exc.strerror or exc}; "
                "choose another --http-port, or 0 to switch HTTP off"
            ) from exc
        scheme = "https" if config.ssl_context else "http"
        logger.info("http: serving on %s://%s:%d", scheme, config.host, config.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
