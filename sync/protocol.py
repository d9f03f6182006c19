"""The sync wire protocol (docs/sync.md): subjects, window limits and the row encoding.

Every subject is served by the upstream instance on its own NATS server; the edge connects to
that server as a client, so only the edge needs to reach the upstream (NAT-friendly). The one
message flowing the other way is `sync.notify.<edge>`, a hint published by the upstream that
the edge subscribes to over the same connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from msgpack import unpackb

from siot import subjects
from siot.errors import BatchTooLarge, DecodeError, InvalidInput
from siot.points import INT64_MAX, Point, point_from_map

if TYPE_CHECKING:  # the CLI imports this module; the store (SQLite) stays out of it
    from siot.store.log import LogRow

PROTOCOL_VERSION = 1
DEFAULT_WINDOW_ROWS = 2_000
DEFAULT_WINDOW_BYTES = 256 * 1024  # well under nats-server's default 1 MB max_payload
MAX_WINDOW_ROWS = 10_000
MAX_WINDOW_BYTES = 768 * 1024
ROW_OVERHEAD_BYTES = 24
ROW_FIELDS = 11
STATUS = "siot.sync.status"
# Every request carries the sending link's session token (random per link, so per process): the
# upstream serves one session per edge id at a time, and refuses another one while it is live.
SESSION = "session"
MAX_SESSION_CHARS = 64
SESSION_TIMEOUT_S = 20.0  # an edge polls every 5 s; a session silent this long may be taken over
CONFLICT = "conflict"  # the prefix of the error a refused session gets


def hello(edge: str) -> str:
    """edge -> upstream: attach (first time) and report in; reply carries the upstream's cursors."""
    return f"sync.hello.{edge}"


def up(edge: str) -> str:
    """edge -> upstream: a window of the edge's log (or of its full state during repair)."""
    return f"sync.up.{edge}"


def pull(edge: str) -> str:
    """edge -> upstream: acknowledge the last window received and ask for the next one."""
    return f"sync.pull.{edge}"


def digest(edge: str) -> str:
    """edge -> upstream: per-node digests of the edge's subtree as the upstream stores it."""
    return f"sync.digest.{edge}"


def state(edge: str) -> str:
    """edge -> upstream: full current state of some nodes of the edge's subtree (repair)."""
    return f"sync.state.{edge}"


def bye(edge: str) -> str:
    """edge -> upstream: this session is closing (a clean stop); another may take the id at once."""
    return f"sync.bye.{edge}"


def notify(edge: str) -> str:
    """upstream -> edge: something for the edge was committed; pull now."""
    return f"sync.notify.{edge}"


SERVER_SUBJECTS = (
    "sync.hello.*",
    "sync.up.*",
    "sync.pull.*",
    "sync.digest.*",
    "sync.state.*",
    "sync.bye.*",
)


def row_size(row: LogRow) -> int:
    """Rough encoded size of a row, to cap windows in bytes without encoding twice."""
    value = row[6]
    return (
        ROW_OVERHEAD_BYTES
        + len(row[1])
        + len(row[2])
        + len(row[3])
        + len(row[4])
        + len(row[8])
        + (len(value) if value else 0)
    )


def take_window(rows: list[LogRow], max_rows: int, max_bytes: int) -> list[LogRow]:
    """The longest prefix of `rows` within both limits (always at least one row)."""
    total = 0
    for index, row in enumerate(rows[:max_rows]):
        total += row_size(row)
        if total > max_bytes and index > 0:
            return rows[:index]
    return rows[:max_rows]


def encode_rows(rows: list[LogRow]) -> list[list[Any]]:
    """Rows go on the wire as arrays in `LOG_COLUMNS` order; `value` stays the stored msgpack
    blob (bytes), so the sender never decodes values."""
    return [list(row) for row in rows]


class SyncRow(NamedTuple):
    """A received row, validated: the change and where it was first accepted. (A NamedTuple:
    catch-up builds one per row, and a frozen dataclass costs ~8x more to construct.)"""

    seq: int
    node: str
    parent: str
    point: Point
    instance: str
    instance_seq: int


def decode_rows(raw: Any) -> list[SyncRow]:
    """Validate rows from a peer as strictly as points from a device; raise `InvalidInput`.

    Catch-up decodes every row here, so the common case costs a few type checks and one set
    lookup per node id on top of `point_from_map`; anything odd goes to `_row_error`."""
    if not isinstance(raw, list):
        raise DecodeError(f"rows must be an array, got {type(raw).__name__}")
    if len(raw) > MAX_WINDOW_ROWS:
        raise BatchTooLarge(len(raw), MAX_WINDOW_ROWS, "rows")
    checked = {""}  # node ids already validated ("" = no parent)
    result = []
    append = result.append
    for index, item in enumerate(raw):
        if type(item) is not list or len(item) != ROW_FIELDS:
            raise _row_error(index, item)
        seq, node, parent, ptype, key, t, blob, tombstone, origin, instance, instance_seq = item
        if node not in checked or parent not in checked:
            for token in (node, parent):
                if type(token) is not str:
                    raise DecodeError(f"row {index}: node and parent must be strings")
                if token not in checked:
                    subjects.check_node_token(token)
                    checked.add(token)
        if type(seq) is not int or type(instance_seq) is not int or type(instance) is not str:
            raise DecodeError(f"row {index}: seq, instance and instance_seq have the wrong types")
        if not (0 <= seq <= INT64_MAX and 0 <= instance_seq <= INT64_MAX):
            # SQLite stores int64: a larger provenance would fail the whole group commit it rides in
            raise DecodeError(f"row {index}: seq and instance_seq must be within 0..{INT64_MAX}")
        if instance and instance not in checked:
            subjects.check_node_token(instance, what="instance id")
            checked.add(instance)
        if type(blob) is not bytes:
            raise _row_error(index, item)
        try:
            value = unpackb(blob, raw=False)
        except Exception as exc:
            raise DecodeError(f"row {index}: undecodable value: {exc}") from exc
        point = point_from_map(
            {"type": ptype, "key": key, "time": t, "value": value, "tombstone": tombstone, "origin": origin},
            index,
        )
        if not point.time:
            raise InvalidInput(f"row {index}: a synced point must carry its time")
        append(SyncRow(seq, node, parent, point, instance, instance_seq))
    return result


def _row_error(index: int, item: Any) -> DecodeError:
    if not isinstance(item, list | tuple) or len(item) != ROW_FIELDS:
        return DecodeError(f"row {index}: must be an array of {ROW_FIELDS} fields")
    return DecodeError(f"row {index}: value must be a msgpack blob")
