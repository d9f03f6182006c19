"""What every HTTP handler reaches through `request.app[HTTP]`: the daemon's `AppContext` (store,
in-process client, bus) and the HTTP settings. Kept apart from server.py so route modules can
import it without importing the server that imports them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aiohttp import web

from siot.runtime import AppContext

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8118
DEFAULT_TOKEN_TTL_S = 86_400.0
# A request body, at most: the NATS API's message limit (nats-server's max_payload), so a batch
# refused over HTTP for its size is one that NATS would refuse too. Past it: 413.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class HttpConfig:
    """`siot serve --http-host/--http-port/--token-ttl`; port 0 means no HTTP server."""

    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # `siot serve --tls-cert/--tls-key` (siot/credentials.py's `server_tls`): HTTPS; reloaded in
    # place on SIGHUP, so new connections get a renewed certificate.
    ssl_context: ssl.SSLContext | None = None


@dataclass(slots=True)
class HttpContext:
    """The daemon as the HTTP handlers see it."""

    app: AppContext
    config: HttpConfig

    @property
    def ready(self) -> bool:
        """Every node client has started (the same flag `siot.stats` serves as `ready`)."""
        return self.app.api.ready


HTTP = web.AppKey("siot_http", HttpContext)
