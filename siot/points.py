"""The point: siot's only unit of data, and the merge rule that decides between two of them.

The merge rule lives here: the tree, sync and the tests call `supersedes`/`merge_rank`, and the
store's SQL upsert compares the same tuple over the same `encode_value` bytes.
"""

from __future__ import annotations

import math
import re
import time as _time
from typing import Any, NamedTuple

import msgpack

from siot.errors import InvalidPoint

_packb = msgpack.packb

MAX_TOKEN_BYTES = 256
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# . * > and any whitespace (Unicode's too: U+2028 in a node id broke line-based tools and
# looked like a different id in every UI). One rule for point types/keys and node ids.
ILLEGAL_TOKEN_RE = re.compile(r"[.*>\s]")
DEFAULT_KEY = "0"
# The edge points every edge has (DESIGN §2): its child's node type, and whether it is deleted.
NODE_TYPE = "nodeType"
TOMBSTONE = "tombstone"

PointValue = None | bool | int | float | str | bytes | list[Any] | dict[str, Any]


class Point(NamedTuple):
    """One value of one node (or edge). Identity is `(type, key)` within its node or edge.

    `time` is ns since the Unix epoch; 0 asks the store to stamp it. `tombstone` odd = deleted.
    `origin` names the writer ("" = the node's own device) and breaks ties in the merge rule.

    A NamedTuple rather than a frozen dataclass: just as immutable and typed, but built in under
    half the time, and every ingested point is built once on the hot path (docs/benchmarks.md).
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
        stamp = now_ns if now_ns is not None else _time.time_ns()
        # Built directly: `_replace` costs three times as much, and this runs per ingested point.
        return Point(self.type, self.value, self.key, stamp, self.tombstone, self.origin)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "key": self.key,
            "time": self.time,
            "value": self.value,
            "tombstone": self.tombstone,
            "origin": self.origin,
        }


def encode_value(value: PointValue) -> bytes:
    """The value's msgpack encoding with map keys sorted: what the store keeps and what the merge
    rule compares bytewise, so two replicas agree on it whatever order a map was built in."""
    if type(value) is dict or type(value) is list:
        value = _sorted_maps(value)
    return _packb(value, use_bin_type=True)


def _sorted_maps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_maps(v) for v in value]
    return value


MergeRank = tuple[int, str, bytes, int]
# Below every real point: what an absent point compares as.
NO_RANK: MergeRank = (-1, "", b"", 0)


def merge_rank(p: Point, encoded: bytes | None = None) -> MergeRank:
    """The tuple the merge rule compares (DESIGN §2): `(time, origin, encoded value, tombstone)`.

    The value only breaks ties of equal `(time, origin)`, so two replicas that see the same
    points in any order end with the same current value (as Cassandra breaks equal timestamps).
    Pass `encoded` when the caller already has `encode_value(p.value)`.
    """
    return (p.time, p.origin, encode_value(p.value) if encoded is None else encoded, p.tombstone)


def supersedes(incoming: Point, stored: Point | None) -> bool:
    """The merge rule: the incoming point replaces the stored one iff its rank is greater.

    An identical point is a no-op, which makes applying the same point twice harmless and lets
    sync apply changes in any order. The store applies the same comparison in SQL
    (store/writer.py), on the same encoding.
    """
    return merge_rank(incoming) > (NO_RANK if stored is None else merge_rank(stored))


def check_token(token: Any, *, field: str, index: int | None = None, allow_empty: bool) -> str:
    """Validate a point `type`/`key` (also used for subject tokens): a short str with no . * > or space."""
    if not isinstance(token, str):
        raise InvalidPoint(f"must be a string, got {type(token).__name__}", index=index, field=field)
    if not token and not allow_empty:
        raise InvalidPoint("must not be empty", index=index, field=field)
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidPoint(f"longer than {MAX_TOKEN_BYTES} bytes", index=index, field=field)
    bad = set(ILLEGAL_TOKEN_RE.findall(token))
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
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            # NaN never equals itself (merge, digests and charts break on it); JSON has neither.
            raise InvalidPoint(f"must be a finite number, got {value}", index=index, field="value")
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
_SCALARS = (str, bool, type(None), bytes)  # float apart: it must also be finite
_INF = float("inf")
# A str of at most this many characters is at most MAX_TOKEN_BYTES bytes in UTF-8.
_SURELY_SHORT_CHARS = MAX_TOKEN_BYTES // 4


def _plain_token(token: Any) -> bool:
    return type(token) is str and 0 < len(token) <= _SURELY_SHORT_CHARS and not ILLEGAL_TOKEN_RE.search(token)


def _plain(ptype: Any, key: Any, time_ns: Any, tombstone: Any, origin: Any, value: Any) -> bool:
    """The common case, checked in one pass: short tokens, a time and no tombstone, a scalar."""
    return (
        _plain_token(ptype)
        and (key == DEFAULT_KEY or _plain_token(key))
        and type(time_ns) is int
        and 0 <= time_ns <= INT64_MAX
        and (tombstone == 0 and type(tombstone) is int)
        and type(origin) is str
        and len(origin) <= _SURELY_SHORT_CHARS
        and (
            type(value) in _SCALARS
            or (type(value) is float and -_INF < value < _INF)  # False for NaN too
            or (type(value) is int and INT64_MIN <= value <= INT64_MAX)
        )
    )


def point_from_map(raw: Any, index: int | None = None) -> Point:
    """Build a validated `Point` from a decoded wire map; raise `InvalidPoint` naming the field.

    `key` "" becomes "0" (DESIGN §2). Unknown fields are refused so typos do not vanish silently.
    The common case (short tokens, scalar value) is checked in one pass; anything else takes
    the careful path, which also produces the error message.
    """
    if type(raw) is dict and raw.keys() <= POINT_FIELDS:
        get = raw.get
        ptype, key, time_ns = get("type"), get("key", DEFAULT_KEY), get("time", 0)
        tombstone, origin, value = get("tombstone", 0), get("origin", ""), get("value")
        if _plain(ptype, key, time_ns, tombstone, origin, value):
            return Point(ptype, value, key, time_ns, 0, origin)
    return _careful_point_from_map(raw, index)


def checked_point(p: Point, index: int | None = None) -> Point:
    """`point_from_map` for a `Point` built in process (a node client's write): the same checks,
    without building a map in the common case."""
    if type(p) is Point and _plain(p.type, p.key, p.time, p.tombstone, p.origin, p.value):
        return p
    return _careful_point_from_map(p.to_wire() if isinstance(p, Point) else p, index)


def _careful_point_from_map(raw: Any, index: int | None) -> Point:
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
