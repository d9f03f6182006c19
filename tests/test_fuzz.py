"""Hostile input on every subject one real `siot serve` serves (issue 11 item 7, issue 12).

One daemon (with MQTT on) takes the whole run: `p.*` with and without a reply subject,
`nodes.*.*`, `history.*`, `siot.stats`, `siot.sync.status`, the sync subjects, ingest JSON over
NATS and MQTT, MQTT topics onto the API, and raw NATS protocol with subjects, reply subjects and
headers that are not UTF-8. Each hypothesis example is a batch of inputs sent concurrently.
Afterwards the daemon must be alive and answering, every request must have been answered (never
silence), the error counters on `siot.stats` must have grown by exactly the refusals the run
saw, data outside the fuzz nodes must be untouched, and the log must hold no ERROR line or
traceback.

`make test` sends about 10,400 inputs with a fixed seed; SIOT_FUZZ_EXAMPLES=N sends about N,
SIOT_FUZZ_SEED=random draws new ones, SIOT_FUZZ_VERBOSE=1 prints every kind of refusal seen.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from fuzz_support import (
    NOW_NS,
    Field,
    Harness,
    Ledger,
    Outcome,
    corpus,
    deep_payloads,
    encoded,
    failures_of,
    fast_text,
    garbage,
    hostile_ints,
    hostile_scalars,
    hostile_times,
    hostile_tokens,
    hostile_values,
    mostly,
    mutated,
    point_payloads,
    point_tokens,
    record,
    records,
    request_payloads,
    safe_tokens,
    to_msgpack,
    weighted,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support import free_port, running

from siot.client import Client
from siot.cmd.mqtt_link import MqttLink
from siot.nodes.listener import ListenerState, wait_state
from siot.points import Point
from siot.sync import protocol

# Read at import: the autouse fixture of conftest.py clears SIOT_* variables for each test.
TOTAL_INPUTS = int(os.environ.get("SIOT_FUZZ_EXAMPLES", "10400"))
RANDOM_SEED = os.environ.get("SIOT_FUZZ_SEED") == "random"
VERBOSE = bool(os.environ.get("SIOT_FUZZ_VERBOSE"))
BATCH = 20
# Share of the inputs per subject family (sums to 1).
SHARES = {
    "points": 0.30,  # each payload drawn is sent twice: with a reply subject and without
    "reads": 0.21,  # each drawn twice too: to nodes.*.* and to history.*
    "stats": 0.03,
    "sync": 0.20,
    "ingest": 0.12,
    "mqtt": 0.10,
    "raw": 0.04,
}
TWICE = ("points", "reads")
SETTLE_S = 20.0


def fuzz_settings(family: str) -> settings:
    return settings(
        max_examples=max(1, round(TOTAL_INPUTS * SHARES[family] / BATCH / (2 if family in TWICE else 1))),
        derandomize=not RANDOM_SEED,
        database=None,
        deadline=None,
        # A failing batch names its bad inputs; shrinking against a daemon that stays silent
        # would cost a reply timeout per step.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def batch(items: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(items, min_size=BATCH, max_size=BATCH)


@dataclass
class FuzzEnv:
    harness: Harness
    client: Client
    proc: Any
    mqtt_port: int
    root: str
    known: list[str]  # nodes no fuzz input may change
    fuzz: list[str]  # nodes fuzz writes may change
    ingest: str  # ingest node on subject fzin.*
    mqtt_ingest: str  # ingest node on topic fzmq/+/data
    edge: str  # an attached sync edge
    edge_nodes: list[str]  # nodes below it, written only by sync rows
    snapshot: dict[str, Any]
    stats: dict[str, Any]
    ledger: Ledger


async def _snapshot(client: Client, root: str, known: list[str]) -> dict[str, Any]:
    """Points, edge points, children and full history of the known nodes and the root (the
    root's children except those fuzzing may attach there: sync hellos of fze* edges)."""
    result: dict[str, Any] = {}
    for node in [root, *known]:
        info = await client.get_node(node)
        result[node] = (sorted(map(repr, info.points)), sorted(map(repr, info.edge_points)), info.parent)
        result[f"history {node}"] = [repr(p) for p in await client.history(node, limit=1_000_000)]
        result[f"children {node}"] = sorted(
            c.id for c in await client.children(node, deleted=True) if not c.id.startswith("fze")
        )
    return result


async def _setup(harness: Harness, proc: Any, mqtt_port: int) -> FuzzEnv:
    client = Client(harness.nc)
    root = await client.load_root()
    t0 = time.time_ns() - 10**12
    known1 = await client.create_node(root, "device", [Point("description", "known 1")])
    for i in range(5):
        points = [Point("temp", 20 + i, time=t0 + i), Point("label", f"v{i}", time=t0 + i)]
        await client.send_points(known1, points)
    known2 = await client.create_node(
        known1, "device", [Point("description", "known 2"), Point("doc", {"a": [1, 2.5, "x"], "b": None})]
    )
    fuzz_group = await client.create_node(root, "group", [Point("description", "fuzz")])
    fuzz = [fuzz_group]
    for i in range(4):
        fuzz.append(await client.create_node(fuzz_group, "device", [Point("description", f"fuzz {i}")]))
    # maxDevices past the number of device names the run draws: this run counts the API's
    # refusals per device; the device limit has tests of its own (test_ingest_limits.py).
    unlimited = Point("maxDevices", 1_000_000)
    ingest = await client.create_node(
        fuzz_group, "ingest", [Point("subject", "fzin.*"), Point("timeField", "t"), unlimited]
    )
    mqtt_ingest = await client.create_node(
        fuzz_group,
        "ingest",
        [Point("topic", "fzmq/+/data"), Point("deviceTopicLevel", 1), Point("timeField", "t"), unlimited],
    )
    for node in (ingest, mqtt_ingest):
        await wait_state(client, node, ListenerState.LISTENING)
    edge = "fze-edge"
    hello = await client.request(
        protocol.hello(edge), msgpack.packb({"instance": edge, "parent": fuzz_group, "version": 1})
    )
    assert hello["attached"], hello
    edge_nodes = [await client.create_node(edge, "device") for _ in range(2)]
    known = [known1, known2]
    return FuzzEnv(
        harness=harness,
        client=client,
        proc=proc,
        mqtt_port=mqtt_port,
        root=root,
        known=known,
        fuzz=fuzz,
        ingest=ingest,
        mqtt_ingest=mqtt_ingest,
        edge=edge,
        edge_nodes=edge_nodes,
        snapshot=await _snapshot(client, root, known),
        stats=await client.stats(),
        ledger=Ledger(),
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    mqtt_port = free_port()
    with running(tmp_path_factory.mktemp("fuzz"), extra_args=["--mqtt-port", str(mqtt_port)]) as proc:
        harness = Harness(proc.url)
        try:
            yield harness.run(_setup(harness, proc, mqtt_port))
        finally:
            harness.close()


_serial = itertools.count()


def _unique(prefix: str) -> str:
    """A node id no input has used: fire-and-forget inputs are told apart by it."""
    return f"{prefix}{next(_serial)}"


def _check(family: str, env: FuzzEnv, outcomes: list[Outcome], *, counted: str = "api") -> None:
    record(env.ledger, family, outcomes, counted=counted)
    bad = failures_of(outcomes)
    assert not bad, f"{len(bad)} of {len(outcomes)} {family} inputs got no proper reply:\n" + "\n".join(
        bad[:10]
    )


# ---- p.<node> and p.<node>.<parent> --------------------------------------------------------------


def point_subjects(fuzz: list[str]) -> st.SearchStrategy[str]:
    own = st.sampled_from(fuzz)
    new = safe_tokens.map(lambda t: "fzn" + t)
    target = mostly(own, st.one_of(new, hostile_tokens))
    return weighted(
        (5, target.map(lambda n: f"p.{n}")),
        (4, st.builds(lambda n, p: f"p.{n}.{p}", weighted((1, own), (2, new), (1, hostile_tokens)), target)),
        (1, st.builds(lambda n, a, b: f"p.{n}.{a}.{b}", own, safe_tokens, safe_tokens)),
    )


def test_fuzz_points(env: FuzzEnv) -> None:
    """Each payload twice: as a request on its subject, and fire-and-forget to a node that does
    not exist, where it must be counted as one error under that node's id whatever it holds
    (checked in test_zz_after_fuzz)."""

    @fuzz_settings("points")
    @given(batch(st.tuples(point_subjects(env.fuzz), point_payloads())))
    def run(items: list[tuple[str, bytes]]) -> None:
        unanswered = []
        for _, payload in items:
            token = _unique("nr")
            env.ledger.api[token] += 1
            unanswered.append((f"p.{token}", payload))
        env.harness.publish(unanswered)
        env.ledger.sent["points-noreply"] += len(unanswered)
        _check("points", env, env.harness.requests(items))

    run()


# ---- nodes.<parent>.<node>, history.<node>, siot.stats ----------------------------------------------


def _node_pool(env: FuzzEnv) -> st.SearchStrategy[str]:
    # not the edge's nodes: sync rows go there, and the store counts refused rows under them
    mine = [env.root, *env.known, *env.fuzz, env.edge, env.ingest, "root", "all"]
    return mostly(st.sampled_from(mine), st.one_of(safe_tokens, hostile_tokens))


def test_fuzz_reads(env: FuzzEnv) -> None:
    """Each request map twice: to nodes.<parent>.<node> and to history.<node> (the fields one
    subject does not know are noise to it)."""
    pool = _node_pool(env)
    window = (st.integers(0, NOW_NS * 2), st.one_of(hostile_ints, hostile_times))
    payloads = request_payloads(
        {
            "type": (st.sampled_from(["device", "group", "ingest", "temp", "label"]), point_tokens),
            "deleted": (st.booleans(), hostile_values),
            "start": window,
            "end": window,
            "limit": (st.integers(1, 100), st.one_of(st.integers(-3, 3), hostile_ints, hostile_scalars)),
            "key": (st.just("0"), point_tokens),
        }
    )

    @fuzz_settings("reads")
    @given(batch(st.tuples(pool, pool, pool, payloads)))
    def run(items: list[tuple[str, str, str, bytes]]) -> None:
        requests = [(f"nodes.{a}.{b}", payload) for a, b, _, payload in items]
        requests += [(f"history.{c}", payload) for _, _, c, payload in items]
        _check("reads", env, env.harness.requests(requests))

    run()


def test_fuzz_stats(env: FuzzEnv) -> None:
    payloads = request_payloads({"node": point_tokens, "reset": hostile_values})

    @fuzz_settings("stats")
    @given(batch(st.tuples(st.sampled_from(["siot.stats", protocol.STATUS]), payloads)))
    def run(items: list[tuple[str, bytes]]) -> None:
        _check("stats", env, env.harness.requests(items))

    run()


# ---- sync.hello/up/pull/digest/state.<edge> ---------------------------------------------------------


def _rows(env: FuzzEnv) -> st.SearchStrategy[Any]:
    """Log rows as peers send them, [seq, node, parent, type, key, time, value, tombstone,
    origin, instance, instance_seq], mostly well-formed, about one bad field in each."""
    new = safe_tokens.map(lambda t: "fzr" + t)
    # outside the edge's subtree: refused, and the nodes there unchanged
    theirs = st.sampled_from([env.root, *env.known, *env.fuzz])
    nodes = (st.sampled_from(env.edge_nodes), st.one_of(new, theirs, hostile_tokens, hostile_scalars))
    counts = (st.integers(0, 10**6), st.one_of(hostile_ints, hostile_scalars))
    fields: dict[str, Field] = {
        "seq": counts,
        "node": nodes,
        "parent": (
            st.sampled_from(["", "", env.edge, *env.edge_nodes]),
            st.one_of(new, theirs, hostile_tokens),
        ),
        "type": (st.sampled_from(["temp", "nodeType", "tombstone", "description"]), point_tokens),
        "key": (st.just("0"), point_tokens),
        "time": (st.integers(NOW_NS, NOW_NS + 10**12), hostile_times),
        "value": (
            st.sampled_from([msgpack.packb(v) for v in (1, 2.5, "x", None, "device", 0, [1, {"a": 2}])]),
            st.one_of(hostile_values.map(to_msgpack), garbage, deep_payloads, hostile_scalars),
        ),
        "tombstone": (st.integers(0, 3), st.one_of(hostile_ints, hostile_scalars)),
        "origin": (st.sampled_from(["", "fuzz"]), point_tokens),
        "instance": (st.sampled_from(["", env.edge, "other"]), st.one_of(hostile_tokens, hostile_scalars)),
        "instance_seq": counts,
    }
    row = weighted(
        (6, records(fields, as_list=True)), (1, st.lists(corpus, max_size=12)), (1, hostile_values)
    )
    return weighted((6, st.lists(row, max_size=3)), (1, hostile_values))


def sync_requests(env: FuzzEnv) -> st.SearchStrategy[tuple[str, bytes]]:
    """(subject, payload) for every sync subject, built once (a strategy is costly to build)."""
    # existing nodes that are no edge (the root, known and fuzz nodes): refused, never taken over
    edges = mostly(
        st.just(env.edge),
        st.one_of(
            safe_tokens.map(lambda t: "fze" + t),
            st.sampled_from([env.root, *env.known, *env.fuzz, *env.edge_nodes]),
            hostile_tokens,
        ),
    )
    cursor = (st.integers(0, 50), st.one_of(hostile_ints, hostile_scalars))
    parent = (st.sampled_from(env.fuzz), st.one_of(hostile_tokens, hostile_scalars, safe_tokens))
    node_ids = st.sampled_from([env.edge, *env.edge_nodes, "nope"])
    fields: dict[str, dict[str, Field]] = {
        "hello": {"instance": point_tokens, "parent": parent, "version": (st.just(1), hostile_ints)},
        "up": {
            "from": cursor,
            "to": cursor,
            "rows": _rows(env),
            "state": (st.booleans(), hostile_scalars),
        },
        "pull": {"ack": cursor, "limit": cursor},
        "digest": {"after": (node_ids, point_tokens), "limit": cursor},
        "state": {"nodes": (st.lists(node_ids, max_size=4), st.lists(corpus, max_size=4))},
    }
    weights = {"hello": 1, "up": 3, "pull": 1, "digest": 1, "state": 1}
    return weighted(
        *(
            (
                weights[kind],
                st.tuples(
                    edges.map(lambda e, k=kind: f"sync.{k}.{e}"),
                    request_payloads(kind_fields),
                ),
            )
            for kind, kind_fields in fields.items()
        )
    )


def test_fuzz_sync(env: FuzzEnv) -> None:
    @fuzz_settings("sync")
    @given(batch(sync_requests(env)))
    def run(items: list[tuple[str, bytes]]) -> None:
        _check("sync", env, env.harness.requests(items), counted="sync")

    run()


# ---- ingest JSON over NATS ----------------------------------------------------------------------------


def _device_messages() -> st.SearchStrategy[Any]:
    """Device messages as JSON objects: a few plausible fields, at most one of them hostile
    (a name the mapping must rewrite, a value it must refuse, a time outside int64...)."""
    number = st.sampled_from([21.5, 0, -3, 1e-3, True, "on", 1700000000])
    message = records(
        {
            "temp": (number, hostile_values),
            "hum": (number, hostile_values),
            "t": (st.integers(1_600_000_000, 1_700_000_000), hostile_times),
            "a.b": (number, hostile_values),
            "x y": (st.just("text"), hostile_values),
            "é" * 200: (number, hostile_values),
            "env": (st.just({"in": 1.5}), hostile_values.map(lambda v: {"in": v})),
        },
        extra=True,
    )
    nested = st.sampled_from([json.loads('{"a":' * n + "1" + "}" * n) for n in (15, 16, 17, 40)])
    return weighted((5, message), (1, st.lists(message, max_size=3)), (1, nested), (1, hostile_values))


def _ingest_payloads() -> st.SearchStrategy[bytes]:
    messages = encoded(_device_messages())
    return weighted((6, messages), (1, mutated(messages)), (1, garbage), (1, deep_payloads))


DEVICES = ["d1", "d2", "dé", "d-3", "0"]


def test_fuzz_ingest_over_nats(env: FuzzEnv) -> None:
    devices = mostly(st.sampled_from(DEVICES), hostile_tokens)

    @fuzz_settings("ingest")
    @given(batch(st.tuples(devices.map(lambda d: f"fzin.{d}"), _ingest_payloads())))
    def run(items: list[tuple[str, bytes]]) -> None:
        outcomes = env.harness.requests(items)
        record(env.ledger, "ingest", outcomes, counted="none")
        for outcome in outcomes:
            error = outcome.error
            # A refusal by the mapping says "message on ..."; anything else was refused by the
            # API (e.g. a time too far ahead) and counted under the device's node id.
            if error is not None and not error.startswith("message on "):
                env.ledger.ingest_refused[outcome.subject.split(".", 1)[1]] += 1
        bad = failures_of(outcomes)
        assert not bad, "ingest inputs got no proper reply:\n" + "\n".join(bad[:10])

    run()


# ---- MQTT -----------------------------------------------------------------------------------------------

# MQTT topic levels: no wildcards, and none of what nats-server answers by closing the connection
# (whitespace, DEL: see nats-server's errMQTTUnsupportedCharacters); '.' stays (nats maps it to //).
_mqtt_levels = st.one_of(
    st.sampled_from(["", ".", "a.b", "é", "$x", "-"]),
    fast_text(12, subject_safe=True).map(lambda t: re.sub(r"[/+#\s\x7f]", "_", t)),
)


def mqtt_messages() -> st.SearchStrategy[tuple[str, str, bytes, int]]:
    """(kind, topic, payload, qos). Topics onto the API name nodes that do not exist, so each
    message is exactly one counted error; ingest and junk topics are only survived."""
    qos = st.integers(0, 1)
    kinds = [
        (2, "p", st.just("p/{token}"), point_payloads()),
        (1, "history", st.just("history/{token}"), request_payloads({"start": hostile_ints})),
        (1, "nodes", st.just("nodes/{token}x/{token}"), request_payloads({"type": point_tokens})),
        (1, "sync", st.just("sync/up/{token}"), request_payloads({"to": hostile_ints})),
        (
            2,
            "ingest",
            mostly(st.sampled_from(DEVICES), _mqtt_levels).map(lambda d: f"fzmq/{d}/data"),
            _ingest_payloads(),
        ),
        (
            1,
            "junk",
            st.lists(_mqtt_levels, min_size=1, max_size=5).map(lambda ls: "fzjunk/" + "/".join(ls)),
            garbage,
        ),
    ]
    return weighted(
        *((w, st.tuples(st.just(kind), topics, payloads, qos)) for w, kind, topics, payloads in kinds)
    )


def test_fuzz_mqtt(env: FuzzEnv) -> None:
    link = env.harness.run(MqttLink.connect(port=env.mqtt_port, client_id="fuzzer"))

    @fuzz_settings("mqtt")
    @given(batch(mqtt_messages()))
    def run(messages: list[tuple[str, str, bytes, int]]) -> None:
        sends = []
        for kind, topic, payload, qos in messages:
            if "{token}" in topic:
                token = _unique("mq")
                topic = topic.format(token=token)
                (env.ledger.sync if kind == "sync" else env.ledger.api)[token] += 1
            sends.append((topic, payload, qos))
        env.ledger.sent["mqtt"] += len(sends)

        async def publish() -> None:
            await asyncio.gather(*(link.publish(t, p, qos=q) for t, p, q in sends))

        env.harness.run(publish(), timeout_s=30)

    try:
        run()
    finally:
        link.close()


# ---- raw NATS protocol: bytes nats-py cannot decode ------------------------------------------------


_RAW_PAYLOADS = point_payloads()


@st.composite
def raw_messages(draw: st.DrawFn) -> tuple[bytes, str]:
    """(protocol bytes, the node id the daemon should count one error for). nats-server passes
    subject bytes through unchecked; nats-py decodes them as UTF-8 in its read loop."""
    token = _unique("rw").encode()
    junk = draw(
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88\x80\x80\x80", b""])
    )
    kind = draw(st.integers(0, 2))
    payload = draw(_RAW_PAYLOADS)
    if kind == 0 or not junk:  # the subject itself
        subject, reply, headers = b"p." + token + junk, b"", b""
    elif kind == 1:  # the reply subject
        subject, reply, headers = b"p." + token, b"_INBOX." + junk, b""
    else:  # a header status line and header lines
        subject, reply = b"p." + token, b""
        headers = b"NATS/1.0 " + junk + b"\r\nk" + junk + b": v" + junk + b"\r\n\r\n"
    node = (token + junk).decode(errors="replace") if kind == 0 else token.decode()
    reply_part = b" " + reply if reply else b""
    if headers:
        line = b"HPUB %s%s %d %d\r\n" % (subject, reply_part, len(headers), len(headers) + len(payload))
        return line + headers + payload + b"\r\n", node
    return b"PUB %s%s %d\r\n" % (subject, reply_part, len(payload)) + payload + b"\r\n", node


async def _send_raw(host: str, port: int, frames: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        writer.write(b"".join(frames) + b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line == b"PONG\r\n", line
    finally:
        writer.close()


def test_fuzz_raw_protocol(env: FuzzEnv) -> None:
    @fuzz_settings("raw")
    @given(batch(raw_messages()))
    def run(messages: list[tuple[bytes, str]]) -> None:
        for _, node in messages:
            env.ledger.api[node] += 1
        env.harness.run(_send_raw("127.0.0.1", env.proc.port, [frame for frame, _ in messages]))
        env.ledger.sent["raw"] += len(messages)
        # the daemon still answers on its one connection
        assert env.harness.request("siot.stats").get("ok") is True

    run()


# ---- afterwards -------------------------------------------------------------------------------------


def _error_sum(stats: dict[str, Any], name: str) -> int:
    return sum(stats.get(name, {}).values())


def test_zz_after_fuzz(env: FuzzEnv) -> None:
    """The daemon is alive and answers, counted exactly what it refused, changed nothing outside
    the fuzz nodes, and logged no ERROR or traceback."""
    harness, client, ledger = env.harness, env.client, env.ledger
    assert env.proc.proc.poll() is None, "siot serve died:\n" + env.proc.log()[-5000:]
    assert not ledger.failures, "\n".join(ledger.failures[:20])

    async def devices(ingest: str) -> dict[str, str]:
        return {c.description: c.id for c in await client.children(ingest, deleted=True)}

    # What the API refuses from ingest (a time too far ahead, say) is counted under the device's
    # node id, once per request the runner made: a message may carry several readings, and over
    # MQTT there is no reply to tell. So devices' counts are checked apart, and only from below.
    nats_devices = harness.run(devices(env.ingest))
    unpredicted = set(nats_devices.values()) | set(harness.run(devices(env.mqtt_ingest)).values())

    def row_key(key: str) -> bool:
        return key in env.edge_nodes or key.startswith("fzr")

    def growth(stats: dict[str, Any], name: str, *, rows: bool = False) -> Counter[str]:
        """Growth of an error map; for `errors`, only the keys of sync rows (`rows`) or only the
        others (`unpredicted` ones left out)."""

        def wanted(key: str) -> bool:
            return name != "errors" or (key not in unpredicted and row_key(key) == rows)

        grown = Counter({k: v for k, v in stats.get(name, {}).items() if wanted(k)})
        grown.subtract({k: v for k, v in env.stats.get(name, {}).items() if wanted(k)})
        return +grown

    async def settled() -> dict[str, Any]:
        """Fire-and-forget inputs are counted when handled: wait until every one is."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            stats = await client.stats()
            if (
                growth(stats, "errors") == ledger.api and growth(stats, "syncErrors") == ledger.sync
            ) or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.2)

    stats = harness.run(settled())
    assert stats["ready"] is True
    short = {
        name: (stats["errors"].get(nats_devices[name], 0), count)
        for name, count in ledger.ingest_refused.items()
        if stats["errors"].get(nats_devices[name], 0) - env.stats["errors"].get(nats_devices[name], 0) < count
    }
    assert not short, f"ingest refusals by the API not counted under the device, (counted, refused): {short}"
    # Refused sync rows: one count per refused write, a write being a run of rows of one node.
    rows_counted = growth(stats, "errors", rows=True).total()
    assert ledger.windows_with_refusals <= rows_counted <= ledger.rows_refused, (
        f"{rows_counted} refused sync writes counted; the windows had {ledger.rows_refused} refused "
        f"rows in {ledger.windows_with_refusals} windows"
    )
    for name, expected in (("errors", ledger.api), ("syncErrors", ledger.sync)):
        grown = growth(stats, name)
        wrong = {
            k: (grown[k], expected[k]) for k in grown.keys() | expected.keys() if grown[k] != expected[k]
        }
        assert not wrong, (
            f"siot.stats {name} grew by {grown.total()}, expected {expected.total()} "
            f"(refusals seen by the run); per node id, (counted, expected): {dict(list(wrong.items())[:10])}"
        )

    async def normal_use() -> dict[str, Any]:
        node = await client.create_node(env.fuzz[0], "device", [Point("description", "after fuzz")])
        await client.send_points(node, [Point("temp", 21.5, time=123), Point("temp", 22.5, time=456)])
        info = await client.get_node(node)
        assert info.value("temp") == 22.5 and info.description == "after fuzz"
        assert [p.value for p in await client.history(node, "temp")] == [21.5, 22.5]
        return await _snapshot(client, env.root, env.known)

    assert harness.run(normal_use()) == env.snapshot

    log = env.proc.log()
    bad_lines = [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback|CRITICAL", line)]
    assert not bad_lines, "unexpected errors in the daemon log:\n" + "\n".join(bad_lines[:20])
    if set(SHARES) <= set(ledger.sent):  # the whole module ran
        assert ledger.total >= TOTAL_INPUTS * 0.95, ledger.sent
    if VERBOSE:
        for message, count in sorted(ledger.messages.items()):
            print(f"{count:6d}  {message}")
    print(f"fuzzed {ledger.total} inputs: {dict(ledger.sent)}; error replies {dict(ledger.error_replies)}")
