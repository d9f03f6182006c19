"""Shared fixtures: real SQLite files in tmp_path, real nats-server processes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import support
from export_support import DATABASE
from http_support import Http, http_session
from support import NatsServer, SiotProcess, connected, running

from siot.client import Client
from siot.cmd.tsdb_servers import InfluxServer
from siot.store import Store, StoreConfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_errors(*regexes): errors this test provokes on purpose; each regex is searched in "
        "every ERROR record (with its traceback) of in-process siot loggers and of every "
        "`siot serve` log checked during the test",
    )


@pytest.fixture(autouse=True)
def _log_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test on an error nobody expected (support.LogGuard): ERROR records or tracebacks
    of the `siot` loggers in this process, and those in the log of every `siot serve` the test
    ran, including processes it killed, or that exited or are still running. Expected ones are
    declared with `@pytest.mark.expect_errors(regex, ...)` or on the process."""
    guard = support.LogGuard([p for m in request.node.iter_markers("expect_errors") for p in m.args])
    try:
        yield
    finally:
        if failures := guard.finish():
            pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A test that failed before stopping its processes leaves them to the end of the session."""
    yield
    for proc in support.started_processes:
        if proc.proc is not None:
            support.stop_pid(proc.proc, timeout_s=30)


@pytest.fixture(autouse=True)
def _isolate_siot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SIOT_* setting of the developer's shell leaks into a test; state goes to tmp_path."""
    for name in list(os.environ):
        if name.startswith("SIOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SIOT_DATA", str(tmp_path / "data"))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "siot.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=db_path, instance_id="inst-test", description="test-host")) as s:
        yield s


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def siot_process(tmp_path: Path) -> Iterator[SiotProcess]:
    """A running `siot serve` with its own nats-server, stopped (SIGTERM) after the test."""
    with running(tmp_path / "siot-data") as proc:
        yield proc


@pytest.fixture
async def siot(siot_process: SiotProcess) -> AsyncIterator[Client]:
    """A client connected to `siot_process`, with its root loaded."""
    async with connected(siot_process) as client:
        yield client


# For the modules that run one daemon for all their tests (their own `daemon` fixture): its
# first admin logged in over HTTP, and a NATS client of it.


@pytest.fixture
async def admin(daemon: SiotProcess) -> AsyncIterator[Http]:
    async with http_session(daemon) as http:
        yield await http.login()


@pytest.fixture
async def nats(daemon: SiotProcess) -> AsyncIterator[Client]:
    client = await Client.connect(daemon.url, reconnect_forever=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A real InfluxDB 1.x (Debian's influxd) with the exporter tests' database."""
    server = InfluxServer(tmp_path / "influxdb").start()
    try:
        server.create_database(DATABASE)
        yield server
    finally:
        server.stop()
