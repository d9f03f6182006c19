"""Fuzzing a real `siot serve`: hostile-input strategies (hypothesis) and a harness that sends
them in bounded concurrent batches and tells every reply, error reply and missing reply apart.

The harness runs its own event loop in a thread, so hypothesis tests stay plain functions (one
example = one batch) while a single NATS connection to one daemon lives through the whole run.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import msgpack
import nats
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

T = TypeVar("T")

REPLY_TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 32

# ---- strategies --------------------------------------------------------------------------------
#
# Hypothesis spends ~60 µs per choice it draws, and text() several ms per string, so 10,000 inputs
# within seconds means few choices per input: most values are picked from hand-made lists of the
# nasty cases (one choice each), strings are made from random bytes, and big or deep payloads are
# built once at import.

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
NOW_NS = 1_700_000_000_000_000_000


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Like `one_of`, with weights (`one_of(a, a, b)` does not weigh: it drops the repeated a)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(table.__getitem__)


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three in four valid: an input with one bad field gets further than one with six."""
    return weighted((3, valid), (1, hostile))


def _nest(depth: int, leaf: Any, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


EDGE_INTS = [0, -1, 1, 42, 2**31, 2**32, 2**53 + 1, INT64_MAX, INT64_MIN, 2**63, INT64_MIN - 1, 2**64 - 1]
EDGE_INTS += [2**64, 10**20, -(10**20), 10**400]  # the last ones fit no msgpack int: sent as JSON
EDGE_FLOATS = [0.0, -0.0, 1.5, 1e-300, 1e300, -1e300, 9.3e18, 1.7e9, math.inf, -math.inf, math.nan]
EDGE_STRINGS = ["", "x", "hello world", "é" * 100, "x" * 5000, "\x00", "a.b", "*", ">", "\ud800", "\ufeff"]
EDGE_STRINGS += ["2024-01-02T03:04:05Z", "null", "[]", "{}", "\u2028", "😀" * 10]
EDGE_BYTES = [b"", b"\x00\xff", b"\xc1", b"x" * 1000]
SCALARS: list[Any] = [None, True, False, *EDGE_INTS, *EDGE_FLOATS, *EDGE_STRINGS, *EDGE_BYTES]
STRUCTS: list[Any] = [
    [],
    {},
    [1, 2.5, "three"],
    {"a": 1, "b": [1, 2]},
    {"z": 1, "a": 2, "m": {"y": 0, "b": 1}},  # map keys out of order
    {"": None},
    {"k": 2**64},
    [math.nan, math.inf],
    {1: 2},  # not a str key
    {b"k": 1},
    [b"\x00"],
    [10**400],
    _nest(7, 1),
    _nest(8, 1),  # the deepest value a point may hold
    _nest(9, 1),
    _nest(8, 1, "map"),
    _nest(9, 1, "map"),
    _nest(200, 1),
    _nest(900, 1),  # fine for the decoders, too deep for repr() near the recursion limit
    [0] * 10_000,
]
TOKENS_OK = ["temp", "value", "description", "x", "a-b_c", "é", "t" * 256, "é" * 128, "Z", "0"]
TOKENS_BAD: list[Any] = ["", "a.b", "a b", "a\tb", "a\nb", "*", ">", "t" * 257, "é" * 129, "a\u2028b"]
TOKENS_BAD += [5, None, b"x", ["a"], True, 1.5, {"a": 1}]


def _chars(data: bytes, *, subject_safe: bool) -> str:
    """Text from random bytes: ASCII and non-ASCII, and (unless `subject_safe`) now and then a
    character that means something to a subject, a parser or an encoder."""
    out = []
    for i in range(0, len(data) - 1, 2):
        code = data[i] << 8 | data[i + 1]
        if code < 0x8000:
            char = chr(0x21 + code % 0x5E)  # printable ASCII
        else:
            char = chr(0xA1 + code % 0x2F00)  # Latin-1 .. CJK symbols, no surrogates
        if subject_safe:
            if char in ".*>":
                char = "_"
        elif code % 13 == 0:
            char = " \t\n.*>\x00\u2028\ufeff\ud800\\\"'"[code % 12]
        out.append(char)
    return "".join(out)


def fast_text(max_chars: int, *, subject_safe: bool = False, min_chars: int = 0) -> st.SearchStrategy[str]:
    return st.binary(min_size=2 * min_chars, max_size=2 * max_chars).map(
        lambda data: _chars(data, subject_safe=subject_safe)
    )


# A token NATS takes in a subject (no whitespace, '.', or lone '*'/'>'); siot may still refuse it.
safe_tokens = fast_text(16, subject_safe=True, min_chars=1)
# Legal for NATS, refused by siot: too long, embedded wildcards, words the API gives a meaning.
HOSTILE_TOKENS = ["x" * 257, "x" * 700, "é" * 129, "a*", ">b", "a>b", "**", ">>", "root", "all", "up"]
HOSTILE_TOKENS += ["_INBOX", "$SYS", "%00", "\u00ff", "\u2028", "\ufeff"]
hostile_tokens = st.sampled_from(HOSTILE_TOKENS)

point_tokens = st.one_of(
    st.sampled_from(TOKENS_OK), st.sampled_from(TOKENS_OK), st.sampled_from(TOKENS_BAD), fast_text(8)
)
hostile_ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers())
hostile_scalars = st.one_of(
    st.sampled_from(SCALARS), st.sampled_from(SCALARS), st.integers(), st.floats(), fast_text(12)
)
corpus = st.sampled_from(SCALARS + STRUCTS)
hostile_values = weighted(
    (2, corpus),
    (1, hostile_scalars),
    (1, st.binary(max_size=16)),
    (1, st.lists(corpus, max_size=3)),
    (1, st.dictionaries(st.sampled_from(["a", "b", "", "é", "type"]), corpus, max_size=3)),
)

TIMES_BAD: list[Any] = [-1, 2**63, INT64_MIN - 1, 2**64, 10**400, 1.5e18, math.nan, math.inf, -math.inf]
TIMES_BAD += [
    "2024-01-02T03:04:05.123456789Z",
    "2024-01-02T03:04:05",  # no offset
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+01:00",
    "2262-04-11T23:47:16.854775808Z",  # one ns past int64
    "2262-04-11 23:47:16.854775807",
    "not a time",
    "",
    "1e400",
    "1.5e400",
    "-1.0",
    "NaN",
    True,
    [1],
    {"t": 1},
    None,
]
valid_times = st.one_of(
    st.just(0), st.integers(NOW_NS - 10**15, NOW_NS + 10**15), st.sampled_from([1, INT64_MAX])
)
hostile_times = st.one_of(valid_times, st.sampled_from(TIMES_BAD), st.sampled_from(TIMES_BAD), hostile_ints)


Field = st.SearchStrategy[Any] | tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]


def records(
    fields: dict[Any, Field], *, required: tuple[Any, ...] = (), extra: bool = True, as_list: bool = False
) -> st.SearchStrategy[Any]:
    """Maps (or lists, in field order) whose fields are each a (valid, hostile) pair of
    strategies: some optional fields are left out, and at most one field is hostile (none in
    half of them), so most inputs are wrong in one place only and reach the check for it.
    Few draws per record: hypothesis's cost is per draw."""
    names = list(fields)
    pairs = [field if isinstance(field, tuple) else (field, field) for field in fields.values()]
    unknown = st.sampled_from(UNKNOWN_FIELDS)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        present = draw(st.integers(0, 2 ** len(names) - 1))
        bad = draw(st.integers(0, 2 * len(names) - 1))  # >= len(names): no hostile field
        out: dict[Any, Any] = {}
        for index, name in enumerate(names):
            if as_list or name in required or present >> index & 1 or bad == index:
                valid, hostile = pairs[index]
                out[name] = draw(hostile if bad == index else valid)
        if as_list:
            return list(out.values())
        if extra and present % 8 == 7 and bad == len(names):
            out[draw(unknown)] = draw(hostile_scalars)
        return out

    return build()


UNKNOWN_FIELDS: list[Any] = ["bogus", "Type", "", "valu", "time ", 1, b"type"]
VALID_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    42,
    INT64_MAX,
    INT64_MIN,
    1.5,
    math.nan,
    math.inf,
    "",
    "x",
    "é" * 100,
]
VALID_VALUES += [b"", b"\x00\xff", [], {}, [1, 2.5, "three"], {"z": 1, "a": 2}, _nest(8, 1), [0] * 10_000]
valid_values = weighted(
    (3, st.sampled_from(VALID_VALUES)),
    (1, st.integers(INT64_MIN, INT64_MAX)),
    (1, st.floats()),
    (1, fast_text(12)),
)
POINT_FIELDS: dict[str, Field] = {
    "type": (st.sampled_from(TOKENS_OK), st.one_of(st.sampled_from(TOKENS_BAD), fast_text(8))),
    "key": (st.sampled_from(["0", "", "a", "é" * 128]), point_tokens),
    "time": (valid_times, hostile_times),
    "value": (valid_values, hostile_values),
    "tombstone": (st.sampled_from([0, 1, 2]), st.sampled_from([-1, 2**63, 2**64, "1", 1.0, None, True, [0]])),
    "origin": (
        st.sampled_from(["", "fuzz", "o" * 256]),
        st.sampled_from([None, 5, "o" * 257, b"x", "\ud800"]),
    ),
}
_point_records = records(POINT_FIELDS, required=("type",))


def point_maps() -> st.SearchStrategy[Any]:
    """A point map: mostly plausible, with a bad field here and there (or not a map at all)."""
    return weighted((12, _point_records), (1, hostile_values))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(type(obj).__name__)


def to_json(obj: Any) -> bytes:
    """JSON as Python writes it (NaN, Infinity, huge ints, lone surrogates as escapes); bytes as
    hex; map keys that are not str become str."""
    try:
        return json.dumps(obj, default=_json_default, allow_nan=True).encode()
    except (TypeError, ValueError):  # e.g. bytes keys
        return repr(obj).encode()
    except RecursionError:
        return b"[" * 2000


def to_msgpack(obj: Any, *, bin_type: bool = True) -> bytes:
    """msgpack, or JSON when msgpack cannot carry a value (ints past 64 bits, lone surrogates)."""
    try:
        return msgpack.packb(obj, use_bin_type=bin_type)
    except (OverflowError, TypeError, ValueError, UnicodeEncodeError):
        return to_json(obj)


_ENCODERS = {
    "mp": to_msgpack,
    "mp-raw": lambda o: to_msgpack(o, bin_type=False),  # old msgpack: str and bytes both raw
    "json": to_json,
    "json-ws": lambda o: b" \n\t" + to_json(o) + b"  ",
}


def encoded(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """`objects` on the wire: msgpack (str8/bin or old raw), JSON, or JSON padded with blanks."""
    return st.builds(lambda obj, fmt: _ENCODERS[fmt](obj), objects, st.sampled_from(list(_ENCODERS)))


def _deep_json(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    # a plausible point whose value nests deeply
    return b'[{"type":"t","value":' + b"[" * depth + b"]" * depth + b"}]"


DEEP_PAYLOADS = [
    _deep_json(depth, kind)
    for depth in (9, 100, 900, 999, 1000, 1001, 3000, 100_000)
    for kind in ("array", "object", "value")
]
DEEP_PAYLOADS += [b"\x91" * n + b"\xc0" for n in (200, 1000, 1025, 5000)]  # msgpack arrays
DEEP_PAYLOADS += [b"\x81\xa1a" * n + b"\xc0" for n in (10, 1025, 5000)]  # msgpack maps
deep_payloads = st.sampled_from(DEEP_PAYLOADS)


def _mutate(data: bytes, position: int, kind: int, byte: int) -> bytes:
    if not data:
        return bytes([byte])
    position %= len(data)
    if kind == 0:
        return data[:position]  # truncated
    if kind == 1:
        return data[:position] + bytes([byte]) + data[position + 1 :]  # one byte changed
    return data[:position] + bytes([byte]) + data[position:]  # one byte inserted


def mutated(payloads: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(_mutate, payloads, st.integers(0, 10_000), st.integers(0, 2), st.integers(0, 255))


GARBAGE = [b"", b" ", b"\x00", b"\xc1", b"null", b"[]", b"{}", b"[", b"{", b"\xff" * 9, b"\xd4\xff"]
GARBAGE += [b"\xc1" * 200_000, bytes(range(256)) * 2000, b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]
GARBAGE += ["[1, 2, \u00e9]".encode("latin-1"), b"\xef\xbb\xbf[]", b"[1e99999]", b"[-]", b'{"a":1,"a":2}']
garbage = st.one_of(st.binary(max_size=64), st.sampled_from(GARBAGE))

BIG_BATCHES = [msgpack.packb([{"type": "t", "value": 1}] * n) for n in (10_001, 20_000)]


def batches_of_points() -> st.SearchStrategy[Any]:
    return weighted(
        (6, st.lists(point_maps(), min_size=1, max_size=3)), (1, point_maps()), (1, hostile_values)
    )


def point_payloads() -> st.SearchStrategy[bytes]:
    batches = encoded(batches_of_points())
    return weighted((6, batches), (1, mutated(batches)), (1, garbage), (1, deep_payloads))


def request_payloads(fields: dict[str, Field]) -> st.SearchStrategy[bytes]:
    """Request maps whose fields are mostly plausible, or no map at all."""
    maps = encoded(records(fields))
    return weighted(
        (6, maps), (1, mutated(maps)), (1, encoded(hostile_values)), (1, garbage), (1, deep_payloads)
    )


# ---- the harness -------------------------------------------------------------------------------


class Outcome(NamedTuple):
    subject: str
    payload: bytes
    reply: dict[str, Any] | None  # None: no reply within REPLY_TIMEOUT_S (or no responders)
    problem: str = ""  # why the reply is not a proper {"ok"} / {"error"} map

    @property
    def error(self) -> str | None:
        return self.reply.get("error") if self.reply is not None else None

    def describe(self) -> str:
        shown = self.payload[:200]
        more = f" (+{len(self.payload) - 200} bytes)" if len(self.payload) > 200 else ""
        return f"{self.subject[:120]!r} {shown!r}{more}: {self.problem or self.reply}"


def check_reply(data: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        reply = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        return None, f"undecodable reply: {exc!r}"
    if not isinstance(reply, dict):
        return None, f"reply is not a map: {reply!r}"[:200]
    if "error" in reply:
        if not isinstance(reply["error"], str) or not reply["error"]:
            return reply, "error reply without a message"
        if "Traceback" in reply["error"] or "internal error" in reply["error"]:
            return reply, "internal error"
        return reply, ""
    if reply.get("ok") is not True:
        return reply, "reply is neither ok nor error"
    return reply, ""


@dataclass
class Ledger:
    """What the fuzz run sent and what it expects the daemon to have counted."""

    sent: Counter[str] = field(default_factory=Counter)  # inputs per family
    error_replies: Counter[str] = field(default_factory=Counter)  # per family
    # Expected growth of siot.stats `errors` and `syncErrors`, per node id they are counted under.
    api: Counter[str] = field(default_factory=Counter)
    sync: Counter[str] = field(default_factory=Counter)
    ingest_refused: Counter[str] = field(default_factory=Counter)  # by the API, per device name
    # sync.up windows the server took but whose rows the store refused in part: the store counts
    # each refused write (a run of rows of one node) under the row's node id
    rows_refused: int = 0
    windows_with_refusals: int = 0
    failures: list[str] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)  # family: error reply, numbers blanked

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Harness:
    """One NATS connection to the daemon, driven from a private event loop thread."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()
        self.nc: NATS = self.run(nats.connect(url, max_reconnect_attempts=3, pending_size=64 * 1024 * 1024))

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _request(self, sem: asyncio.Semaphore, subject: str, payload: bytes) -> Outcome:
        async with sem:
            try:
                msg = await self.nc.request(subject, payload, timeout=REPLY_TIMEOUT_S)
            except Exception as exc:  # timeout, no responders: the daemon stayed silent
                return Outcome(subject, payload, None, f"no reply: {type(exc).__name__}")
        reply, problem = check_reply(msg.data)
        return Outcome(subject, payload, reply, problem)

    async def _requests(self, items: list[tuple[str, bytes]]) -> list[Outcome]:
        sem = asyncio.Semaphore(MAX_IN_FLIGHT)
        return list(await asyncio.gather(*(self._request(sem, s, p) for s, p in items)))

    def requests(self, items: Iterable[tuple[str, bytes]]) -> list[Outcome]:
        """Send every request concurrently (at most MAX_IN_FLIGHT at a time); one outcome each."""
        return self.run(self._requests(list(items)))

    async def _publish(self, items: list[tuple[str, bytes]]) -> None:
        for subject, payload in items:
            await self.nc.publish(subject, payload)
        await self.nc.flush()

    def publish(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Fire and forget (no reply subject), then flush."""
        self.run(self._publish(list(items)))

    def request(self, subject: str, payload: bytes = b"") -> dict[str, Any]:
        [outcome] = self.requests([(subject, payload)])
        assert outcome.reply is not None and not outcome.problem, outcome.describe()
        return outcome.reply

    def close(self) -> None:
        try:
            self.run(self.nc.close(), timeout_s=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


def record(ledger: Ledger, family: str, outcomes: list[Outcome], *, counted: str = "api") -> None:
    """Tally outcomes; every missing or malformed reply is a failure. Error replies are expected
    to grow the daemon's `api` or `sync` error counter by one each (`counted`), or neither."""
    ledger.sent[family] += len(outcomes)
    for outcome in outcomes:
        if outcome.reply is None or outcome.problem:
            ledger.failures.append(f"{family}: {outcome.describe()}")
            continue
        refused, outside = outcome.reply.get("refused", 0), outcome.reply.get("outside", 0)
        if outside:  # rows outside the edge's subtree: one sync error per window
            ledger.sync[outcome.subject.rsplit(".", 1)[1]] += 1
        if refused - outside > 0:  # rows the store refused
            ledger.rows_refused += refused - outside
            ledger.windows_with_refusals += 1
        if outcome.error is not None:
            ledger.error_replies[family] += 1
            ledger.messages[f"{family}: {re.sub(r'[0-9]+', 'N', outcome.error)[:70]}"] += 1
            if counted == "api":
                ledger.api[api_error_key(outcome.subject)] += 1
            elif counted == "sync":
                ledger.sync[outcome.subject.rsplit(".", 1)[1]] += 1


def api_error_key(subject: str) -> str:
    """The node id siot.stats counts a refused request under: p.<node>[.<parent>],
    nodes.<parent>.<node>, history.<node>, and "" for siot.stats."""
    head, _, rest = subject.partition(".")
    if head == "p":
        return rest.split(".", 1)[0]
    if head == "nodes":
        return rest.rsplit(".", 1)[1]
    if head == "history":
        return rest
    return ""


def failures_of(outcomes: list[Outcome]) -> list[str]:
    return [o.describe() for o in outcomes if o.reply is None or o.problem]
