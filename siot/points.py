"""The point: siot's only unit of data, and the merge rule that decides between two of them.

The merge rule lives here and nowhere else: the store, sync and the tests all call `supersedes`.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, replace
from typing import Any

from siot.errors import InvalidPoint

MAX_TOKEN_BYTES = 256
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
ILLEGAL_TOKEN_CHARS = frozenset(".*>") | frozenset(" \t\r\n\v\f")
DEFAULT_KEY = "0"

PointValue = None | bool | int | float | str | bytes | list[Any] | dict[str, Any]


@dataclass(slots=True, frozen=True)
class Point:
    """One value of one node (or edge). Identity is `(type, key)` within its node or edge.

    `time` is ns since the Unix epoch; 0 asks the store to stamp it. `tombstone` odd = deleted.
    `origin` names the writer ("" = the node's own device) and breaks ties in the merge rule.
    """

    type: str
    value: PointValue = None
    key: str = DEFAULT_KEY
    time: int = 0
    tombstone: int = 0
    origin: str = ""

    @property
    def deleted(self) -> bool:
        return self.tombstone % 2 == 1

    def stamped(self, now_ns: int | None = None) -> Point:
        """Return the point with `time` set to now when it asked for it (time 0)."""
        if self.time:
            return self
        return replace(self, time=now_ns if now_ns is not None else _time.time_ns())

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "key": self.key,
            "time": self.time,
            "value": self.value,
            "tombstone": self.tombstone,
            "origin": self.origin,
        }


def supersedes(incoming_time: int, incoming_origin: str, stored_time: int, stored_origin: str) -> bool:
    """The merge rule: the incoming point wins iff `(time, origin)` is greater as a tuple.

    Equal `(time, origin)` is a no-op, which makes applying the same point twice harmless and
    lets sync apply changes in any order.
    """
    return (incoming_time, incoming_origin) > (stored_time, stored_origin)


def check_token(token: Any, *, field: str, index: int | None = None, allow_empty: bool) -> str:
    """Validate a point `type`/`key` (also used for subject tokens): a short str with no . * > or space."""
    if not isinstance(token, str):
        raise InvalidPoint(f"must be a string, got {type(token).__name__}", index=index, field=field)
    if not token and not allow_empty:
        raise InvalidPoint("must not be empty", index=index, field=field)
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidPoint(f"longer than {MAX_TOKEN_BYTES} bytes", index=index, field=field)
    bad = ILLEGAL_TOKEN_CHARS.intersection(token)
    if bad:
        shown = ", ".join(repr(c) for c in sorted(bad))
        raise InvalidPoint(f"contains illegal character(s) {shown}", index=index, field=field)
    return token


def _check_int(value: Any, *, field: str, index: int | None, minimum: int = INT64_MIN) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPoint(f"must be an integer, got {type(value).__name__}", index=index, field=field)
    if not minimum <= value <= INT64_MAX:
        raise InvalidPoint(f"{value} is outside {minimum}..{INT64_MAX}", index=index, field=field)
    return value


def _check_value(value: Any, *, index: int | None, depth: int = 0) -> PointValue:
    if value is None or isinstance(value, bool | float | str | bytes):
        return value
    if isinstance(value, int):
        return _check_int(value, field="value", index=index)
    if depth >= 8:
        raise InvalidPoint("nested deeper than 8 levels", index=index, field="value")
    if isinstance(value, list | tuple):
        return [_check_value(v, index=index, depth=depth + 1) for v in value]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise InvalidPoint("map keys must be strings", index=index, field="value")
        return {k: _check_value(v, index=index, depth=depth + 1) for k, v in value.items()}
    raise InvalidPoint(f"unsupported type {type(value).__name__}", index=index, field="value")


POINT_FIELDS = frozenset(("type", "key", "time", "value", "tombstone", "origin"))


def point_from_map(raw: Any, index: int | None = None) -> Point:
    """Build a validated `Point` from a decoded wire map; raise `InvalidPoint` naming the field.

    `key` "" becomes "0" (DESIGN §2). Unknown fields are refused so typos do not vanish silently.
    """
    if not isinstance(raw, dict):
        raise InvalidPoint(f"a point must be a map, got {type(raw).__name__}", index=index)
    unknown = raw.keys() - POINT_FIELDS
    if unknown:
        raise InvalidPoint(f"unknown field(s) {sorted(map(str, unknown))}", index=index)
    if "type" not in raw:
        raise InvalidPoint("missing", index=index, field="type")
    ptype = check_token(raw["type"], field="type", index=index, allow_empty=False)
    key = check_token(raw.get("key", DEFAULT_KEY), field="key", index=index, allow_empty=True)
    time_ns = raw.get("time", 0)
    time_ns = 0 if time_ns is None else _check_int(time_ns, field="time", index=index, minimum=0)
    tombstone = raw.get("tombstone", 0)
    tombstone = 0 if tombstone is None else _check_int(tombstone, field="tombstone", index=index, minimum=0)
    origin = raw.get("origin", "")
    if origin is None:
        origin = ""
    if not isinstance(origin, str) or len(origin.encode()) > MAX_TOKEN_BYTES:
        raise InvalidPoint(
            f"must be a string of at most {MAX_TOKEN_BYTES} bytes", index=index, field="origin"
        )
    value = _check_value(raw.get("value"), index=index)
    return Point(
        type=ptype,
        key=key or DEFAULT_KEY,
        time=time_ns,
        value=value,
        tombstone=tombstone,
        origin=origin,
    )
