"""The time-series programs siot's exporter and metrics are checked against, run for real: InfluxDB
1.x (`influxd`), VictoriaMetrics and Prometheus, from Debian's packages (installed when missing as
root, else refused with the apt-get command: siot.cmd.debian_packages). Each runs with its own
config and data directory on free loopback ports and is stopped by its own pid.

Used by the tests (tests/test_export*.py, tests/test_metrics_prometheus.py) and by
`siot bench export`; plain HTTP through urllib, so a test can query from outside the event loop.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from siot.cmd import debian_packages
from siot.cmd.chaos_support import free_port, stop_pid, wait_port_free

READY_TIMEOUT_S = 60.0
POLL_S = 0.05
HTTP_TIMEOUT_S = 10.0


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP request; (status, body), also for an error status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class ServerProcess:
    """A server program on a free loopback port with its data under `data_dir`, its output in
    `<data_dir>/<name>.log`. `start()` returns once `ready_path` answers 2xx; `stop()` is SIGTERM
    (SIGKILL after 30 s); `start()` again reuses the port and the data (an outage, then back)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    package = ""
    ready_path = "/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.package}.log"

    def command(self, program: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        program = debian_packages.require(self.package)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(program), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{program} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = http("GET", self.url + self.ready_path)
            except OSError:
                status = 0
            if 200 <= status < 300:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{program} not ready after {READY_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout_s=30)
            self.proc = None
            wait_port_free(self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class InfluxServer(ServerProcess):
    """InfluxDB 1.x (`influxd`), HTTP API on `port`, its RPC port on another free one."""

    rpc_port: int = field(default_factory=free_port)
    # With `auth`, influxd refuses requests without credentials; `start()` then creates the
    # admin `user`/`password` (InfluxDB lets the first admin be created without them).
    auth: bool = False
    user: str = "admin"
    password: str = "influx-admin-s3cret"
    admin_created: bool = field(default=False, init=False)
    package = "influxdb"
    ready_path = "/ping"

    def command(self, program: str) -> list[str]:
        config = self.data_dir / "influxdb.conf"
        config.write_text(
            f"""reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.data_dir}/meta"
[data]
  dir = "{self.data_dir}/data"
  wal-dir = "{self.data_dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  auth-enabled = {"true" if self.auth else "false"}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""
        )
        return [program, "run", "-config", str(config)]

    def start(self) -> Self:
        super().start()
        if self.auth:
            status, body = http(
                "POST", f"{self.url}/query?{urllib.parse.urlencode({'q': self._create_admin()})}"
            )
            if status != 200 and b"user already exists" not in body:
                raise RuntimeError(f"cannot create the InfluxDB admin ({status}): {body!r}")
        return self

    def _create_admin(self) -> str:
        return f"CREATE USER \"{self.user}\" WITH PASSWORD '{self.password}' WITH ALL PRIVILEGES"

    def query(self, q: str, database: str = "") -> list[dict[str, Any]]:
        """Run InfluxQL (as the admin with `auth`); the `series` of its first statement (each
        with name, tags, columns, values). Raises RuntimeError with InfluxDB's message."""
        params = {"q": q, "epoch": "ns", **({"db": database} if database else {})}
        if self.auth:
            params.update(u=self.user, p=self.password)
        status, body = http("POST", f"{self.url}/query?{urllib.parse.urlencode(params)}")
        answer = json.loads(body or b"{}")
        result = (answer.get("results") or [{}])[0]
        if status != 200 or "error" in answer or "error" in result:
            raise RuntimeError(f"InfluxQL {q!r} failed ({status}): {body.decode(errors='replace')}")
        return list(result.get("series", []))

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def rows(self, q: str, database: str) -> list[dict[str, Any]]:
        """The rows of a query as dicts (tags of grouped series merged in)."""
        rows = []
        for series in self.query(q, database):
            for values in series["values"]:
                rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
        return rows


@dataclass
class VictoriaMetricsServer(ServerProcess):
    """VictoriaMetrics single-node: takes InfluxDB line protocol on /write and /api/v2/write."""

    package = "victoria-metrics"
    ready_path = "/health"

    def command(self, program: str) -> list[str]:
        return [
            program,
            f"-storageDataPath={self.data_dir}/storage",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.disableCache",
        ]

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every sample of the series matching `match`, after a flush of what was just written
        (VictoriaMetrics makes new samples searchable about a second after they arrive)."""
        http("GET", f"{self.url}/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": match})
        status, body = http("GET", f"{self.url}/api/v1/export?{query}")
        if status != 200:
            raise RuntimeError(f"export {match!r} failed ({status}): {body.decode(errors='replace')}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


@dataclass
class PrometheusServer(ServerProcess):
    """Prometheus scraping `targets` (host:port) at `metrics_path` every `scrape_interval_ms`, with
    `bearer_token` if set."""

    targets: list[str] = field(default_factory=list)
    metrics_path: str = "/metrics"
    scrape_interval_ms: int = 1000
    bearer_token: str = ""
    package = "prometheus"
    ready_path = "/-/ready"

    def command(self, program: str) -> list[str]:
        auth = (
            f"\n    authorization:\n      credentials: {json.dumps(self.bearer_token)}"
            if self.bearer_token
            else ""
        )
        config = self.data_dir / "prometheus.yml"
        config.write_text(
            f"""global:
  scrape_interval: {self.scrape_interval_ms}ms
  evaluation_interval: {self.scrape_interval_ms}ms
scrape_configs:
  - job_name: siot
    metrics_path: {self.metrics_path}{auth}
    static_configs:
      - targets: {json.dumps(self.targets)}
"""
        )
        return [
            program,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir}/tsdb",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant PromQL query's result vector."""
        status, body = http("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer = json.loads(body or b"{}")
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r} failed ({status}): {body.decode(errors='replace')}")
        return list(answer["data"]["result"])
