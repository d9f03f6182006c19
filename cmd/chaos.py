"""`siot chaos`: the fault matrix, run for many rounds against real `siot serve` processes.

Each scenario (chaos_scenarios.py, chaos_sync.py) starts its own instances in a temp dir, injects
its fault round after round, and counts what was acknowledged, what of that was lost, daemons
that died on their own, and other wrong outcomes. tests/test_faults.py runs the same scenarios for
a few rounds in `make test`; docs/reliability.md has the figures of long runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import click

from siot.cmd import chaos_scenarios as local
from siot.cmd import chaos_sync as sync
from siot.cmd.chaos_support import Chaos, ServeProcess, Spawn, Tally

ScenarioFn = Callable[[Chaos, int], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class Scenario:
    name: str
    run: ScenarioFn
    summary: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("ingest-kill", local.ingest_kill, "SIGKILL of siot during batched ingest"),
        Scenario("sync-kill-edge", sync.sync_kill_edge, "SIGKILL of the edge during sync catch-up"),
        Scenario("sync-kill-cloud", sync.sync_kill_cloud, "SIGKILL of the cloud during sync catch-up"),
        Scenario("sync-disable", sync.sync_disable, "edge's sync link switched off and on"),
        Scenario("rule-hold-kill", local.rule_hold_kill, "SIGKILL of siot during a rule's hold"),
        Scenario("wal-restart-kill", local.wal_restart_kill, "SIGKILL of siot during the WAL restart pass"),
        Scenario("nats-kill", local.nats_kill, "SIGKILL of the embedded nats-server under load"),
        Scenario(
            "cloud-restarts", sync.cloud_restarts, "cloud killed and restarted 3x while an edge ingests"
        ),
        Scenario("disk-full", local.disk_full, "disk full, then space again"),
        Scenario("read-only", local.read_only, "data file system read-only"),
        Scenario("corrupt-db", local.corrupt_db, "truncated or corrupt database file at start"),
        Scenario("clock-step", local.clock_step, "wall clock steps back an hour"),
        Scenario("clock-step-restart", local.clock_step_restart, "...and siot restarts while it is behind"),
    )
}


async def run_scenario(
    name: str, spawn: Spawn, workdir: Path, rounds: int, *, seed: int | None = None, catch: bool = False
) -> Tally:
    """Run one scenario for `rounds` rounds in `workdir` with daemons made by `spawn`. Its
    exception propagates unless `catch`, which records it as a failure in the tally."""
    scenario = SCENARIOS[name]
    tally = Tally(name)
    chaos = Chaos(spawn, workdir, random.Random(seed), tally)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        try:
            await scenario.run(chaos, rounds)
        finally:
            await chaos.close()
    except Exception as exc:
        if not catch:
            raise
        tally.failures.append(f"stopped: {type(exc).__name__}: {exc}")
    finally:
        tally.seconds = time.monotonic() - start
    for daemon in chaos.daemons:
        for block in getattr(daemon, "unexpected", []):
            tally.failures.append(f"unexpected error in the log of {daemon.data_dir.name}:\n{block}")
    return tally


def print_tally(tally: Tally) -> None:
    verdict = "ok" if tally.clean and tally.trials else "FAILED"
    click.echo(
        f"{tally.scenario:<17} trials {tally.trials:>4}  acked {tally.acked:>8}  lost {tally.lost:>3}  "
        f"crashes {tally.crashes:>2}  failures {len(tally.failures):>2}  {tally.seconds:6.1f} s  {verdict}"
    )
    for name, value in sorted(tally.figures.items()):
        click.echo(f"    {name}: {value}")
    for failure in tally.failures[:20]:
        click.echo("    ! " + failure.replace("\n", "\n      "))


CHAOS_HELP = """Run fault scenarios against real `siot serve` processes and count what was lost.

Each scenario starts its own instances (in a temp dir, on free loopback ports), injects its fault
in every round, and prints the trials run, the writes acknowledged to a client, the acknowledged
writes missing afterwards (must be 0), the daemons that died on their own (must be 0) and any
other wrong outcome. Exits 1 if any scenario lost a write, crashed or failed. disk-full and
read-only mount a tmpfs and need root; clock-step needs libfaketime (apt-get install
libfaketime), which it installs when missing if run as root.

\b
Scenarios:
{scenarios}

Example usage:

\b
    siot chaos all --rounds 20
    siot chaos disk-full --rounds 5 --workdir ./chaos
"""


@click.command(
    help=CHAOS_HELP.format(scenarios="\n".join(f"  {s.name:<17} {s.summary}" for s in SCENARIOS.values()))
)
@click.argument("scenario", type=click.Choice(["all", *SCENARIOS]))
@click.option(
    "--rounds", envvar="SIOT_CHAOS_ROUNDS", default=20, show_default=True, type=click.IntRange(min=1)
)
@click.option("--seed", envvar="SIOT_CHAOS_SEED", default=None, type=int, help="Seed of the random timings.")
@click.option(
    "--workdir",
    envvar="SIOT_CHAOS_WORKDIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep data and logs here (default: a temp dir, removed afterwards).",
)
@click.option(
    "json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print JSON (for scripts) instead of text."
)
def chaos(scenario: str, rounds: int, seed: int | None, workdir: Path | None, json_: bool) -> None:
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    tallies = []
    with tempfile.TemporaryDirectory(prefix="siot-chaos-") as tmp:
        root = workdir or Path(tmp)
        for name in names:
            tally = asyncio.run(run_scenario(name, ServeProcess, root / name, rounds, seed=seed, catch=True))
            tallies.append(tally)
            if not json_:
                print_tally(tally)
    if json_:
        click.echo(json.dumps([t.as_dict() for t in tallies], indent=2))
    if not all(t.clean and t.trials for t in tallies):
        raise SystemExit(1)
