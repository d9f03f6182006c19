"""Wire encoding (DESIGN §3): msgpack everywhere, JSON accepted where a payload starts with [ or {.

Decoding turns bytes into validated `Point`s or request maps and raises `DecodeError` /
`InvalidPoint` with a message fit to send back to the publisher.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import msgpack

from siot.errors import BatchTooLarge, DecodeError, InvalidPoint
from siot.points import Point, point_from_map

DEFAULT_MAX_BATCH_POINTS = 10_000
JSON_FIRST_BYTES = (ord("["), ord("{"))
# \uD800-\uDFFF: a surrogate escape, either half of a pair (fine) or alone (not Unicode)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def is_json(data: bytes) -> bool:
    """A payload is JSON when its first non-blank byte is [ or { (a msgpack batch never starts so)."""
    stripped = data.lstrip()
    return bool(stripped) and stripped[0] in JSON_FIRST_BYTES


def decode_any(data: bytes) -> Any:
    """Decode a msgpack or JSON payload into plain Python objects."""
    if is_json(data):
        try:
            value = json.loads(data)
            if _SURROGATE_ESCAPE.search(data):
                # "\ud800" is valid JSON but no Unicode: stored, it would fail to encode in the
                # middle of a group commit (and take the other writes of the group with it).
                json.dumps(value, ensure_ascii=False).encode()
            return value
        except RecursionError:
            # json's C scanner recurses per level: ~1,000 levels exhaust the interpreter's stack
            raise DecodeError("malformed JSON: nested too deeply") from None
        except UnicodeEncodeError:
            raise DecodeError("malformed JSON: a \\u escape is a lone UTF-16 surrogate") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"malformed JSON: {exc}") from exc
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise DecodeError("malformed msgpack: nested too deeply") from None
    except (
        ValueError,
        msgpack.ExtraData,
        msgpack.FormatError,
        TypeError,
    ) as exc:
        raise DecodeError(f"malformed msgpack: {str(exc) or 'invalid format byte'}") from exc


def parse_rfc3339_ns(text: str, *, index: int | None = None) -> int:
    """Convert an RFC 3339 timestamp (JSON payloads only) to ns since the epoch, keeping sub-µs digits."""
    try:
        frac_ns = 0
        head = text
        if "." in text:
            head, rest = text.split(".", 1)
            digits = ""
            while rest and rest[0].isdigit():
                digits += rest[0]
                rest = rest[1:]
            frac_ns = int((digits + "000000000")[:9]) if digits else 0
            head += rest
        parsed = datetime.fromisoformat(head.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("no time zone offset")
        return int(parsed.timestamp()) * 1_000_000_000 + frac_ns
    except ValueError as exc:
        raise InvalidPoint(f"not an RFC 3339 time: {text!r} ({exc})", index=index, field="time") from exc


def decode_points(data: bytes, *, max_points: int = DEFAULT_MAX_BATCH_POINTS) -> list[Point]:
    """Decode a batch (array of point maps; a single map is taken as a batch of one).

    The whole batch is validated before anything is returned, so a caller can store it atomically.
    """
    json_payload = is_json(data)
    raw = decode_any(data)
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise DecodeError(f"a batch must be an array of points, got {type(raw).__name__}")
    check_batch_size(len(raw), max_points)
    points = []
    for index, item in enumerate(raw):
        if json_payload and isinstance(item, dict) and isinstance(item.get("time"), str):
            item = {**item, "time": parse_rfc3339_ns(item["time"], index=index)}
        points.append(point_from_map(item, index))
    return points


def check_batch_size(count: int, max_points: int) -> None:
    """A batch holds 1..max_points points (the same limit for decoded and in-process batches)."""
    if not count:
        raise DecodeError("empty batch")
    if count > max_points:
        raise BatchTooLarge(count, max_points, "points")


def decode_request(data: bytes) -> dict[str, Any]:
    """Decode a request map; an empty payload is an empty request."""
    if not data:
        return {}
    raw = decode_any(data)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError(f"a request must be a map, got {type(raw).__name__}")
    return raw


def encode_points(points: list[Point]) -> bytes:
    return msgpack.packb([p.to_wire() for p in points], use_bin_type=True)


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def point_from_wire(raw: dict[str, Any]) -> Point:
    """Rebuild a point the daemon itself encoded (trusted: no validation cost)."""
    return Point(
        type=raw["type"],
        key=raw.get("key", "0"),
        time=raw.get("time", 0),
        value=raw.get("value"),
        tombstone=raw.get("tombstone", 0),
        origin=raw.get("origin", ""),
    )


def decode_trusted_points(data: bytes) -> list[Point]:
    """Decode a batch siot itself published (fan-out, replies): no validation cost."""
    return [point_from_wire(raw) for raw in msgpack.unpackb(data, raw=False)]


def decode_reply(data: bytes) -> dict[str, Any]:
    """Decode a reply map without judging it; `client` turns {"error"} into `RequestFailed`."""
    raw = decode_any(data) if data else {}
    if not isinstance(raw, dict):
        raise DecodeError(f"a reply must be a map, got {type(raw).__name__}")
    return raw
