"""`siot bench mqtt --drain` end to end: a small QoS 1 burst published while the daemon it starts
is stopped, drained once it continues, every message stored and the figures there."""

from __future__ import annotations

import json
import os
import subprocess

from support import SIOT_BIN

TIMEOUT_S = 60
MESSAGES = 500
DEVICES = 10
CPU_FIELDS = (
    "siot_cpu_ms_per_msg",
    "nats_drain_cpu_ms_per_msg",
    "nats_intake_cpu_ms_per_msg",
    "total_cpu_ms_per_msg",
)


def test_a_burst_held_by_the_broker_while_siot_is_stopped_is_drained_and_stored() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
    args = ["bench", "mqtt", "--drain", "--messages", str(MESSAGES), "--devices", str(DEVICES), "--json"]
    result = subprocess.run(
        [SIOT_BIN, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    drain = report["drain"]
    assert report["messages"] == MESSAGES and report["log_errors"] == 0
    # nats-server PUBACKed the whole burst while siot was stopped, and all of it reached history
    assert drain["sent"] == drain["acknowledged"] == drain["stored"] == drain["committed"] == MESSAGES
    assert drain["send_errors"] == 0
    assert drain["drain_seconds"] > 0 and drain["drain_msgs_s"] > 0
    assert all(drain[field] is not None and drain[field] >= 0 for field in CPU_FIELDS)
    assert drain["total_cpu_ms_per_msg"] > 0
    assert report["full_rate"]["committed"] == MESSAGES and report["raw_publish_msgs_s"] > 0
