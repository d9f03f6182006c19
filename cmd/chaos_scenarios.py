"""Fault scenarios against one real `siot serve`: SIGKILL during batched ingest, during the WAL
restart pass and during a rule's hold; SIGKILL of the embedded nats-server under load; a full and
a read-only disk; a damaged database file at start; the wall clock stepping back an hour.

Each scenario is `async def scenario(chaos, rounds)`: it runs `rounds` trials with the daemons
`chaos.daemon()` makes, counts acknowledged writes and the ones missing afterwards in
`chaos.tally`, and records any other wrong outcome with `chaos.fail()`. The sync scenarios live in
chaos_sync.py; chaos.py lists them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from siot.client import Client
from siot.cmd.chaos_support import (
    Chaos,
    Daemon,
    KeyWriter,
    close_quietly,
    connect,
    faketime_env,
    file_digest,
    fill_disk,
    history_keys,
    nats_server_pid,
    remount,
    set_clock_offset,
    small_disk,
    stored_keys,
    within,
)
from siot.errors import RequestFailed
from siot.points import Point

# ---- SIGKILL during batched ingest (and during the WAL restart pass) ----

INGEST_CLIENTS = 4
INGEST_LANES = 16  # requests in flight at once, over the clients
INGEST_BATCH = 25
# Commits start the WAL over past this many frames (the default is 30,000) and checkpoints run
# every 10 ms, so under the writers' load nearly every checkpoint ends in the held restart pass.
WAL_RESTART_FRAMES = 16
WAL_CHECKPOINT_INTERVAL_S = 0.01


async def ingest_kill(chaos: Chaos, rounds: int, extra_args: tuple[str, ...] = ()) -> None:
    """Each round: concurrent acked batches of distinct points to a fresh node, SIGKILL after a
    random number of acks (with requests in flight), restart: every acked point must be in the
    node's current values and in its history; at the end, every earlier round's points too."""
    daemon = chaos.daemon("ingest", extra_args=list(extra_args))
    await chaos.start(daemon)
    kept: list[tuple[str, set[str]]] = []
    for trial in range(rounds):
        clients = [await connect(daemon) for _ in range(INGEST_CLIENTS)]
        node = await clients[0].create_node(clients[0].root_id, "device", [Point("description", f"t{trial}")])
        writer = KeyWriter(clients, node, batch=INGEST_BATCH, lanes=INGEST_LANES).start()
        await writer.until_acked(chaos.rng.randint(2, 60) * INGEST_BATCH)
        await chaos.kill(daemon)  # the other lanes' batches are in flight
        await writer.stop()
        await close_quietly(*clients)
        await chaos.start(daemon)
        client = await connect(daemon)
        try:
            chaos.check_kept(f"round {trial}", writer.acked, await stored_keys(client, node, "v"), "points")
            chaos.check_kept(f"round {trial} history", writer.acked, await history_keys(client, node, "v"))
        finally:
            await client.close()
        chaos.tally.trials += 1
        chaos.tally.acked += len(writer.acked)
        kept.append((node, writer.acked))
    client = await connect(daemon)
    try:
        for trial, (node, acked) in enumerate(kept):  # nothing of a round was lost by a later kill
            chaos.check_kept(f"round {trial} at the end", acked, await stored_keys(client, node, "v"))
    finally:
        await client.close()
    await chaos.stop(daemon)


async def wal_restart_kill(chaos: Chaos, rounds: int) -> None:
    """`ingest_kill` with the WAL started over constantly (`--restart-wal-frames 16`, checkpoints
    every 10 ms: in-process, 80,000 points in batches of 25 made 181 held restart passes), so
    kills land during and around the held pass; afterwards the database file must pass SQLite's
    integrity check."""
    args = (
        "--restart-wal-frames",
        str(WAL_RESTART_FRAMES),
        "--checkpoint-interval",
        str(WAL_CHECKPOINT_INTERVAL_S),
    )
    await ingest_kill(chaos, rounds, args)
    db = chaos.workdir / "ingest" / "siot.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        rows = conn.execute("SELECT count(*) FROM point_log").fetchone()[0]
    if result != [("ok",)]:
        chaos.fail(f"integrity_check after the kills: {result[:5]}")
    chaos.tally.figures["log rows"] += rows


# ---- SIGKILL during a rule's hold ----

HOLD_S = 1.0
S = 1_000_000_000


async def make_hold_rule(client: Client) -> tuple[str, str, str, str, str]:
    """sensor.water > 5 held for HOLD_S -> setValue siren.beep = 1. Returns (sensor, siren,
    rule, condition, action)."""
    root = client.root_id
    sensor = await client.create_node(root, "device", [Point("description", "sump")])
    siren = await client.create_node(root, "device", [Point("description", "siren")])
    rule = await client.create_node(root, "rule", [Point("description", "flooding")])
    cond = await client.create_node(
        rule,
        "condition",
        [
            Point("nodeID", sensor),
            Point("pointType", "water"),
            Point("operator", ">"),
            Point("value", 5),
            Point("minActive", HOLD_S),
        ],
    )
    action = await client.create_node(
        rule,
        "action",
        [Point("action", "setValue"), Point("nodeID", siren), Point("pointType", "beep"), Point("value", 1)],
    )
    return sensor, siren, rule, cond, action


async def point_value(client: Client, node: str, ptype: str, key: str = "0") -> object:
    return (await client.get_node(node)).value(ptype, key)


async def rule_hold_kill(chaos: Chaos, rounds: int) -> None:
    """Each round: the watched point goes high, so the hold starts; SIGKILL at a random moment
    between the start of the hold and half a hold after its deadline (before the action ran, or
    after); restart. The action must run exactly once for that activation, not before the hold's
    deadline; then the point goes low and the rule inactive before the next round."""
    daemon = chaos.daemon("rules")
    await chaos.start(daemon)
    client = await connect(daemon)
    sensor, siren, rule, cond, action = await make_hold_rule(client)
    await client.close()
    previous_run = 0
    for trial in range(rounds):
        client = await connect(daemon)
        start_ns = time.time_ns()
        await client.send_points(sensor, [Point("water", 9)])
        chaos.tally.acked += 1
        hold_until = await within(
            5, partial(_after, client, cond, "holdUntil", start_ns), "the hold's deadline"
        )
        await asyncio.sleep(chaos.rng.uniform(0, HOLD_S * 1.5) - (time.time_ns() - start_ns) / S)
        chaos.tally.figures["killedAfterDeadline"] += time.time_ns() > hold_until
        await client.close()
        await chaos.kill(daemon)
        await chaos.start(daemon)
        client = await connect(daemon)
        try:
            last_run = await within(
                HOLD_S + 10, partial(_after, client, rule, "lastRun", previous_run, action), "the run"
            )
            previous_run = last_run
            await asyncio.sleep(HOLD_S / 2)  # time enough to run it a second time, if it would
            beeps = [p for p in await client.history(siren, "beep") if p.time >= start_ns]
            waters = [p for p in await client.history(sensor, "water") if p.time >= start_ns]
            chaos.check_kept(f"round {trial}", {9}, {p.value for p in waters}, "sensor writes")
            if len(beeps) != 1:
                chaos.fail(f"round {trial}: the action ran {len(beeps)} times for one activation")
            if last_run < hold_until:
                chaos.fail(f"round {trial}: the action ran {(hold_until - last_run) / 1e6:.0f} ms early")
            await client.send_points(sensor, [Point("water", 0)])
            chaos.tally.acked += 1
            await within(5, partial(_is, client, rule, "active", False), "the rule going inactive")
        finally:
            await client.close()
        chaos.tally.trials += 1
    await chaos.stop(daemon)


async def _after(client: Client, node: str, ptype: str, after_ns: int, key: str = "0") -> int | None:
    """The point's value if it is a time (ns) later than `after_ns`."""
    value = await point_value(client, node, ptype, key)
    return value if isinstance(value, int) and value > after_ns else None


async def _is(client: Client, node: str, ptype: str, wanted: object) -> bool:
    return await point_value(client, node, ptype) == wanted


# ---- SIGKILL of the embedded nats-server under load ----

NATS_DOWN_TIMEOUT_S = 15.0


async def nats_kill(chaos: Chaos, rounds: int) -> None:
    """Each round: reconnecting clients write acked batches; the daemon's nats-server is
    SIGKILLed. siot must start a new one, the clients reconnect and their writes are acked again,
    and every write acked before, during or after is stored. The daemon is never restarted."""
    daemon = chaos.daemon("nats").expect_error(r"nats-server exited with code")
    await chaos.start(daemon)
    for trial in range(rounds):
        clients = [await connect(daemon, reconnect=True) for _ in range(2)]
        node = await clients[0].create_node(clients[0].root_id, "device")
        writer = KeyWriter(clients, node, batch=20, lanes=8, keep_going=True).start()
        await writer.until_acked(chaos.rng.randint(5, 40) * 20)
        old_pid = nats_server_pid(daemon)
        if old_pid is None:
            chaos.fail(f"round {trial}: no nats-server child of siot (pid {daemon.proc.pid})")  # type: ignore[union-attr]
            await writer.stop()
            break
        os.kill(old_pid, signal.SIGKILL)
        acked_before = len(writer.acked)
        try:
            new_pid = await within(
                NATS_DOWN_TIMEOUT_S, partial(_new_nats, daemon, old_pid), "a new nats-server"
            )
            await writer.until_acked(acked_before + 200, timeout_s=NATS_DOWN_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as exc:
            chaos.fail(f"round {trial}: writes did not resume after the nats-server kill: {exc}")
            new_pid = None
        await writer.stop()
        chaos.check_alive(daemon)
        chaos.tally.figures["natsRestarts"] += new_pid is not None
        for reason, count in writer.errors.items():
            chaos.tally.figures[f"error: {reason}"] += count
        await close_quietly(*clients)
        client = await connect(daemon)
        try:
            chaos.check_kept(f"round {trial}", writer.acked, await stored_keys(client, node, "v"), "points")
        finally:
            await client.close()
        chaos.tally.trials += 1
        chaos.tally.acked += len(writer.acked)
    await chaos.kill(daemon)  # and what was acked survives a crash too
    await chaos.start(daemon)
    await chaos.stop(daemon)


async def _new_nats(daemon: Daemon, old_pid: int) -> int | None:
    pid = nats_server_pid(daemon)
    return pid if pid is not None and pid != old_pid else None


# ---- the disk: full, read-only ----

# The tmpfs holds the database as it grows round after round (up to ~1 MB a round, mostly what
# is written into the WAL's slack while the disk is full), so its size grows with the rounds.
DISK_MB = 16
DISK_MB_PER_ROUND = 2
FULL_WRITE_BATCH = 20
FULL_VALUE_BYTES = 200
FULL_MAX_BATCHES = 5_000


async def write_batches(client: Client, node: str, prefix: str, count: int) -> set[str]:
    """`count` acked batches, one after another; the keys written."""
    keys: set[str] = set()
    for b in range(count):
        batch = [f"{prefix}b{b}p{i}" for i in range(FULL_WRITE_BATCH)]
        await client.send_points(node, [Point("v", i, key=k) for i, k in enumerate(batch)])
        keys.update(batch)
    return keys


async def disk_full(chaos: Chaos, rounds: int) -> None:
    """`--data` on a small tmpfs. Each round: acked writes; a filler file takes every free byte;
    writes go on until one is refused: its error must name the full disk, and the daemon must
    still answer reads; the filler is deleted: writes succeed again without a restart. Then
    SIGKILL and restart: every acked write is stored, and no refused one."""
    data = chaos.workdir / "disk"
    with small_disk(data, DISK_MB + DISK_MB_PER_ROUND * rounds, chaos.workdir / "disk.log"):
        daemon = chaos.daemon("disk").expect_error(r"commit failed: the disk is full")
        try:
            await chaos.start(daemon)
            for trial in range(rounds):
                await _disk_full_round(chaos, daemon, data, trial)
                chaos.tally.trials += 1
            await chaos.stop(daemon)
        finally:
            await chaos.close()
            (data / "filler").unlink(missing_ok=True)


async def _disk_full_round(chaos: Chaos, daemon: Daemon, data: Path, trial: int) -> None:
    client = await connect(daemon)
    try:
        node = await client.create_node(client.root_id, "device", [Point("description", f"t{trial}")])
        acked = await write_batches(client, node, "before", 10)
        fill_disk(data / "filler")
        refused: set[str] = set()
        full_error = ""
        for b in range(FULL_MAX_BATCHES):
            keys = [f"full{b}p{i}" for i in range(FULL_WRITE_BATCH)]
            points = [Point("v", f"{k}:{'x' * FULL_VALUE_BYTES}", key=k) for k in keys]
            try:
                await client.send_points(node, points)
            except RequestFailed as exc:
                refused.update(keys)
                full_error = str(exc)
                break
            acked.update(keys)
        chaos.tally.figures["acked while filling"] += len(acked) - 10 * FULL_WRITE_BATCH
        if not full_error:
            chaos.fail(f"round {trial}: {FULL_MAX_BATCHES} batches stored on a full disk, none refused")
        elif "disk" not in full_error:
            chaos.fail(f"round {trial}: a write on a full disk was refused with {full_error!r}")
        else:
            chaos.tally.figures["refused: disk full"] += 1
        # still serving reads, and still refusing writes cleanly
        chaos.check_alive(daemon)
        await client.stats()
        await client.get_node(node)
        try:
            await client.send_points(node, [Point("v", 0, key="still-full")])
            acked.add("still-full")
        except RequestFailed as exc:
            refused.add("still-full")
            if "disk" not in str(exc):
                chaos.fail(f"round {trial}: a second write on a full disk got {exc}")
        (data / "filler").unlink()
        again = await _first_success(client, node, trial)
        chaos.tally.figures["writes until accepted again"] += again
        acked.update(await write_batches(client, node, "after", 10))
        acked.add(f"again{trial}")
    finally:
        await client.close()
    await chaos.kill(daemon)
    await chaos.start(daemon)
    client = await connect(daemon)
    try:
        stored = await stored_keys(client, node, "v")
        chaos.check_kept(f"round {trial}", acked, stored, "points")
        chaos.check_kept(f"round {trial} history", acked, await history_keys(client, node, "v"))
        if wrongly := (refused - {"still-full"}) & stored:
            chaos.fail(f"round {trial}: {len(wrongly)} points answered with an error were stored")
    finally:
        await client.close()
    chaos.tally.acked += len(acked)


async def _first_success(client: Client, node: str, trial: int) -> int:
    """Write one point until it is accepted (space is back); how many tries it took."""
    deadline = time.monotonic() + 10
    tries = 0
    while True:
        tries += 1
        try:
            await client.send_points(node, [Point("v", 1, key=f"again{trial}")])
            return tries
        except RequestFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def read_only(chaos: Chaos, rounds: int) -> None:
    """`--data` on a tmpfs that goes read-only. Linux refuses `mount -o remount,ro` while siot
    holds its database open for writing (EBUSY), so a running daemon never sees it; what can
    happen is a restart onto a file system that went read-only meanwhile. Each round: acked
    writes, a try to remount while running (must be refused by the kernel, siot unaffected),
    SIGKILL, remount read-only, start: siot must refuse with a clear error naming the read-only
    data and change no byte; remount read-write, start: every acked write is there, writes work."""
    data = chaos.workdir / "ro"
    with small_disk(data, DISK_MB + DISK_MB_PER_ROUND * rounds, chaos.workdir / "ro.log"):
        daemon = chaos.daemon("ro")
        try:
            await chaos.start(daemon)
            acked: set[str] = set()
            client = await connect(daemon)
            node = await client.create_node(client.root_id, "device")
            await client.close()
            for trial in range(rounds):
                client = await connect(daemon)
                try:
                    acked |= await write_batches(client, node, f"t{trial}", 5)
                    busy = remount(data, "ro")
                    if busy.returncode == 0:
                        chaos.fail(f"round {trial}: remount ro succeeded while siot had its files open")
                        remount(data, "rw")
                    chaos.tally.figures["remount ro refused while running"] += busy.returncode != 0
                    acked |= await write_batches(client, node, f"t{trial}x", 1)
                finally:
                    await client.close()
                await chaos.kill(daemon)
                digest = file_digest(data / "siot.db"), file_digest(data / "siot.db-wal")
                result = remount(data, "ro")
                if result.returncode != 0:
                    raise OSError(f"remount ro after the kill failed: {result.stderr.strip()}")
                try:
                    await _refused_start(chaos, daemon, trial, ("read-only", str(data)))
                    if (file_digest(data / "siot.db"), file_digest(data / "siot.db-wal")) != digest:
                        chaos.fail(f"round {trial}: the database changed on a read-only file system")
                finally:
                    remount(data, "rw")
                await chaos.start(daemon)
                client = await connect(daemon)
                try:
                    chaos.check_kept(f"round {trial}", acked, await stored_keys(client, node, "v"), "points")
                    await client.send_points(node, [Point("v", 1, key=f"rw{trial}")])
                    acked.add(f"rw{trial}")
                finally:
                    await client.close()
                chaos.tally.trials += 1
            chaos.tally.acked += len(acked)
            await chaos.stop(daemon)
        finally:
            await chaos.close()


async def _refused_start(chaos: Chaos, daemon: Daemon, trial: object, words: tuple[str, ...]) -> str:
    """Start `daemon`, which must exit non-zero with one clear error (no traceback) that holds
    each of `words`; return what it printed. Starting, hanging or a traceback is a failure."""
    before = len(daemon.log())
    try:
        await asyncio.to_thread(daemon.start)
    except RuntimeError:
        pass  # exited, as it should
    except TimeoutError:
        chaos.tally.crashes += 1
        chaos.fail(f"{trial}: siot neither started nor exited")
        return ""
    else:
        chaos.fail(f"{trial}: siot started on it")
        await asyncio.to_thread(daemon.kill)
        return ""
    output = daemon.log()[before:]
    assert daemon.proc is not None
    if daemon.proc.returncode in (0, None) or daemon.proc.returncode < 0:
        chaos.fail(f"{trial}: siot exited with {daemon.proc.returncode}")
    if "Traceback" in output:
        chaos.tally.crashes += 1
        chaos.fail(f"{trial}: siot died with a traceback instead of an error:\n{output[-1500:]}")
    elif missing := [w for w in words if w not in output]:
        chaos.fail(f"{trial}: its error does not say {missing}:\n{output[-600:]}")
    chaos.tally.figures["refused to start"] += 1
    return output


# ---- a damaged database file at start ----

DAMAGE_CASES = ("truncated", "garbage header", "empty with a WAL")


async def corrupt_db(chaos: Chaos, rounds: int) -> None:
    """A database written by siot (and one killed with its WAL) is damaged three ways: truncated
    (no WAL), its header overwritten, emptied with the WAL left beside it. Each time siot must
    exit non-zero with an error that names the file, and leave every byte of it as it was."""
    daemon = chaos.daemon("template")
    await chaos.start(daemon)
    client = await connect(daemon)
    node = await client.create_node(client.root_id, "device")
    await write_batches(client, node, "x", 100)  # a few hundred KB of pages
    await client.close()
    await chaos.kill(daemon)
    db = daemon.data_dir / "siot.db"
    killed_wal = (daemon.data_dir / "siot.db-wal").read_bytes()
    await chaos.start(daemon)
    await chaos.stop(daemon)  # a clean stop checkpoints and removes the WAL
    pristine = db.read_bytes()
    for trial in range(rounds):
        case = DAMAGE_CASES[trial % len(DAMAGE_CASES)]
        target = chaos.daemon(f"damaged{trial}")
        target.data_dir.mkdir(parents=True)
        path = target.data_dir / "siot.db"
        path.write_bytes(_damaged(pristine, case, chaos.rng))
        if case == "empty with a WAL":
            wal = (
                killed_wal if chaos.rng.random() < 0.5 else chaos.rng.randbytes(chaos.rng.randint(1, 70_000))
            )
            path.with_name("siot.db-wal").write_bytes(wal)
        before = {p.name: file_digest(p) for p in target.data_dir.glob("siot.db*")}
        await _refused_start(chaos, target, f"{case} (round {trial})", (str(path),))
        after = {p.name: file_digest(p) for p in target.data_dir.glob("siot.db*")}
        if after != before:
            chaos.fail(f"{case} (round {trial}): the files changed: {sorted(before)} -> {sorted(after)}")
        chaos.tally.figures[case] += 1
        chaos.tally.trials += 1


def _damaged(pristine: bytes, case: str, rng: random.Random) -> bytes:
    if case == "truncated":
        return pristine[: int(len(pristine) * rng.uniform(0.1, 0.9))]
    if case == "garbage header":
        return rng.randbytes(rng.choice((16, 100, 4096))) + pristine[4096:]
    return b""


# ---- the wall clock steps back an hour ----

CLOCK_KEYS = 4
CLOCK_STEP_S = 3600


async def clock_step(chaos: Chaos, rounds: int) -> None:
    """siot under libfaketime. Each round: writers of time-0 points (one sequential writer per
    point) run; the wall clock steps back an hour (one more each round); they run on. For every
    point, the store's stamps must increase in the order the writes were acknowledged (history
    and current value), and every write must be accepted."""
    await _clock_rounds(chaos, rounds, restart=False)


async def clock_step_restart(chaos: Chaos, rounds: int) -> None:
    """`clock_step`, with siot restarted (SIGTERM, start) after each step while the clock is
    still behind, as after a reboot of a gateway whose clock is wrong until NTP sets it."""
    await _clock_rounds(chaos, rounds, restart=True)


async def _clock_rounds(chaos: Chaos, rounds: int, *, restart: bool) -> None:
    offset = chaos.workdir / "clock-offset"
    set_clock_offset(offset, 0)
    daemon = chaos.daemon("clock", env=faketime_env(offset))
    await chaos.start(daemon)
    client = await connect(daemon)
    node = await client.create_node(client.root_id, "device")
    await client.close()
    writes = ClockWrites(node, {f"k{k}": [] for k in range(CLOCK_KEYS)})
    for trial in range(rounds):
        client = await connect(daemon)
        try:
            await writes.run(client, 0.3)
            set_clock_offset(offset, -CLOCK_STEP_S * (trial + 1))  # one more hour back each round
            await writes.run(client, 0.3)
            if restart:
                await client.close()
                await chaos.stop(daemon)
                await chaos.start(daemon)
                client = await connect(daemon)
                await writes.run(client, 0.3)
            await _check_clock(chaos, client, writes, trial)
        finally:
            await client.close()
        chaos.tally.trials += 1
    chaos.tally.acked = sum(len(v) for v in writes.acked.values())
    for refusal in writes.refused:
        chaos.fail(f"a time-0 write was refused: {refusal}")
    await chaos.stop(daemon)


@dataclass
class ClockWrites:
    """Time-0 writes of one int per point key, each key written by one sequential writer, so the
    order of its acknowledgements is the order of its commits. Values count up across keys."""

    node: str
    acked: dict[str, list[int]]
    refused: list[str] = field(default_factory=list)
    last: int = 0

    async def run(self, client: Client, seconds: float) -> None:
        async def writer(key: str) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.last += 1
                value = self.last
                try:
                    await client.send_points(self.node, [Point("t", value, key=key)])
                except RequestFailed as exc:
                    self.refused.append(str(exc))
                else:
                    self.acked[key].append(value)

        await asyncio.gather(*(writer(key) for key in self.acked))


async def _check_clock(chaos: Chaos, client: Client, writes: ClockWrites, trial: int) -> None:
    info = await client.get_node(writes.node)
    for key, values in writes.acked.items():
        history = await client.history(writes.node, "t", key, limit=1_000_000)
        by_time = [p.value for p in history]  # history is ordered by time
        chaos.check_kept(f"round {trial} {key}", set(values), set(by_time))
        if by_time != values:
            first = next(i for i, (a, b) in enumerate(zip(by_time, values, strict=False)) if a != b)
            chaos.fail(
                f"round {trial}: the stamps of '{key}' do not follow the order of the writes: by time "
                f"{by_time[first : first + 3]}..., acknowledged {values[first : first + 3]}..."
            )
        if info.value("t", key) != values[-1]:
            chaos.fail(
                f"round {trial}: the current value of '{key}' is {info.value('t', key)}, but the last "
                f"acknowledged write was {values[-1]}"
            )
