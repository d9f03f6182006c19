"""The fault matrix in the test suite: the scenarios of `siot chaos` (siot/cmd/chaos*.py), run for
a few rounds with the suite's own `SiotProcess`, so every daemon's log goes through the log guard
(an error nobody expected fails the test, support.py)."""

from __future__ import annotations

from pathlib import Path

from support import SiotProcess

from siot.cmd.chaos import run_scenario
from siot.cmd.chaos_support import Tally


async def run_fault(name: str, tmp_path: Path, rounds: int, *, seed: int = 11) -> Tally:
    """Run scenario `name` for `rounds` rounds in `tmp_path`; fail unless every round ran and
    nothing acknowledged was lost, no daemon crashed and nothing else went wrong."""
    tally = await run_scenario(name, SiotProcess, tmp_path / name, rounds, seed=seed)
    problems = [
        *([f"{tally.lost} acknowledged writes lost"] if tally.lost else []),
        *([f"{tally.crashes} daemon crashes"] if tally.crashes else []),
        *tally.failures,
    ]
    assert not problems, f"{name}: " + "\n".join(problems)
    assert tally.trials == rounds, f"{name}: {tally.trials} of {rounds} rounds ran"
    print(f"{name}: {tally.as_dict()}")
    return tally
