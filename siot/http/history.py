"""`GET /v1/nodes/{id}/history`: a node's logged values (DESIGN §9), raw or in time buckets.

Raw: `?type=&key=&start=&end=&limit=` as the NATS `history.*` request, oldest first. With
`every=` (a number and s, m, h or d): buckets of count/min/max/mean/first/last per interval,
computed by SQLite (store/buckets.py); `type` is then required, and every key of it is
aggregated together unless `key` is given. Times are ns since the epoch or RFC 3339; `start`
defaults to the epoch and `end` to a day ahead of now; start inclusive, end exclusive.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

from aiohttp import web

from siot.codec import parse_rfc3339_ns
from siot.errors import InvalidPoint
from siot.http.access import HIDDEN_POINT_TYPES, visible
from siot.http.context import HTTP, HttpContext
from siot.http.errors import bad_request, json_response
from siot.http.nodes import access_of
from siot.points import INT64_MAX, check_token
from siot.store.buckets import BucketReader

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
END_AHEAD_NS = 86_400 * 10**9
EVERY = re.compile(r"^([1-9][0-9]{0,9})([smhd])$")
UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}
BUCKETS = web.AppKey("siot_buckets", BucketReader)


def time_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if not text:
        return default
    if text.isdigit():
        value = int(text)
        if value > INT64_MAX:
            raise bad_request(f"'{name}' is past int64 ns")
        return value
    try:
        return parse_rfc3339_ns(text)
    except InvalidPoint:
        raise bad_request(f"'{name}' must be ns since the epoch or an RFC 3339 time, not {text!r}") from None


def limit_param(request: web.Request) -> int:
    text = request.query.get("limit")
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 0 < int(text) <= MAX_LIMIT:
        raise bad_request(f"'limit' must be 1..{MAX_LIMIT}, not {text!r}")
    return int(text)


def every_param(text: str) -> int:
    match = EVERY.match(text)
    if match is None:
        raise bad_request(f"'every' must be a whole number with s, m, h or d (e.g. 1m), not {text!r}")
    return int(match.group(1)) * UNIT_NS[match.group(2)]


def token_param(request: web.Request, name: str) -> str | None:
    text = request.query.get(name) or None
    if text is not None:
        check_token(text, field=name, allow_empty=False)
    return text


async def get_history(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    node = request.match_info["id"]
    access_of(request).check_read(node)
    ptype, key = token_param(request, "type"), token_param(request, "key")
    if ptype in HIDDEN_POINT_TYPES:
        return json_response({"buckets" if "every" in request.query else "points": []})
    start = time_param(request, "start", 0)
    end = time_param(request, "end", time.time_ns() + END_AHEAD_NS)
    limit = limit_param(request)
    if "every" in request.query:
        if ptype is None:
            raise bad_request("bucketed history needs 'type': buckets of different points mean nothing")
        every = every_param(request.query["every"])
        buckets = await request.app[BUCKETS].buckets(
            node, ptype, key, start=start, end=end, every=every, limit=limit
        )
        return json_response({"buckets": [b.to_json() for b in buckets]})
    points = await http.app.client.history(node, ptype, key, start_ns=start, end_ns=end, limit=limit)
    return json_response({"points": [p.to_wire() for p in visible(points)]})


def setup(app: web.Application, http: HttpContext) -> None:
    async def bucket_reader(app: web.Application) -> AsyncIterator[None]:
        async with BucketReader(http.app.store.config.path) as reader:
            app[BUCKETS] = reader
            yield

    app.cleanup_ctx.append(bucket_reader)
    app.router.add_get("/v1/nodes/{id}/history", get_history)
