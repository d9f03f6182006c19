"""Crash safety: every acknowledged point survives a SIGKILL of `siot serve` (issue #3).

Each round, concurrent senders (16 requests in flight over 4 connections) write acked batches to
a fresh node; after a random number of acks the daemon is SIGKILLed mid-stream, restarted on the
same data dir, and every point whose ack arrived must be in the node's current values and in its
history, and at the end every earlier round's points too. Twenty rounds, short bursts each. The
scenario is `siot chaos ingest-kill` (siot/cmd/chaos_scenarios.py), part of the fault matrix
(tests/test_faults.py).
"""

from __future__ import annotations

from pathlib import Path

from fault_support import run_fault

ROUNDS = 20


async def test_acked_points_survive_sigkill_20_times(tmp_path: Path) -> None:
    await run_fault("ingest-kill", tmp_path, rounds=ROUNDS, seed=3)
