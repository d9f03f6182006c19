"""Turn one device message (JSON or msgpack object) into a device name and its points.

Pure functions, so the mapping rules are tested without a broker. Errors are `InvalidInput`
with a message fit for the ingest node's `error` point.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from siot.codec import decode_any, parse_rfc3339_ns
from siot.errors import InvalidInput, InvalidPoint
from siot.nodes.ingest.config import IngestConfig, TimeUnit
from siot.nodes.topics import subject_to_levels
from siot.points import INT64_MAX, INT64_MIN, MAX_TOKEN_BYTES, Point, point_from_map

_ILLEGAL_TYPE_CHARS = re.compile(r"[.*>\s]")
NESTED_SEPARATOR = "_"
MAX_NESTING = 16
_UNIT_NS = {TimeUnit.S: 10**9, TimeUnit.MS: 10**6, TimeUnit.US: 10**3, TimeUnit.NS: 1}


@dataclass(slots=True, frozen=True)
class Mapped:
    """One device's reading: which device (by name) and its points."""

    device: str
    points: list[Point]


def point_type_for(name: str) -> str:
    """A JSON field name made into a legal point type (illegal characters become `_`), cut to
    `MAX_TOKEN_BYTES` bytes of UTF-8 (not characters: a long non-ASCII name would be refused)."""
    token = _ILLEGAL_TYPE_CHARS.sub("_", name)
    if len(token) > MAX_TOKEN_BYTES // 4:
        token = token.encode()[:MAX_TOKEN_BYTES].decode(errors="ignore")
    return token or "_"


def parse_time_ns(value: Any, unit: TimeUnit) -> int:
    """A device timestamp as ns since the epoch. Numbers are taken in `unit` (auto: by
    magnitude); strings are RFC 3339, a time without an offset is taken as UTC."""
    if isinstance(value, bool):
        raise InvalidPoint(f"not a timestamp: {value!r}", field="time")
    if isinstance(value, str) and unit is not TimeUnit.RFC3339:
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            pass
    if isinstance(value, int | float):
        if unit in (TimeUnit.AUTO, TimeUnit.RFC3339):
            magnitude = abs(value)
            scale = (
                10**9 if magnitude < 1e11 else 10**6 if magnitude < 1e14 else 10**3 if magnitude < 1e17 else 1
            )
        else:
            scale = _UNIT_NS[unit]
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidPoint(f"not a timestamp: {value}", field="time")
        time_ns = int(value * scale) if isinstance(value, float) else value * scale
        if time_ns <= 0:
            raise InvalidPoint(f"not a timestamp: {_short(value)}", field="time")
        return _in_int64(time_ns, value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "T", 1)
        try:
            naive = datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is None
        except ValueError:
            naive = False  # let parse_rfc3339_ns name the problem
        return _in_int64(parse_rfc3339_ns(text + "Z" if naive else text), value)
    raise InvalidPoint(f"not a timestamp: {_short(value)}", field="time")


def _in_int64(time_ns: int, value: Any) -> int:
    """Times are int64 ns (until the year 2262) everywhere in siot; a device's clock past that is
    refused here, with the device's own value in the message, rather than failing in the encoder."""
    if not 0 < time_ns <= INT64_MAX:
        raise InvalidPoint(f"timestamp {_short(value)} is outside int64 nanoseconds", field="time")
    return time_ns


def _short(value: Any) -> str:
    """A bounded repr for messages: a hostile value can be huge, or nested past repr()'s recursion."""
    return reprlib.repr(value)


def flatten(message: dict[str, Any]) -> dict[str, Any]:
    """Nested objects become top-level fields named by their path joined with `_`:
    `{"env": {"t": 1}}` -> `{"env_t": 1}`. One flat name space keeps every value its own point
    type (so a data model can give each its own unit and range), and lets `deviceField`,
    `timeField` and `field` name nested values the same way. Lists are left as they are."""
    flat: dict[str, Any] = {}

    def walk(obj: dict[str, Any], prefix: str, depth: int) -> None:
        if depth > MAX_NESTING:
            raise InvalidInput(f"message nests objects deeper than {MAX_NESTING} levels")
        for name, value in obj.items():
            path = f"{prefix}{NESTED_SEPARATOR}{name}" if prefix else str(name)
            if isinstance(value, dict):
                walk(value, path, depth + 1)
            elif path in flat:
                raise InvalidInput(f"field {path!r} appears twice once nested objects are flattened")
            else:
                flat[path] = value

    walk(message, "", 1)
    return flat


def _device_name(config: IngestConfig, message: dict[str, Any], levels: list[str]) -> str:
    if config.device_field:
        name = message.get(config.device_field)
        if name is None or isinstance(name, dict | list) or name == "":
            raise InvalidInput(f"message has no device field '{config.device_field}'")
        return str(name)
    index = -1 if config.device_topic_level is None else config.device_topic_level
    try:
        name = levels[index]
    except IndexError:
        raise InvalidInput(f"topic {'/'.join(levels)!r} has no level {index}") from None
    if not name:
        raise InvalidInput(f"topic {'/'.join(levels)!r} has an empty level {index}")
    return name


def _values(config: IngestConfig, message: dict[str, Any]) -> list[tuple[str, Any]]:
    skip = {config.device_field, config.time_field}
    if config.field_map:
        values = [(ptype, message[name]) for name, ptype in config.field_map.items() if name in message]
    else:
        values = [
            (point_type_for(name), value)
            for name, value in message.items()
            if name not in skip and value is not None and isinstance(value, bool | int | float | str)
        ]
    for ptype, value in values:
        kind = type(value)
        if kind is int and not INT64_MIN <= value <= INT64_MAX:
            raise InvalidPoint(f"integer {_short(value)} is outside int64", field=ptype)
        if kind is list or kind is dict:  # (only `field` takes these) depth, int ranges, map keys
            point_from_map({"type": ptype, "value": value})
    return values


def map_message(config: IngestConfig, subject: str, data: bytes, receive_ns: int) -> list[Mapped]:
    """Map a message (an object, or an array of objects) to readings. Raises `InvalidInput`."""
    raw = decode_any(data)
    messages = raw if isinstance(raw, list) else [raw]
    levels = subject_to_levels(subject)
    result = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidInput(f"a device message must be a JSON object, got {type(message).__name__}")
        message = flatten(message)
        device = _device_name(config, message, levels)
        time_ns = receive_ns
        if config.time_field and message.get(config.time_field) is not None:
            time_ns = parse_time_ns(message[config.time_field], config.time_unit)
        values = _values(config, message)
        if not values:
            raise InvalidInput(f"message for device '{device}' has no fields to map")
        result.append(Mapped(device, [Point(ptype, value, time=time_ns) for ptype, value in values]))
    return result
