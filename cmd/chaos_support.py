"""What the fault scenarios share (`siot chaos`, and tests/test_faults.py through them): a real
`siot serve` process, the tally of one scenario, acked writers, and the faults themselves (SIGKILL,
the embedded nats-server's pid, a small tmpfs, a stepped wall clock).

A scenario never creates its processes itself: it is handed `spawn`, a class called as
`spawn(data_dir=..., instance_id=..., extra_args=[...], env={...})` that returns a `Daemon`. The
test suite passes its `SiotProcess` (tests/support.py: `ServeProcess` with the log guard);
`siot chaos` passes `ServeProcess` below. Both keep the log in `<data_dir>/siot.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

from siot import credfile
from siot.client import Client
from siot.cmd import debian_packages
from siot.errors import SiotError
from siot.points import Point

READY_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 5.0
POLL_S = 0.02


class Daemon(Protocol):
    """A `siot serve` child process: `start()` returns once it is ready (raises `RuntimeError` if
    it exited, `TimeoutError` if it never got ready), `kill()` is SIGKILL, `stop()` SIGTERM; both
    return once its port is free. `start()` again restarts it on the same data and port."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def log(self) -> str: ...

    def expect_error(self, pattern: str) -> Any: ...


Spawn = Callable[..., Daemon]


class DaemonCrashed(RuntimeError):
    """A daemon exited without being told to, or did not come up again."""


# ---- a `siot serve` process and the check of its log ----

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
    """The bad blocks of a log (ERROR/CRITICAL records, tracebacks) that no expected regex
    matches (`re.search` over the block)."""
    patterns = compile_expectations(expected)
    return [
        block
        for block in log_blocks(text)
        if is_bad_block(block) and not any(p.search(block) for p in patterns)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, listening: bool, timeout_s: float) -> bool:
    """Until something listens on `port` (or, `listening` false, nothing does); false on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", port)) == 0) == listening:
                return True
        time.sleep(POLL_S)
    return False


def wait_port(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    if not _wait_listening(port, True, timeout_s):
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def wait_port_free(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    if not _wait_listening(port, False, timeout_s):
        raise TimeoutError(f"127.0.0.1:{port} still busy after {timeout_s} s")


def stop_pid(proc: subprocess.Popen[bytes], timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to `proc` by its own pid (if it still runs) and reap it; SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


async def _quiet(exc: Exception) -> None:
    """Connection errors while a daemon starts, or after it was killed, are expected."""


@dataclass
class ServeProcess:
    """`siot serve` as a child process with its own nats-server and data dir, its log in
    `<data_dir>/siot.log` (what `siot chaos` runs; the tests' `SiotProcess` is a subclass).

    `start()` returns once `siot.stats` says ready; `kill()` is SIGKILL, after which the embedded
    nats-server dies with its parent (PR_SET_PDEATHSIG); `stop()` is SIGTERM (SIGKILL after 30 s).
    Both return once the port is free, then `check_log()` the log written since the last check:
    errors or tracebacks that match none of `expect_errors` (regexes, searched in each record
    with its traceback) are collected in `unexpected`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    instance_id: str | None = None
    http_port: int = 0  # 0: no HTTP server (the CLI's default port would be shared by every process)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    expect_errors: list[str | re.Pattern[str]] = field(default_factory=list)
    log_checked: int = 0  # bytes of the log already checked
    unexpected: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def expect_error(self, pattern: str | re.Pattern[str]) -> Self:
        """Declare an error provoked on purpose (a regex searched in each bad record)."""
        self.expect_errors.append(pattern)
        return self

    def launcher(self) -> list[str]:
        """The command that runs the `siot` CLI (`-P`: not the working directory's modules)."""
        return [sys.executable, "-P", "-m", "siot.cmd.main"]

    def start(self) -> Self:
        args = [*self.launcher(), "serve", "--data", str(self.data_dir)]
        args += ["--nats-port", str(self.port), "--monitor-port", "0", "--http-port", str(self.http_port)]
        args += self.extra_args
        if self.instance_id:
            args += ["--id", self.instance_id]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path != self.data_dir / "siot.log":
            self.log_path = self.data_dir / "siot.log"
            self.log_checked = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        asyncio.run(self._wait_ready())
        return self

    def client_options(self) -> dict[str, Any]:
        """How a client reaches this instance as its admin: the URL and the admin credential
        (with its TLS files) it keeps in its data directory, once written; else its URL alone."""
        admin = credfile.local_admin(self.data_dir, self.url)
        if admin is None:
            return {"url": self.url}
        return {
            "url": admin.url or self.url,
            "credential": admin,
            "tls_ca": admin.tls_ca or None,
            "tls_cert": admin.tls_cert or None,
            "tls_key": admin.tls_key or None,
        }

    async def _wait_ready(self) -> None:
        """Until `siot.stats` says ready: the API answers and every node client has started."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"siot serve exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(SiotError):  # not listening or not answering yet
                options = self.client_options()
                client = await Client.connect(
                    options.pop("url"),
                    reconnect_forever=False,
                    timeout_s=1,
                    allow_reconnect=False,
                    error_cb=_quiet,
                    **options,
                )
                try:
                    if (await client.stats())["ready"]:
                        return
                finally:
                    await client.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"siot serve not ready after {READY_TIMEOUT_S} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def expectations(self) -> list[str | re.Pattern[str]]:
        return self.expect_errors

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
        return unexpected_blocks(data.decode(errors="replace"), self.expectations())

    def check_log(self) -> None:
        """Collect in `unexpected` the log's unexpected errors since the last check."""
        self.unexpected += self.unchecked_errors()

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc, timeout_s=30)
            wait_port_free(self.port)
            self.check_log()

    def kill(self) -> None:
        assert self.proc is not None
        stop_pid(self.proc, timeout_s=30, sig=signal.SIGKILL)
        wait_port_free(self.port)
        self.check_log()  # what it wrote up to the kill


# ---- one scenario's figures, and the faults it injects ----


@dataclass
class Tally:
    """What one scenario did: rounds run, writes acknowledged to a client, how many of those
    were missing afterwards, daemons that died on their own, and other wrong outcomes."""

    scenario: str
    trials: int = 0
    acked: int = 0
    lost: int = 0
    crashes: int = 0
    failures: list[str] = field(default_factory=list)
    figures: Counter[str] = field(default_factory=Counter)  # scenario-specific counts
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.lost or self.crashes or self.failures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "trials": self.trials,
            "acked": self.acked,
            "lost": self.lost,
            "crashes": self.crashes,
            "failures": self.failures,
            "figures": dict(self.figures),
            "seconds": round(self.seconds, 1),
        }


@dataclass
class Chaos:
    """The context a scenario runs in: how to make daemons, where, its random source and tally.
    Every daemon made through `daemon()` is stopped by `close()`."""

    spawn: Spawn
    workdir: Path
    rng: random.Random
    tally: Tally
    daemons: list[Daemon] = field(default_factory=list)

    def daemon(self, name: str, **options: Any) -> Daemon:
        """A daemon with its data in `workdir/name` (not started)."""
        daemon = self.spawn(data_dir=self.workdir / name, **options)
        self.daemons.append(daemon)
        return daemon

    def _crashed(self, daemon: Daemon, what: str) -> DaemonCrashed:
        self.tally.crashes += 1
        code = daemon.proc.returncode if daemon.proc else None
        tail = "\n".join(daemon.log().splitlines()[-30:])
        return DaemonCrashed(f"{daemon.data_dir.name}: {what} (exit code {code}); its log ends:\n{tail}")

    async def start(self, daemon: Daemon) -> Daemon:
        """Start (or restart) `daemon`; one that does not come up counts as a crash."""
        try:
            await asyncio.to_thread(daemon.start)
        except (RuntimeError, TimeoutError) as exc:
            raise self._crashed(daemon, f"did not start: {str(exc).splitlines()[0]}") from exc
        return daemon

    def check_alive(self, daemon: Daemon) -> None:
        if daemon.proc is None or daemon.proc.poll() is not None:
            raise self._crashed(daemon, "exited on its own")

    async def kill(self, daemon: Daemon) -> None:
        """SIGKILL `daemon`, which must still be running."""
        self.check_alive(daemon)
        await asyncio.to_thread(daemon.kill)

    async def stop(self, daemon: Daemon) -> None:
        """SIGTERM `daemon`, which must still be running and must exit cleanly."""
        self.check_alive(daemon)
        await asyncio.to_thread(daemon.stop)
        assert daemon.proc is not None
        if daemon.proc.returncode not in (0, -signal.SIGTERM):
            raise self._crashed(daemon, "did not stop cleanly")

    async def close(self) -> None:
        """Stop every daemon still running; re-raise the first error after all are down."""
        first: BaseException | None = None
        for daemon in self.daemons:
            if daemon.proc is None or daemon.proc.poll() is not None:
                continue
            try:
                await asyncio.to_thread(daemon.stop)
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    def check_kept(self, trial: str, acked: set[Any], stored: set[Any], what: str = "writes") -> None:
        """Count acknowledged `acked` writes missing from `stored` as lost."""
        missing = acked - stored
        if missing:
            self.tally.lost += len(missing)
            example = sorted(missing, key=str)[:3]
            self.fail(f"{trial}: {len(missing)} acknowledged {what} lost, e.g. {example}")

    def fail(self, message: str) -> None:
        self.tally.failures.append(message)


async def connect(daemon: Daemon, *, timeout_s: float = REQUEST_TIMEOUT_S, reconnect: bool = False) -> Client:
    """A client of `daemon` with its root loaded; `reconnect` rides out nats-server restarts."""
    if reconnect:
        client = await Client.connect(
            daemon.url, timeout_s=timeout_s, reconnect_time_wait=0.1, error_cb=_quiet
        )
    else:
        client = await Client.connect(
            daemon.url, timeout_s=timeout_s, reconnect_forever=False, allow_reconnect=False, error_cb=_quiet
        )
    await client.load_root()
    return client


async def close_quietly(*clients: Client) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.nc.close()


async def within(seconds: float, check: Callable[[], Any], what: str, *, poll_s: float = 0.05) -> Any:
    """Poll the async `check` until it returns something truthy; `TimeoutError` names `what`."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {seconds:g} s")
        await asyncio.sleep(poll_s)


async def stored_keys(client: Client, node: str, ptype: str) -> set[str]:
    """Keys of `node`'s current `ptype` points."""
    return {p.key for p in (await client.get_node(node)).points if p.type == ptype and not p.deleted}


async def history_keys(client: Client, node: str, ptype: str) -> set[str]:
    return {p.key for p in await client.history(node, ptype, limit=1_000_000)}


# ---- acked writers ----


@dataclass
class KeyWriter:
    """Acked batches of distinct keyed points (`ptype`, key `<prefix><n>`) to one node, from
    `lanes` concurrent request loops spread over `clients`: many requests in flight at once. A
    key is acknowledged once its batch got `{"ok"}`; a batch answered `{"error"}` is `refused`
    (with its reason counted in `errors`); a batch with no answer is neither."""

    clients: Sequence[Client]
    node: str
    prefix: str = ""
    ptype: str = "v"
    batch: int = 50
    lanes: int = 8
    value_bytes: int = 0  # 0: int values; else strings this long
    keep_going: bool = False  # on errors (a nats-server restart), retry instead of stopping
    acked: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    _next: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> KeyWriter:
        self._tasks = [
            asyncio.create_task(self._lane(self.clients[i % len(self.clients)])) for i in range(self.lanes)
        ]
        return self

    def _points(self) -> tuple[list[str], list[Point]]:
        first, self._next = self._next, self._next + self.batch
        keys = [f"{self.prefix}{n}" for n in range(first, first + self.batch)]
        if self.value_bytes:
            filler = "x" * self.value_bytes
            return keys, [Point(self.ptype, f"{k}:{filler}", key=k) for k in keys]
        return keys, [Point(self.ptype, n, key=k) for n, k in enumerate(keys, first)]

    async def _lane(self, client: Client) -> None:
        while not self._stop.is_set():
            keys, points = self._points()
            try:
                await client.send_points(self.node, points)
            except SiotError as exc:
                reason = str(exc)
                if not reason.startswith("no reply") and "no siot instance" not in reason:
                    self.refused.update(keys)
                self.errors[_reason(reason)] += 1
                if not self.keep_going:
                    return
                await asyncio.sleep(0.05)
            except Exception as exc:  # the connection went away under a request
                self.errors[type(exc).__name__] += 1
                if not self.keep_going:
                    return
                await asyncio.sleep(0.05)
            else:
                self.acked.update(keys)

    async def until_acked(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count:
            if all(t.done() for t in self._tasks):
                raise RuntimeError(f"the writer stopped after {len(self.acked)} acks: {dict(self.errors)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acked)} of {count} writes acked in {timeout_s:g} s")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop sending; a request still waiting for its reply is abandoned (not acked)."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task


def _reason(message: str) -> str:
    """An error message without what varies per request (ids, counts), for counting."""
    return re.sub(r"[0-9a-f-]{36}|\d+", "N", message)[:120]


# ---- faults ----


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def nats_server_pid(daemon: Daemon) -> int | None:
    """The pid of `daemon`'s embedded nats-server (its child process named nats-server)."""
    assert daemon.proc is not None
    for child in child_pids(daemon.proc.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "nats-server":
                return child
    return None


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, None when it does not exist."""
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionError(f"{what} needs root (mount); run as root, e.g. in the project's container")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _umount(path: Path) -> None:
    if not _mounted(path):
        return
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # something still holds it open: detach it now


@contextlib.contextmanager
def small_disk(data_dir: Path, size_mb: int, log_file: Path) -> Iterator[Path]:
    """A tmpfs of `size_mb` MB mounted at `data_dir` for a daemon's data, unmounted at the end.
    The daemon's log (`data_dir/siot.log`) is a bind mount of `log_file`, outside the tmpfs, so
    the log keeps working while the data's file system is full or read-only."""
    require_root("a small disk (tmpfs)")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    log_mount = data_dir / "siot.log"
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(data_dir))
    if result.returncode != 0:
        raise OSError(f"mount -t tmpfs on {data_dir} failed: {result.stderr.strip()}")
    try:
        log_mount.touch()
        result = _run("mount", "--bind", str(log_file), str(log_mount))
        if result.returncode != 0:
            raise OSError(f"mount --bind {log_file} failed: {result.stderr.strip()}")
        yield data_dir
    finally:
        _umount(log_mount)
        _umount(data_dir)


def remount(path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """`mount -o remount,<mode> path` (mode `ro` or `rw`)."""
    return _run("mount", "-o", f"remount,{mode}", str(path))


def fill_disk(path: Path) -> int:
    """Write zeros to `path` until its file system is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1 << 9):
            block = bytes(size)
            while True:
                try:
                    n = f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
                if not n:
                    break
    return written


def libfaketime() -> str:
    """The path of Debian's libfaketime, installed with apt-get when it is missing (as root)."""
    return debian_packages.require("libfaketime")


def set_clock_offset(offset_file: Path, seconds: int) -> None:
    """Set the wall clock offset of processes run with `faketime_env(offset_file)`; replaced
    whole, so a process never reads a half-written file."""
    tmp = offset_file.with_name(offset_file.name + ".tmp")
    tmp.write_text(f"{seconds:+d}\n")
    os.replace(tmp, offset_file)


def faketime_env(offset_file: Path) -> dict[str, str]:
    """Environment that runs a process under libfaketime, its wall clock offset by the seconds
    written in `offset_file` (`+0`, `-3600`), re-read on every call so it can change at run time.
    Monotonic clocks are left alone: asyncio's timers keep working while the wall clock jumps."""
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
