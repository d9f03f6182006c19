"""Test support: real processes (nats-server from the wheel, `siot serve`) on free loopback ports.

Each process is stopped by its own pid: SIGTERM, then SIGKILL if it lingers.

Every `siot serve` log is checked (the log guard): when a process is stopped or killed, and at
the end of every test (tests/conftest.py), an ERROR or CRITICAL record or a Python traceback that
the test did not declare fails the test with the offending lines. Declare expected ones with
`SiotProcess(..., expect_errors=[regex, ...])`, `proc.expect_error(regex)`, or
`@pytest.mark.expect_errors(regex, ...)` on the test (which also covers in-process loggers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from siot.app import ServeConfig
from siot.broker import find_nats_server
from siot.client import Client
from siot.cmd.chaos_support import (
    READY_TIMEOUT_S,
    RECORD_START,
    ServeProcess,
    compile_expectations,
    free_port,
    is_bad_block,
    log_blocks,
    stop_pid,
    unexpected_blocks,
    wait_port,
    wait_port_free,
)
from siot.node_clients import NODE_CLIENTS
from siot.nodes.rules.manager import rules_client
from siot.runtime import NodeClient

__all__ = [
    "READY_TIMEOUT_S",
    "RECORD_START",
    "SIOT_BIN",
    "LogGuard",
    "NatsServer",
    "SiotProcess",
    "UnexpectedLogErrors",
    "connected",
    "free_port",
    "is_bad_block",
    "log_blocks",
    "run_siot",
    "running",
    "stop_all",
    "stop_pid",
    "unexpected_blocks",
    "wait_port",
    "wait_port_free",
]

SIOT_BIN = str(Path(sys.executable).parent / "siot")


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
        __tracebackhide__ = True
        if self.proc:
            stop_pid(self.proc)


# --- the log guard ---------------------------------------------------------------------------

# The log is split into blocks (a record with its continuation lines) and a block is bad at
# ERROR/CRITICAL or with a traceback: `log_blocks`, `is_bad_block` and `unexpected_blocks`, shared
# with `siot chaos` (siot/cmd/chaos_support.py).
MAX_BLOCKS_SHOWN = 10
MAX_LINES_PER_BLOCK = 40

# Expectations of the running test (its `expect_errors` marker), set by the autouse fixture in
# conftest.py; they apply to every process log checked during the test.
test_expected_errors: list[re.Pattern[str]] = []


class UnexpectedLogErrors(AssertionError):
    """A log holds errors or tracebacks no expectation covers."""


def _shorten(block: str) -> str:
    lines = block.splitlines()
    if len(lines) <= MAX_LINES_PER_BLOCK:
        return block
    half = MAX_LINES_PER_BLOCK // 2
    return "\n".join([*lines[:half], f"    ... {len(lines) - 2 * half} lines ...", *lines[-half:]])


def format_unexpected(source: str, blocks: list[str]) -> str:
    shown = "\n".join(_shorten(b) for b in blocks[:MAX_BLOCKS_SHOWN])
    more = f"\n... and {len(blocks) - MAX_BLOCKS_SHOWN} more" if len(blocks) > MAX_BLOCKS_SHOWN else ""
    return (
        f"{len(blocks)} unexpected error(s) in {source} (declare expected ones with "
        f"expect_errors=[regex] or @pytest.mark.expect_errors(regex)):\n{shown}{more}"
    )


# Every SiotProcess started in this session, until its log has been checked after it ended:
# `LogGuard.finish` checks them at the end of each test (also those a test killed or left
# running); conftest.py stops the ones still running at the end of the session.
started_processes: list[SiotProcess] = []


class ErrorRecords(logging.Handler):
    """Keeps the records the guard counts: ERROR and above, and tracebacks (a WARNING logged
    with exc_info), formatted as a daemon's log shows them (without the time)."""

    FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.blocks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.blocks.append(self.FORMAT.format(record))


class LogGuard:
    """One test's guard: from construction to `finish()`, what the `siot` loggers of this process
    record, and then the unchecked part of every started process's log."""

    def __init__(self, expected: Iterable[str | re.Pattern[str]] = (), logger: str = "siot") -> None:
        self.expected = compile_expectations(expected)
        test_expected_errors[:] = self.expected
        self.records = ErrorRecords()
        self.logger = logging.getLogger(logger)
        self.logger.addHandler(self.records)

    def finish(self) -> list[str]:
        """The failures, one message per log; processes that have ended are forgotten."""
        self.logger.removeHandler(self.records)
        failures = []
        for proc in list(started_processes):
            if blocks := proc.unchecked_errors():
                failures.append(format_unexpected(f"the log of siot serve ({proc.log_path})", blocks))
            if proc.proc is None or proc.proc.poll() is not None:
                started_processes.remove(proc)
        test_expected_errors.clear()
        if blocks := [b for b in self.records.blocks if not any(p.search(b) for p in self.expected)]:
            failures.append(format_unexpected(f"this process's {self.logger.name} loggers", blocks))
        return failures


class SiotProcess(ServeProcess):
    """`ServeProcess` (siot/cmd/chaos_support.py) run through the installed `siot` entry point
    and watched by the log guard: registered in `started_processes` when started, and `stop()`
    and `kill()` raise `UnexpectedLogErrors`, after the process is down, when its log holds
    errors or tracebacks since the last check that match none of `expect_errors` nor the test's
    `expect_errors` marker."""

    def launcher(self) -> list[str]:
        return [SIOT_BIN]

    def start(self) -> Self:
        if not any(p is self for p in started_processes):
            started_processes.append(self)
        return super().start()

    def expectations(self) -> list[str | re.Pattern[str]]:
        return [*self.expect_errors, *test_expected_errors]

    def check_log(self) -> None:
        """Raise `UnexpectedLogErrors` if the log has unexpected errors since the last check."""
        __tracebackhide__ = True
        if blocks := self.unchecked_errors():
            raise UnexpectedLogErrors(format_unexpected(f"the log of siot serve ({self.log_path})", blocks))

    def stop(self) -> None:
        __tracebackhide__ = True
        super().stop()

    def kill(self) -> None:
        __tracebackhide__ = True
        super().kill()


def stop_all(*procs: SiotProcess) -> None:
    """Stop every one of `procs`, then raise what their logs' checks found (a failed check of
    one must not leave the others running)."""
    __tracebackhide__ = True
    failures = []
    for proc in procs:
        try:
            proc.stop()
        except UnexpectedLogErrors as exc:
            failures.append(str(exc))
    if failures:
        raise UnexpectedLogErrors("\n\n".join(failures))


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
    options = proc.client_options()
    client = await Client.connect(options.pop("url"), reconnect_forever=False, **options)
    await client.load_root()
    try:
        yield client
    finally:
        await client.close()


# ---- a daemon in the test's own process ----


def serve_config(tmp_path: Path, **options: Any) -> ServeConfig:
    """An `App` config on free loopback ports, its data under `tmp_path`."""
    return ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0, **options)


def without_rules() -> tuple[NodeClient, ...]:
    """The daemon's node clients minus the rules engine: a test runs its own `RulesManager` on
    the daemon's in-process client, on a manual clock."""
    return tuple(client for client in NODE_CLIENTS if client is not rules_client)


CLI_TIMEOUT_S = 30


def run_siot(
    url: str, *args: str, stdin: str | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the `siot` CLI against the instance at `url` (no SIOT_* variable of the test's
    environment leaks in); with `ok`, fail the test unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
    result = subprocess.run(
        [SIOT_BIN, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**env, "SIOT_URL": url},
    )
    if ok:
        assert result.returncode == 0, f"siot {' '.join(args)} failed:\n{result.stderr}"
    return result
