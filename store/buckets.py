"""History in time buckets (count, min, max, mean, first, last per interval), computed by SQLite.

One GROUP BY over the point log's history index (`log_entries (series, time)`), so a week of
1 Hz readings (604,800 rows) comes back as a few hundred rows without leaving SQLite; first and
last are then one index lookup per bucket. Values are msgpack blobs in the log, so the query
reads them through `siot_number`, a function registered on this module's own read-only
connection: a float, an int, or a bool (as 0/1); anything else (strings, maps, nil) is not a
number and is left out of the buckets, as are deleted points (odd tombstone).

Its own connection (aiosqlite, `query_only`) so that a long aggregation never holds up the
store's reader, which serves the NATS API and sync; these queries take turns on it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Self

import aiosqlite
import msgpack

_FLOAT64 = 0xCB
_FLOAT32 = 0xCA
_FALSE, _TRUE = 0xC2, 0xC3
_unpack_double = struct.Struct(">d").unpack_from
_unpack_single = struct.Struct(">f").unpack_from


def number(blob: bytes | None) -> float | int | None:
    """A logged value as a number, or None when it is not one. The common encodings (float64,
    small ints) are read without the msgpack decoder: this runs once per aggregated row."""
    if not blob:
        return None
    first = blob[0]
    if first == _FLOAT64 and len(blob) == 9:
        return _unpack_double(blob, 1)[0]
    if first <= 0x7F:
        return first
    if first == _FLOAT32 and len(blob) == 5:
        return _unpack_single(blob, 1)[0]
    if first in (_FALSE, _TRUE):
        return first - _FALSE
    if first >= 0xE0:
        return first - 0x100  # negative fixint
    if 0xCC <= first <= 0xD3:  # uint8..64, int8..64
        value = msgpack.unpackb(blob)
        return value if isinstance(value, int) else None
    return None


@dataclass(frozen=True, slots=True)
class Bucket:
    time: int  # start of the bucket, ns since the epoch, a multiple of `every`
    count: int
    min: float | int
    max: float | int
    mean: float
    first: float | int
    last: float | int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "first": self.first,
            "last": self.last,
        }


SERIES = "SELECT id FROM series WHERE node = ? AND parent = '' AND type = ?"

# {series} is a list of ? for the series ids. The outer query's lookups of first and last use
# the (series, time) index: one probe per series per bucket.
BUCKETS = """
WITH agg AS (
    SELECT time / :every AS b, COUNT(*) AS n, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean,
        MIN(time) AS t0, MAX(time) AS t1
    FROM (
        SELECT time, siot_number(value) AS v FROM log_entries
        WHERE series IN ({series}) AND time >= :start AND time < :end AND tombstone % 2 = 0
    )
    WHERE v IS NOT NULL
    GROUP BY b ORDER BY b LIMIT :limit
)
SELECT b * :every, n, lo, hi, mean,
    (SELECT siot_number(value) FROM log_entries WHERE series IN ({series}) AND time = agg.t0
        AND tombstone % 2 = 0 AND siot_number(value) IS NOT NULL ORDER BY seq LIMIT 1),
    (SELECT siot_number(value) FROM log_entries WHERE series IN ({series}) AND time = agg.t1
        AND tombstone % 2 = 0 AND siot_number(value) IS NOT NULL ORDER BY seq DESC LIMIT 1)
FROM agg ORDER BY b
"""


class BucketReader:
    """`async with BucketReader(db_path) as reader:` then `await reader.buckets(...)`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Self:
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA query_only=1")
        await self._db.create_function("siot_number", 1, number, deterministic=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def buckets(
        self, node: str, type: str, key: str | None, *, start: int, end: int, every: int, limit: int
    ) -> list[Bucket]:
        """Buckets of `every` ns (starting at multiples of it since the epoch) of node's points
        `type` (every key unless `key`), start inclusive, end exclusive, oldest first; empty
        buckets are left out; at most `limit`."""
        assert self._db is not None
        sql, params = SERIES, [node, type]
        if key is not None:
            sql += " AND key = ?"
            params.append(key)
        # Statement and fetch in one call, as the store's reads (Store.fetch says why).
        series = [row[0] for row in await self._db.execute_fetchall(sql, params)]
        if not series:
            return []
        names = {f"s{i}": s for i, s in enumerate(series)}
        query = BUCKETS.format(series=",".join(f":{n}" for n in names))
        args = {**names, "every": every, "start": start, "end": end, "limit": limit}
        return [Bucket(*row) for row in await self._db.execute_fetchall(query, args)]
