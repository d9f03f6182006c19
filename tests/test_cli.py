"""The client commands of `siot`, each run as a subprocess against a real `siot serve`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from support import SIOT_BIN, SiotProcess, free_port, run_siot

from siot.cmd.main import cli

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiotProcess]:
    data = tmp_path_factory.mktemp("cli") / "data"
    proc = SiotProcess(data_dir=data, extra_args=["--checkpoint-interval", "0.05"]).start()
    try:
        yield proc
    finally:
        proc.stop()


def as_json(url: str, *args: str) -> object:
    return json.loads(run_siot(url, *args, "--json").stdout)


def points_of(node_json: dict) -> dict[str, object]:
    return {
        p["type"] if p["key"] == "0" else f"{p['type']}.{p['key']}": p["value"] for p in node_json["points"]
    }


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path, lazy ones (cmd/lazy.py) included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from walk(command, (*prefix, name))


def test_every_command_has_help() -> None:
    runner = CliRunner()
    paths = list(walk(cli))
    assert {("tree",), ("monitor",), ("import",), ("bench", "ingest")} <= set(paths)
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example usage" in result.output or len(result.output.splitlines()) > 5, path
    assert "Usage: siot" in subprocess.run([SIOT_BIN, "--help"], capture_output=True, text=True).stdout


def test_add_set_get_typed_values(instance: SiotProcess) -> None:
    url = instance.url
    node = run_siot(url, "add", "root", "device", "description=soil 3").stdout.strip()
    run_siot(
        url,
        "set",
        node,
        "i=3",
        "f=3.5",
        "b=true",
        "s=hello",
        'q="42"',
        "neg=-7",
        "ch.2=1",
        "--origin",
        "cli-test",
    )
    got = as_json(url, "get", node)
    assert got["type"] == "device"
    values = points_of(got)
    assert values == {
        "description": "soil 3",
        "i": 3,
        "f": 3.5,
        "b": True,
        "s": "hello",
        "q": "42",
        "neg": -7,
        "ch.2": 1,
    }
    assert isinstance(values["i"], int) and isinstance(values["b"], bool)
    assert {p["origin"] for p in got["points"] if p["type"] == "i"} == {"cli-test"}
    text = run_siot(url, "get", node).stdout
    assert "soil 3" in text and "ch.2" in text and "origin cli-test" in text
    tree = run_siot(url, "tree").stdout
    assert f'device "soil 3" {node}' in tree


def test_rm_mv_and_edge_points(instance: SiotProcess) -> None:
    url = instance.url
    a = run_siot(url, "add", "root", "group", "description=a").stdout.strip()
    b = run_siot(url, "add", "root", "group", "description=b").stdout.strip()
    leaf = run_siot(url, "add", a, "variable", "description=leaf").stdout.strip()
    run_siot(url, "mv", leaf, "--to", b)
    tree = as_json(url, "tree", b)
    assert [c["id"] for c in tree["children"]] == [leaf]
    assert as_json(url, "tree", a)["children"] == []
    run_siot(url, "set", leaf, "--edge", b, "weight=2")
    edge = next(e for e in as_json(url, "get", leaf)["edges"] if e["parent"] == b)
    assert {p["type"]: p["value"] for p in edge["edgePoints"]}["weight"] == 2
    run_siot(url, "rm", leaf)
    assert as_json(url, "tree", b)["children"] == []
    assert "(deleted)" in run_siot(url, "tree", b, "--deleted").stdout


def test_history_since_and_limit(instance: SiotProcess) -> None:
    url = instance.url
    node = run_siot(url, "add", "root", "device").stdout.strip()
    for value in (1, 2, 3):
        run_siot(url, "set", node, f"temp={value}", "other=0")
    values = [p["value"] for p in as_json(url, "history", node, "temp", "--since", "1h")]
    assert values == [1, 2, 3]
    assert [p["value"] for p in as_json(url, "history", node, "temp", "--limit", "2")] == [1, 2]
    assert as_json(url, "history", node, "temp", "--until", "1h") == []
    assert "temp=3" in run_siot(url, "history", node, "temp").stdout


def test_monitor_streams_committed_changes(instance: SiotProcess) -> None:
    url = instance.url
    node = run_siot(url, "add", "root", "device", "description=watched").stdout.strip()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}, "SIOT_URL": url}
    with subprocess.Popen(
        [SIOT_BIN, "monitor", node, "--nl", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as monitor:
        assert monitor.stderr is not None and monitor.stdout is not None
        assert monitor.stderr.readline().startswith("monitoring")  # the subscription is live
        run_siot(url, "set", node, "temp=21.5", "--origin", "probe")
        run_siot(url, "set", node, "temp=22")
        lines = [json.loads(monitor.stdout.readline()) for _ in range(2)]
        assert monitor.wait(timeout=TIMEOUT_S) == 0
    assert [(r["name"], r["type"], r["value"]) for r in lines] == [
        ("watched", "temp", 21.5),
        ("watched", "temp", 22),
    ]
    assert lines[0]["origin"] == "probe" and lines[0]["node"] == node


def test_export_import_round_trip_is_idempotent(instance: SiotProcess, tmp_path: Path) -> None:
    url = instance.url
    top = run_siot(url, "add", "root", "group", "description=greenhouse").stdout.strip()
    sensor = run_siot(
        url, "add", top, "device", "description=probe", "temp=21.5", "on=true", "n.3=7"
    ).stdout.strip()
    run_siot(url, "set", sensor, "--edge", top, "order=1")
    run_siot(url, "add", sensor, "variable", "description=setpoint", "value=20").stdout.strip()
    exported = run_siot(url, "export", top).stdout
    doc = yaml.safe_load(exported)
    assert doc["id"] == top and doc["children"][0]["points"] == {
        "description": "probe",
        "n.3": 7,
        "on": True,
        "temp": 21.5,
    }
    assert doc["children"][0]["edgePoints"] == {"order": 1}

    other = SiotProcess(data_dir=tmp_path / "other").start()
    try:
        first = run_siot(other.url, "import", stdin=exported)
        assert "3 nodes created" in first.stderr
        seq = as_json(other.url, "stats")["lastSeq"]
        second = run_siot(other.url, "import", stdin=exported)
        assert "0 nodes created, 0 points written" in second.stderr
        assert as_json(other.url, "stats")["lastSeq"] == seq  # nothing changed
        assert yaml.safe_load(run_siot(other.url, "export", top).stdout) == doc
        doc["children"][0]["points"]["temp"] = 25  # an edited file updates only what differs
        third = run_siot(other.url, "import", stdin=yaml.safe_dump(doc))
        assert "0 nodes created, 1 points written" in third.stderr
        assert points_of(as_json(other.url, "get", sensor))["temp"] == 25
    finally:
        other.stop()


def test_import_without_ids_is_idempotent(instance: SiotProcess) -> None:
    url = instance.url
    parent = run_siot(url, "add", "root", "group").stdout.strip()
    handwritten = (
        "type: group\npoints: {description: hand}\nchildren:\n- {type: device, points: {description: d1}}\n"
    )
    run_siot(url, "import", "--parent", parent, stdin=handwritten)
    run_siot(url, "import", "--parent", parent, stdin=handwritten)
    tree = as_json(url, "tree", parent)
    assert len(tree["children"]) == 1 and len(tree["children"][0]["children"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "NODE", "bad type=1"), "illegal character"),
        (("set", "NODE", "novalue"), "is not type[.key]=value"),
        (("get", "no-such-node"), "unknown node"),
        (("history", "NODE", "temp", "--since", "yesterday"), "neither a duration"),
        (("import",), "the file must hold one node"),
    ],
)
def test_user_errors_print_one_line_and_exit_1(
    instance: SiotProcess, args: tuple[str, ...], message: str
) -> None:
    node = run_siot(instance.url, "add", "root", "device").stdout.strip()
    result = run_siot(instance.url, *(node if a == "NODE" else a for a in args), stdin="[]", ok=False)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_instance_is_a_clear_error() -> None:
    result = run_siot(f"nats://127.0.0.1:{free_port()}", "tree", ok=False)
    assert result.returncode == 1 and "cannot connect" in result.stderr


def test_serve_refuses_a_checkpoint_interval_below_its_floor() -> None:
    result = run_siot("nats://127.0.0.1:1", "serve", "--checkpoint-interval", "0", ok=False)
    assert result.returncode == 2 and "--checkpoint-interval" in result.stderr


def test_stats_counts_errors(instance: SiotProcess) -> None:
    url = instance.url
    node = run_siot(url, "add", "root", "device").stdout.strip()
    run_siot(url, "set", node, "--edge", "no-such-parent", "x=1", ok=False)
    stats = as_json(url, "stats")
    assert stats["errors"].get(node) == 1
    assert stats["committedWrites"] >= stats["commits"] >= 1
    text = run_siot(url, "stats").stdout
    assert "errors" in text and "writes each" in text


def test_bench_rules_runs_against_an_instance(instance: SiotProcess) -> None:
    """A tiny run: every published point produces its action, and the store's counters are read."""
    report = as_json(instance.url, "bench", "rules", "--rules", "3", "--rate", "40", "--seconds", "0.5")
    assert report["actions_committed"] == report["points"] == 20
    assert (report["lost"], report["duplicates"], report["unanswered"]) == (0, 0, 0)
    assert report["commits_per_point"] > 0 and report["writes_per_commit"] >= 1


def test_bench_ingest_runs_against_an_instance(instance: SiotProcess) -> None:
    """A tiny run: the benchmark works end to end and every point it sends is stored."""
    args = ["bench", "ingest", "--points", "400", "--rate", "200", "--rate-seconds", "0.5"]
    report = as_json(instance.url, *args)
    assert [(p["stored"], p["errors"]) for p in report["phases"]] == [(400, 0), (400, 0), (100, 0)]
    assert all(p["raw_sqlite_rows_s"] > 0 for p in report["phases"][:2])
