"""Test support: real processes (nats-server from the wheel, `siot serve`) on free loopback ports.

Each process is stopped by its own pid: SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siot.broker import find_nats_server
from siot.client import Client
from siot.errors import SiotError

SIOT_BIN = str(Path(sys.executable).parent / "siot")
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_pid(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_port(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def wait_port_free(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"127.0.0.1:{port} still busy after {timeout_s} s")


@dataclass
class NatsServer:
    """A bare nats-server from the wheel (for tests of clients that bring no daemon)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc)


async def _quiet(exc: Exception) -> None:
    """Connection refused while the daemon starts is expected; do not print it."""


@dataclass
class SiotProcess:
    """`siot serve` as a child process with its own nats-server and data dir.

    `start()` returns once the API answers; `kill()` is SIGKILL (the crash test's weapon),
    after which the embedded nats-server dies with its parent (PR_SET_PDEATHSIG).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    instance_id: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> SiotProcess:
        args = [
            SIOT_BIN,
            "serve",
            "--data",
            str(self.data_dir),
            "--nats-port",
            str(self.port),
            "--monitor-port",
            "0",
            *self.extra_args,
        ]
        if self.instance_id:
            args += ["--id", self.instance_id]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "siot.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        log.close()
        asyncio.run(self._wait_ready())
        return self

    async def _wait_ready(self) -> None:
        """Until `siot.stats` says ready: the API answers and every node client has started."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"siot serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client = await Client.connect(
                    self.url, reconnect_forever=False, timeout_s=1, allow_reconnect=False, error_cb=_quiet
                )
                try:
                    if (await client.stats())["ready"]:
                        return
                finally:
                    await client.close()
            except SiotError:
                pass  # not listening or not answering yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"siot serve not ready after {READY_TIMEOUT_S} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc, timeout_s=30)
            wait_port_free(self.port)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        wait_port_free(self.port)


@contextlib.contextmanager
def running(data_dir: Path, **options: Any) -> Iterator[SiotProcess]:
    """A started `SiotProcess` (options as its fields), stopped when the block ends."""
    proc = SiotProcess(data_dir=data_dir, **options).start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def connected(proc: SiotProcess) -> AsyncIterator[Client]:
    """A client of `proc` with its root loaded, closed when the block ends."""
    client = await Client.connect(proc.url, reconnect_forever=False)
    await client.load_root()
    try:
        yield client
    finally:
        await client.close()
