"""Request bodies: JSON only (a body that is not is refused with 400 naming what was expected).
Their size is capped by the application (`client_max_size`, 413 past it: siot/http/server.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from siot.codec import check_batch_size, decode_any, is_json, parse_rfc3339_ns
from siot.http.errors import bad_request
from siot.points import Point, point_from_map


async def raw_json(request: web.Request) -> bytes:
    """The body's bytes, checked to be a JSON object or array (not yet decoded)."""
    data = await request.read()
    if not is_json(data):
        raise bad_request("the body must be a JSON object or array (Content-Type: application/json)")
    return data


async def json_body(request: web.Request) -> Any:
    """The decoded JSON body; malformed JSON is a `DecodeError` (400) with the parser's words."""
    return decode_any(await raw_json(request))


def points_from_json(raw: Any, max_points: int) -> list[Point]:
    """Points given in a JSON body (a list of point maps, or one map): the NATS JSON payload's
    rules (siot/codec.py `decode_points`): `time` in ns or RFC 3339, omitted or 0 = now. An
    empty list is no points (a node created without any)."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise bad_request(f"points must be an array of points, got {type(raw).__name__}")
    if not raw:
        return []
    check_batch_size(len(raw), max_points)
    points = []
    for index, item in enumerate(raw):
        if isinstance(item, dict) and isinstance(item.get("time"), str):
            item = {**item, "time": parse_rfc3339_ns(item["time"], index=index)}
        points.append(point_from_map(item, index))
    return points
