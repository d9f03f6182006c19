"""The fault matrix (issue 11): each fault against real `siot serve` processes, a few rounds each.

The scenarios live in siot/cmd/chaos_scenarios.py and chaos_sync.py; `siot chaos SCENARIO
--rounds N` runs them for as long as you like (docs/reliability.md has the figures). SIGKILL
during batched ingest is tests/test_crash.py (20 rounds). Each test fails if an acknowledged write
is missing afterwards, a daemon died on its own, a daemon logged an error nobody expected, or the
scenario's own outcome is wrong (an action fired twice, a write refused for no reason, ...).

disk-full and read-only mount a tmpfs under tmp_path (root; the test environment runs as root);
the clock tests run siot under Debian's libfaketime, installed by the scenario when missing.
"""

from __future__ import annotations

from pathlib import Path

from fault_support import run_fault


async def test_sigkill_of_the_edge_during_sync_catch_up(tmp_path: Path) -> None:
    await run_fault("sync-kill-edge", tmp_path, rounds=1)


async def test_sigkill_of_the_cloud_during_sync_catch_up(tmp_path: Path) -> None:
    await run_fault("sync-kill-cloud", tmp_path, rounds=1)


async def test_sync_link_switched_off_and_on(tmp_path: Path) -> None:
    """Disabling the sync node right after a write must stop the link at once. Before 96628e8
    it sometimes took 10 s and left the link's task running (1 in 6 to 12 rounds): Python 3.11's
    `asyncio.wait_for` in sync/link.py returned the result of a future that completed in the
    same loop iteration as the cancel, and dropped the cancellation."""
    await run_fault("sync-disable", tmp_path, rounds=6)


async def test_sigkill_during_a_rule_hold(tmp_path: Path) -> None:
    await run_fault("rule-hold-kill", tmp_path, rounds=2)


async def test_sigkill_during_the_wal_restart_pass(tmp_path: Path) -> None:
    await run_fault("wal-restart-kill", tmp_path, rounds=2)


async def test_sigkill_of_the_embedded_nats_server_under_load(tmp_path: Path) -> None:
    await run_fault("nats-kill", tmp_path, rounds=2)


async def test_cloud_killed_three_times_while_the_edge_ingests(tmp_path: Path) -> None:
    await run_fault("cloud-restarts", tmp_path, rounds=1)


async def test_disk_full_then_space_again(tmp_path: Path) -> None:
    await run_fault("disk-full", tmp_path, rounds=1)


async def test_read_only_data_directory(tmp_path: Path) -> None:
    await run_fault("read-only", tmp_path, rounds=1)


async def test_truncated_or_corrupt_database_refused_at_start(tmp_path: Path) -> None:
    await run_fault("corrupt-db", tmp_path, rounds=3)  # one round per kind of damage


async def test_wall_clock_steps_back_an_hour(tmp_path: Path) -> None:
    await run_fault("clock-step", tmp_path, rounds=1)


async def test_wall_clock_behind_across_a_restart(tmp_path: Path) -> None:
    """Before 99b4b35 this failed: after a restart the store stamped time-0 points from the wall
    clock again, below the stamps it gave before the restart, so those writes never became
    current values."""
    await run_fault("clock-step-restart", tmp_path, rounds=1)
