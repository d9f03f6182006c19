"""The shared merge-rule vectors (copied from the contract) applied through a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from siot.codec import decode_points, encode
from siot.points import supersedes
from siot.store import Store

CASES = json.loads((Path(__file__).parent / "vectors" / "merge.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_merge_vector(store: Store, case: dict) -> None:
    await store.submit("n1", decode_points(encode({"type": "nodeType", "value": "x"})), parent=store.root_id)
    incoming = case["incoming"]
    if case["stored"] is not None:
        stored = {"type": incoming["type"], "key": incoming["key"] or "0", **case["stored"]}
        await store.submit("n1", decode_points(encode(stored)))
    changed = await store.submit("n1", decode_points(encode(incoming)))
    assert bool(changed) is case["changed"]
    points = {(p.type, p.key): p for p in await store.node_points("n1")}
    got = points[(incoming["type"], case["expect"].get("key", incoming["key"] or "0"))]
    assert got.value == case["expect"]["value"]
    assert type(got.value) is type(case["expect"]["value"])
    assert got.time == case["expect"]["time"]
    assert got.origin == case["expect"]["origin"]
    assert got.tombstone == case["expect"].get("tombstone", 0)
    history = await store.history("n1", type=incoming["type"], key=None, start=0, end=2**62, limit=100)
    assert len(history) == (1 if case["stored"] is not None else 0) + int(case["logged"])
    if case["logged"]:
        sent = decode_points(encode(incoming))[0]
        assert sent in history


WITH_STORED = [c for c in CASES if c["stored"] is not None]


@pytest.mark.parametrize("case", WITH_STORED, ids=[c["name"] for c in WITH_STORED])
def test_supersedes_matches_vector(case: dict) -> None:
    incoming = decode_points(encode(case["incoming"]))[0]
    stored = decode_points(encode({"type": incoming.type, "key": incoming.key, **case["stored"]}))[0]
    assert supersedes(incoming, stored) is case["changed"]
