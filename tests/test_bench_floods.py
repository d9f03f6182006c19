"""`siot bench floods` end to end: a one-second rule-loop flood and its baseline, each on a fresh
daemon the command starts itself, reported with figures that make sense."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from support import SIOT_BIN

TIMEOUT_S = 60


def test_a_short_rule_loop_flood_reports_its_figures_beside_the_baseline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
    args = ["bench", "floods", "--flood", "rule-loop", "--seconds", "1", "--rules", "1", "--json"]
    result = subprocess.run(
        [SIOT_BIN, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    baseline, (flood,) = report["baseline"], report["floods"]
    assert flood["flood"] == "rule-loop" and flood["messages_sent"] == 2  # one lamp, one chain
    for row in (baseline, flood):
        assert row["probe_answered"] > 0 and row["probe_failed"] == 0
        assert 0 < row["probe_p50_ms"] <= row["probe_p99_ms"] <= row["probe_max_ms"]
        assert 0 < row["idle_rss_mb"] <= row["peak_rss_mb"] < report["budget"]["peak_rss_mb"]
        assert row["daemon_cpu_us_per_msg"] > 0
        # The daemons stopped cleanly, with no ERROR or traceback in their logs (the loop
        # guard's `loop:` errors are points and WARNINGs).
        assert row["exit_code"] in (0, -signal.SIGTERM) and row["log_errors"] == 0
    assert baseline["messages_sent"] == baseline["probe_answered"]  # its CPU is per probe write
    # The loop ran: the rules wrote points of their own besides the probe's and the triggers.
    probe_writes = flood["probe_answered"] + 1  # and the probe's first write, before the window
    assert flood["daemon_writes_committed"] > probe_writes + flood["messages_sent"]
