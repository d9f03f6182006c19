"""Errors of the HTTP API: every refusal is `{"error": "<clear message>"}` with the status DESIGN §9
names, whether a handler raised it, the write path refused the write, or aiohttp refused the
request (unknown route, wrong method, body too large)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from siot.errors import BatchTooLarge, InvalidInput, SiotError, UnknownNode

logger = logging.getLogger(__name__)

# Body of a response: JSON, without the spaces json.dumps puts after separators.
JSON_SEPARATORS = (",", ":")


class HttpError(Exception):
    """A refusal with its HTTP status; `headers` go on the response (e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)


def to_json(body: object) -> str:
    """JSON text of an answer; a bytes point value becomes a base64 string (as `siot ... --json`
    prints it: JSON has no bytes)."""
    return json.dumps(body, separators=JSON_SEPARATORS, default=_bytes_as_base64)


def _bytes_as_base64(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=to_json(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


def status_of(exc: SiotError) -> int:
    """The HTTP status of an error the write path or the store raised: what the NATS API replies
    as `{"error"}` is a 4xx here when the request was wrong, a 503 when the instance cannot take
    it now (full queue, closing, a failed commit: retrying later can succeed)."""
    if isinstance(exc, UnknownNode):
        return 404
    if isinstance(exc, BatchTooLarge):
        return 413
    if isinstance(exc, InvalidInput):
        return 400
    return 503  # StoreBusy, StoreError, a closing store


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every refusal into `{"error"}` JSON with its status. An unexpected exception is logged
    with its traceback and answered 500 with a message that hides nothing of the request."""
    try:
        return await handler(request)
    except HttpError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except SiotError as exc:
        return error_response(status_of(exc), str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, _message(request, exc), headers)
    except Exception:
        logger.exception("http: %s %s failed", request.method, request.path)
        return error_response(500, "internal error; the daemon's log has the details")


def _message(request: web.Request, exc: web.HTTPException) -> str:
    """What aiohttp refused, in words that name the request."""
    if isinstance(exc, web.HTTPNotFound):
        return f"no endpoint {request.method} {request.path} (the API: GET /v1/openapi.json)"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    return (exc.text or exc.reason).strip()  # e.g. "Maximum request body size 8388608 exceeded, ..."
