"""The `siot bench` group with every benchmark, imported only when `siot bench` runs (cmd/lazy.py)."""

from siot.cmd.bench import bench
from siot.cmd.bench_export import bench_export
from siot.cmd.bench_floods import bench_floods
from siot.cmd.bench_http import bench_http
from siot.cmd.bench_mqtt import bench_mqtt
from siot.cmd.bench_rules import bench_rules
from siot.cmd.bench_sync import bench_sync
from siot.cmd.bench_tls import bench_tls

for command in (bench_export, bench_floods, bench_http, bench_mqtt, bench_rules, bench_sync, bench_tls):
    bench.add_command(command)

__all__ = ["bench"]
