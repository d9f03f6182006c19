"""Fan-out messages stay under the broker's max_payload: the points of one commit to one node
are split over several messages when together they would not fit (two 5 MB writes landing in
one group commit made a 10 MB message that nats-server refused, with the rest of the commit's
fan-out)."""

from __future__ import annotations

import logging

import pytest

from siot.codec import decode_trusted_points
from siot.fanout import payloads
from siot.points import Point


def test_points_that_fit_travel_in_one_message() -> None:
    points = [Point("t", i, time=i + 1) for i in range(10)]
    (only,) = payloads("n", points, 8 * 1024 * 1024)
    assert decode_trusted_points(only) == points


def test_large_points_are_split_in_order_each_message_under_the_limit() -> None:
    points = [Point("blob", "x" * 3000, key=str(i), time=i + 1) for i in range(7)]
    split = payloads("n", points, 7000)
    assert len(split) == 4 and all(len(message) <= 7000 for message in split)
    assert [p for message in split for p in decode_trusted_points(message)] == points


def test_a_point_larger_than_any_message_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    points = [Point("small", 1, time=1), Point("huge", "x" * 10_000, time=2), Point("small", 2, time=3)]
    with caplog.at_level(logging.WARNING, logger="siot.fanout"):
        split = payloads("n", points, 5000)
    assert [p.type for message in split for p in decode_trusted_points(message)] == ["small", "small"]
    assert "huge of n is" in caplog.text
