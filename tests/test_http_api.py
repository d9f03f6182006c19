"""The HTTP API against a real `siot serve` over real HTTP (DESIGN §9): every endpoint and error
status, the REST and NATS doors seeing each other's writes, history buckets against a
brute-force computation, the OpenAPI document."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import ADMIN_EMAIL, Http, http_daemon
from support import SiotProcess

from siot.client import Client
from siot.points import Point


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiotProcess]:
    with http_daemon(tmp_path_factory.mktemp("http") / "data") as proc:
        yield proc


async def test_login_answers_a_token_and_refuses_bad_credentials(admin: Http) -> None:
    anonymous = admin.as_user("")
    answer = await anonymous.call(
        "POST", "/v1/auth", json_body={"email": ADMIN_EMAIL, "password": "x" * 30}, status=401
    )
    assert answer["error"] == "wrong email or password"
    unknown = {"email": "nobody@example.com", "password": "whatever"}
    assert (await anonymous.call("POST", "/v1/auth", 401, json_body=unknown))[
        "error"
    ] == "wrong email or password"
    await anonymous.call("POST", "/v1/auth", 400, json_body={"email": ADMIN_EMAIL})
    await anonymous.call("POST", "/v1/auth", 400, data=b"not json")
    await anonymous.call("POST", "/v1/auth", 400, data=b"{bad json")


async def test_healthz_is_public(admin: Http) -> None:
    assert await admin.as_user("").call("GET", "/healthz") == {"ok": True}


async def test_requests_without_a_valid_token_get_401(admin: Http) -> None:
    root = await admin.root_id()
    assert "missing token" in (await admin.as_user("").call("GET", f"/v1/nodes/{root}", 401))["error"]
    forged = admin.token[:-4] + ("AAAA" if not admin.token.endswith("AAAA") else "BBBB")
    for token in ("garbage", forged):
        await admin.as_user(token).call("GET", f"/v1/nodes/{root}", 401)
    await admin.as_user("").call("GET", "/v1/openapi.json", 401)


async def test_node_read_children_create_move_delete(admin: Http) -> None:
    root = await admin.root_id()
    group = await admin.create(root, "group", [{"type": "description", "value": "plant"}])
    device = await admin.create(group, "device", [{"type": "temp", "value": 20.5}])
    node = await admin.call("GET", f"/v1/nodes/{device}")
    assert (node["id"], node["type"], node["parent"]) == (device, "device", group)
    assert [(p["type"], p["value"], p["origin"]) for p in node["points"]] == [("temp", 20.5, admin.user_id)]
    assert {p["type"] for p in node["edgePoints"]} == {"nodeType", "tombstone"}
    assert (await admin.call("GET", f"/v1/nodes/{device}?parent={group}"))["parent"] == group
    await admin.call("GET", f"/v1/nodes/{device}?parent={root}", 404)

    children = await admin.call("GET", f"/v1/nodes/{group}/children")
    assert [c["id"] for c in children["nodes"]] == [device]
    assert (await admin.call("GET", f"/v1/nodes/{group}/children?type=rule"))["nodes"] == []

    other = await admin.create(root, "group")
    assert await admin.call("POST", f"/v1/nodes/{device}/move", json_body={"from": group, "to": other}) == {
        "ok": True
    }
    assert (await admin.call("GET", f"/v1/nodes/{device}"))["parent"] == other
    assert (await admin.call("GET", f"/v1/nodes/{group}/children"))["nodes"] == []
    await admin.call("POST", f"/v1/nodes/{device}/move", 404, json_body={"from": group, "to": other})
    # a cycle is refused and leaves the node where it was
    cycle = await admin.call("POST", f"/v1/nodes/{other}/move", 400, json_body={"from": root, "to": device})
    assert "cycle" in cycle["error"]
    assert (await admin.call("GET", f"/v1/nodes/{other}"))["parent"] == root

    assert await admin.call("DELETE", f"/v1/nodes/{device}") == {"ok": True}
    assert (await admin.call("GET", f"/v1/nodes/{other}/children"))["nodes"] == []
    deleted = await admin.call("GET", f"/v1/nodes/{other}/children?deleted=true")
    assert [c["id"] for c in deleted["nodes"]] == [device]
    await admin.call("DELETE", f"/v1/nodes/{root}", 400)  # the instance root stays

    explicit = await admin.call(
        "POST", "/v1/nodes", 201, json_body={"parent": root, "type": "device", "id": "dev-7"}
    )
    assert explicit == {"id": "dev-7"}
    exists = await admin.call(
        "POST", "/v1/nodes", 400, json_body={"parent": other, "type": "device", "id": "dev-7"}
    )
    assert "exists already" in exists["error"]


async def test_bad_input_and_unknown_nodes(admin: Http) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    bad = await admin.call(
        "POST", f"/v1/nodes/{device}/points", 400, json_body=[{"type": "t"}, {"type": "a b"}]
    )
    assert bad["error"] == "point 1, field 'type': contains illegal character(s) ' '"
    typo = await admin.call("POST", f"/v1/nodes/{device}/points", 400, json_body={"type": "t", "vaule": 1})
    assert "unknown field" in typo["error"]
    when = await admin.call(
        "POST", f"/v1/nodes/{device}/points", 400, json_body={"type": "t", "time": "yesterday"}
    )
    assert "field 'time'" in when["error"]
    await admin.call("POST", "/v1/nodes", 400, json_body={"parent": root})
    await admin.call(
        "POST", "/v1/nodes", 400, json_body={"parent": root, "type": "device", "points": [{"type": 3}]}
    )
    await admin.call("GET", f"/v1/nodes/{device}/history?limit=0", 400)
    await admin.call("GET", f"/v1/nodes/{device}/history?type=t&every=5x", 400)
    await admin.call("GET", f"/v1/nodes/{device}/history?every=5m", 400)  # buckets need a type
    await admin.call("GET", f"/v1/nodes/{device}/history?start=soon", 400)

    await admin.call("GET", "/v1/nodes/no-such-node", 404)
    await admin.call("GET", "/v1/nodes/no-such-node/children", 404)
    await admin.call("POST", "/v1/nodes/no-such-node/points", 404, json_body={"type": "t", "value": 1})
    await admin.call("GET", "/v1/nodes/no-such-node/history", 404)
    await admin.call("POST", "/v1/nodes", 404, json_body={"parent": "no-such-node", "type": "device"})


async def test_too_large_bodies_and_batches_get_413(admin: Http) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    many = [{"type": "t", "key": str(i), "value": i} for i in range(10_001)]
    assert (
        "batch too large"
        in (await admin.call("POST", f"/v1/nodes/{device}/points", 413, json_body=many))["error"]
    )
    huge = b'{"type": "t", "value": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    await admin.call("POST", f"/v1/nodes/{device}/points", 413, data=huge)


async def test_points_time_forms(admin: Http) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    points = [
        {"type": "a", "value": 1, "time": 1_700_000_000_123_456_789},
        {"type": "b", "value": 2, "time": "2024-05-01T12:00:00.5Z"},
        {"type": "c", "value": 3},
    ]
    await admin.call("POST", f"/v1/nodes/{device}/points", json_body=points)
    await admin.call("POST", f"/v1/nodes/{device}/points", json_body={"type": "d", "value": "one"})
    times = {p["type"]: p["time"] for p in (await admin.call("GET", f"/v1/nodes/{device}"))["points"]}
    assert times["a"] == 1_700_000_000_123_456_789
    assert times["b"] == 1_714_564_800_500_000_000
    assert times["c"] > times["a"] and times["d"] > times["a"]


async def test_rest_writes_reach_nats_and_nats_writes_reach_rest(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    async with nats.changes(device) as changes:
        await admin.call("POST", f"/v1/nodes/{device}/points", json_body={"type": "temp", "value": 21.5})
        change = await changes.get()
        while change.parent is not None:  # the create's edge change may still be on its way
            change = await changes.get()
    assert change.node == device
    assert [(p.type, p.value, p.origin) for p in change.points] == [("temp", 21.5, admin.user_id)]

    await nats.send_points(device, [Point("humidity", 40)])
    node = await admin.call("GET", f"/v1/nodes/{device}")
    assert {p["type"]: p["value"] for p in node["points"]} == {"temp": 21.5, "humidity": 40}


async def test_history_raw(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    base = 1_700_000_000 * 10**9
    await nats.send_points(device, [Point("t", float(i), key="a", time=base + i * 10**9) for i in range(10)])
    await nats.send_points(device, [Point("t", 100, key="b", time=base + 5 * 10**9)])
    raw = await admin.call("GET", f"/v1/nodes/{device}/history?type=t&key=a&start={base + 2 * 10**9}&limit=3")
    assert [p["value"] for p in raw["points"]] == [2.0, 3.0, 4.0]
    ranged = await admin.call(
        "GET", f"/v1/nodes/{device}/history?type=t&start=2023-11-14T22:13:22Z&end=2023-11-14T22:13:25Z"
    )
    assert sorted(p["value"] for p in ranged["points"]) == [2.0, 3.0, 4.0]
    everything = await admin.call("GET", f"/v1/nodes/{device}/history?type=t")
    assert len(everything["points"]) == 11


async def test_history_buckets_match_brute_force(admin: Http, nats: Client) -> None:
    root = await admin.root_id()
    device = await admin.create(root, "device")
    rng = random.Random(14)
    base = 1_700_000_123 * 10**9
    points = []
    for _ in range(3_000):
        t = base + rng.randrange(0, 3 * 3600 * 10**9)
        value: object = rng.choice(
            [rng.uniform(-50, 50), rng.randint(-1000, 1000), rng.random() < 0.5, "text"]
        )
        points.append(Point("level", value, time=t, key=rng.choice(["0", "1"])))
    # same-time readings: first and last break the tie by arrival
    points += [
        Point("level", 7, time=base + 600 * 10**9),
        Point("level", 8, time=base + 600 * 10**9, key="1"),
    ]
    await nats.send_points(device, points)
    every = 7 * 60 * 10**9
    start, end = base + 17 * 10**9, base + 2 * 3600 * 10**9 + 3
    answer = await admin.call(
        "GET", f"/v1/nodes/{device}/history?type=level&every=7m&start={start}&end={end}"
    )

    expected: dict[int, list[tuple[int, float]]] = {}
    for order, p in enumerate(points):
        if start <= p.time < end and not isinstance(p.value, str):
            expected.setdefault(p.time // every * every, []).append((p.time, order, float(p.value)))  # type: ignore[arg-type]
    assert [b["time"] for b in answer["buckets"]] == sorted(expected)
    for bucket in answer["buckets"]:
        rows = sorted(expected[bucket["time"]])
        values = [v for _, _, v in rows]
        assert bucket["count"] == len(values)
        assert bucket["min"] == min(values) and bucket["max"] == max(values)
        assert math.isclose(bucket["mean"], sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-9)
        assert bucket["first"] == rows[0][2] and bucket["last"] == rows[-1][2]
    one_key = await admin.call("GET", f"/v1/nodes/{device}/history?type=level&key=1&every=1h&start={base}")
    assert sum(b["count"] for b in one_key["buckets"]) == sum(
        1 for p in points if p.key == "1" and not isinstance(p.value, str)
    )
    capped = await admin.call("GET", f"/v1/nodes/{device}/history?type=level&every=1m&start=0&limit=5")
    assert len(capped["buckets"]) == 5


async def test_openapi_lists_every_endpoint(admin: Http) -> None:
    document = await admin.call("GET", "/v1/openapi.json")
    assert document["openapi"].startswith("3.")
    assert {(path, method) for path, methods in document["paths"].items() for method in methods} >= {
        ("/v1/auth", "post"),
        ("/healthz", "get"),
        ("/v1/nodes/{id}", "get"),
        ("/v1/nodes/{id}", "delete"),
        ("/v1/nodes/{id}/children", "get"),
        ("/v1/nodes", "post"),
        ("/v1/nodes/{id}/move", "post"),
        ("/v1/nodes/{id}/points", "post"),
        ("/v1/nodes/{id}/history", "get"),
        ("/v1/stream", "get"),
        ("/v1/openapi.json", "get"),
        ("/metrics", "get"),
        ("/v1/ui/me", "get"),
        ("/v1/ui/tree", "get"),
        ("/v1/ui/status", "get"),
        ("/v1/ui/nodes/{id}/undelete", "post"),
        ("/v1/ui/nodes/{id}/mirror", "post"),
    }


async def test_password_hashes_are_never_answered(admin: Http) -> None:
    me = await admin.call("GET", f"/v1/nodes/{admin.user_id}")
    assert "passwordHash" not in {p["type"] for p in me["points"]}
    history = await admin.call("GET", f"/v1/nodes/{admin.user_id}/history")
    assert "passwordHash" not in {p["type"] for p in history["points"]}
    assert (await admin.call("GET", f"/v1/nodes/{admin.user_id}/history?type=passwordHash"))["points"] == []


def test_the_signing_key_is_private(daemon: SiotProcess) -> None:
    key = Path(daemon.data_dir) / "http-signing-key"
    assert key.stat().st_mode & 0o777 == 0o600
