"""Test support: real processes (nats-server from the wheel, `siot serve`) on free loopback ports.

Each process is stopped by its own pid: SIGTERM, then SIGKILL if it lingers.

Every `siot serve` log is checked (the log guard): when a process is stopped or killed, and at
the end of every test (tests/conftest.py), an ERROR or CRITICAL record or a Python traceback that
the test did not declare fails the test with the offending lines. Declare expected ones with
`SiotProcess(..., expect_errors=[regex, ...])`, `proc.expect_error(regex)`, or
`@pytest.mark.expect_errors(regex, ...)` on the test (which also covers in-process loggers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
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
        __tracebackhide__ = True
        if self.proc:
            stop_pid(self.proc)


# --- the log guard ---------------------------------------------------------------------------

# A record of `siot serve`'s log starts with the format set in cmd/main.py,
# "%(asctime)s %(levelname)s %(name)s: %(message)s". Every line that does not start that way
# (a traceback from `logger.exception`, a multi-line message, or something Python printed to
# stderr itself, such as an uncaught exception in a thread) belongs to the record above it; a
# record with its continuation lines is one block, and an expectation is matched per block.
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) ")
BAD_LEVELS = frozenset({"ERROR", "CRITICAL"})
# Lines that make a block bad whatever its level: tracebacks (also at WARNING, or printed
# outside logging), the interpreter's own reports.
BAD_LINES = re.compile(
    r"^(Traceback \(most recent call last\):|Exception ignored in|Fatal Python error)", re.MULTILINE
)
MAX_BLOCKS_SHOWN = 10
MAX_LINES_PER_BLOCK = 40

# Expectations of the running test (its `expect_errors` marker), set by the autouse fixture in
# conftest.py; they apply to every process log checked during the test.
test_expected_errors: list[re.Pattern[str]] = []


class UnexpectedLogErrors(AssertionError):
    """A log holds errors or tracebacks no expectation covers."""


def log_blocks(text: str) -> list[str]:
    """The log split into records, each with its continuation lines."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if RECORD_START.match(line) or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return ["\n".join(b) for b in blocks]


def is_bad_block(block: str) -> bool:
    match = RECORD_START.match(block)
    return (match is not None and match["level"] in BAD_LEVELS) or BAD_LINES.search(block) is not None


def compile_expectations(patterns: Iterable[str | re.Pattern[str]]) -> list[re.Pattern[str]]:
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def unexpected_blocks(text: str, expected: Iterable[str | re.Pattern[str]] = ()) -> list[str]:
    """The bad blocks of a log that no expected regex matches (`re.search` over the block)."""
    patterns = compile_expectations(expected)
    return [
        block
        for block in log_blocks(text)
        if is_bad_block(block) and not any(p.search(block) for p in patterns)
    ]


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


async def _quiet(exc: Exception) -> None:
    """Connection refused while the daemon starts is expected; do not print it."""


@dataclass
class SiotProcess:
    """`siot serve` as a child process with its own nats-server and data dir.

    `start()` returns once the API answers; `kill()` is SIGKILL (the crash test's weapon),
    after which the embedded nats-server dies with its parent (PR_SET_PDEATHSIG).

    `stop()` and `kill()` then check the log written since the last check (see the log guard
    above): errors or tracebacks that match none of `expect_errors` (regexes, searched in each
    record with its traceback) raise `UnexpectedLogErrors`, after the process is down.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    instance_id: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    expect_errors: list[str | re.Pattern[str]] = field(default_factory=list)
    log_checked: int = 0  # bytes of the log the guard has read

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def expect_error(self, pattern: str | re.Pattern[str]) -> SiotProcess:
        """Declare an error this test provokes on purpose (a regex searched in each bad record)."""
        self.expect_errors.append(pattern)
        return self

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
        if self.log_path != self.data_dir / "siot.log":
            self.log_path = self.data_dir / "siot.log"
            self.log_checked = self.log_path.stat().st_size if self.log_path.exists() else 0
        if not any(p is self for p in started_processes):
            started_processes.append(self)
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

    def unchecked_errors(self) -> list[str]:
        """Bad blocks written since the last check that nothing expects; marks them checked.
        While the process runs, a last line still being written is left for the next check."""
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self.log_checked)
            data = f.read()
        if self.proc is not None and self.proc.poll() is None:
            data = data[: data.rfind(b"\n") + 1]
        self.log_checked += len(data)
        return unexpected_blocks(data.decode(errors="replace"), [*self.expect_errors, *test_expected_errors])

    def check_log(self) -> None:
        """Raise `UnexpectedLogErrors` if the log has unexpected errors since the last check."""
        __tracebackhide__ = True
        if blocks := self.unchecked_errors():
            raise UnexpectedLogErrors(format_unexpected(f"the log of siot serve ({self.log_path})", blocks))

    def stop(self) -> None:
        __tracebackhide__ = True
        if self.proc:
            stop_pid(self.proc, timeout_s=30)
            wait_port_free(self.port)
            self.check_log()

    def kill(self) -> None:
        __tracebackhide__ = True
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        wait_port_free(self.port)
        self.check_log()  # what it wrote up to the kill


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
    client = await Client.connect(proc.url, reconnect_forever=False)
    await client.load_root()
    try:
        yield client
    finally:
        await client.close()
