"""`siot bench export` end to end on a small run: its own daemon and influxd, both phases, every
point counted in InfluxDB, figures that make sense."""

from __future__ import annotations

import json
import os
import subprocess

from support import SIOT_BIN

TIMEOUT_S = 180


def test_a_small_export_bench_counts_every_point() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
    args = ["bench", "export", "--points", "2000", "--devices", "2", "--batch", "100", "--json"]
    result = subprocess.run(
        [SIOT_BIN, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["influxCounts"] == {"backlog": 2000, "live": 2000}
    for phase in ("backlog", "live"):
        assert report[phase]["ingestPointsS"] > 0 and report[phase]["exportPointsS"] > 0
    assert report["backlog"]["exportCpuUsPerPoint"] >= 0 and report["live"]["cpuUsPerPoint"] > 0
