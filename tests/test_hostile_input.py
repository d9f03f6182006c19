"""What the fuzz run (test_fuzz.py) found, pinned as small tests: each input is refused with a
clear error instead of escaping as RecursionError, OverflowError or UnicodeEncodeError."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from siot.codec import decode_any, decode_points, decode_request
from siot.errors import DecodeError, InvalidInput, InvalidPoint
from siot.nodes.ingest.config import IngestConfig, TimeUnit
from siot.nodes.ingest.mapping import map_message, parse_time_ns, point_type_for
from siot.sync import protocol


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 5_000 + b"]" * 5_000,
        b'{"a":' * 2_000 + b"1" + b"}" * 2_000,
        b'[{"type":"t","value":' + b"[" * 3_000,
    ],
)
def test_json_nested_past_the_recursion_limit_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match=r"nested too deeply|malformed JSON"):
        decode_points(payload)
    with pytest.raises(DecodeError):
        decode_request(payload)


def test_msgpack_nested_too_deep_says_so() -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_any(b"\x91" * 5_000 + b"\xc0")
    with pytest.raises(DecodeError, match="invalid format byte"):
        decode_any(b"\xc1")


def test_json_lone_surrogates_are_refused_and_pairs_kept() -> None:
    """A lone \\ud800 decodes to a str msgpack cannot encode: stored, it failed the whole group
    commit it rode in, taking the other writes of the group with it."""
    for payload in (b'[{"type": "x", "value": "\\ud800"}]', b'[{"type": "\\uDBFF"}]', b'{"\\udc00": 1}'):
        with pytest.raises(DecodeError, match="lone UTF-16 surrogate"):
            decode_any(payload)
    [point] = decode_points(b'[{"type": "x", "value": "\\ud83d\\ude00 \\\\ud800"}]')
    assert point.value == "\U0001f600 \\ud800"


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, 2**63, 10**30, 1e300, "9999-12-31T23:59:59Z", "1.5e400"]
)
def test_ingest_times_outside_int64_are_invalid_points(value: object) -> None:
    with pytest.raises(InvalidPoint, match="field 'time'"):
        parse_time_ns(value, TimeUnit.AUTO)


def test_ingest_refuses_values_msgpack_cannot_carry() -> None:
    config = IngestConfig.model_validate({"id": "in", "parent": "p", "subject": "dev.*", "field": {"v": "v"}})
    for message in ({"v": 2**64}, {"v": [1, 2**70]}, {"v": json.loads("[" * 20 + "]" * 20)}):
        with pytest.raises(InvalidInput):
            map_message(config, "dev.a", json.dumps(message).encode(), 1)
    plain = IngestConfig.model_validate({"id": "in", "parent": "p", "subject": "dev.*"})
    with pytest.raises(InvalidPoint, match="outside int64"):
        map_message(plain, "dev.a", b'{"v": 18446744073709551616}', 1)


def test_ingest_point_types_are_cut_to_256_bytes_not_characters() -> None:
    assert len(point_type_for("é" * 300).encode()) <= 256
    assert point_type_for("a.b c") == "a_b_c"


def _row(**changes: object) -> list[object]:
    row = {
        "seq": 1,
        "node": "n",
        "parent": "",
        "type": "t",
        "key": "0",
        "time": 5,
        "value": msgpack.packb(1),
        "tombstone": 0,
        "origin": "",
        "instance": "edge",
        "instance_seq": 1,
    }
    row.update(changes)
    return list(row.values())


@pytest.mark.parametrize(
    "row",
    [
        _row(instance_seq=2**63),
        _row(seq=2**64 - 1),
        _row(seq=-1),
        _row(instance="a.b"),
        _row(instance="x" * 300),
    ],
)
def test_sync_rows_with_provenance_sqlite_cannot_store_are_refused(row: list[object]) -> None:
    """Such a row passed validation and failed the group commit it rode in."""
    with pytest.raises(InvalidInput):
        protocol.decode_rows([row])
    assert protocol.decode_rows([_row()])[0].instance_seq == 1


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb([{"type": "t", "value": math.nan}]),
        msgpack.packb([{"type": "t", "value": -math.inf}]),
        msgpack.packb([{"type": "t", "value": [1.0, math.inf]}]),
        b'[{"type": "t", "value": NaN}]',  # Python's json reads these words
        b'[{"type": "t", "value": Infinity}]',
    ],
)
def test_non_finite_values_are_refused_on_every_encoding(payload: bytes) -> None:
    with pytest.raises(InvalidPoint, match="field 'value': must be a finite number"):
        decode_points(payload)
