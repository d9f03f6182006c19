"""Shared fixtures: real SQLite files in tmp_path, real nats-server processes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import NatsServer, SiotProcess, connected, running

from siot.client import Client
from siot.store import Store, StoreConfig


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
