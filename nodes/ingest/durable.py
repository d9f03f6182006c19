"""MQTT QoS 1 readings that nats-server holds until siot has committed them.

Why this route: nats-server answers a QoS 1 PUBLISH with a PUBACK once it has routed the message
and stored it in its own JetStream stream `$MQTT_msgs` (subject `$MQTT.msgs.<subject>`), and it
waits for that store to be answered before it sends the PUBACK (server/mqtt.go:
`mqttProcessPub` → `mqttInitiateMsgDelivery` → `jsa.storeMsg`, a request the stream answers
after `StoreMsg`). QoS 2 takes the same path on PUBREL. The stream has interest retention: it
keeps a message only while some consumer still wants it, which is how nats-server holds QoS 1
messages for MQTT sessions subscribed at QoS 1. An ingest node is one more such consumer: a
durable pull consumer on `$MQTT_msgs`, filtered to the node's subjects, that acks a message only
after its points are committed. Killed before the ack, siot gets the message again after
`ackWait` on its next start.

A stream of our own capturing the ingest subjects is not enough: a capturing stream gets the
message through an in-memory queue that its own goroutine stores from, concurrently with the
PUBACK, and a server that stops drops what is still queued (`mset.stop`; read in nats-server's
server/stream.go, `processInboundJetStreamMsg` → `queueInbound`, `internalLoop`). It would also
store every NATS publish on those subjects and answer NATS requests with its own PubAck.

What this relies on from nats-server besides JetStream's public API: the stream name
`$MQTT_msgs`, the subject prefix `$MQTT.msgs.` and the `Nmqtt-Pub` header carrying the QoS
(server/mqtt.go; the header is also in STACK.md), all unchanged since MQTT came to nats-server
(2.2). tests/test_mqtt_durable.py fails if any of them changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import Enum

import nats.errors
import nats.js.errors
import paho.mqtt.client as paho
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from siot.credfile import Credential
from siot.runtime import AppContext

logger = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."
MQTT_QOS_HEADER = "Nmqtt-Pub"
CONSUMER_PREFIX = "siot-ingest-"

DEFAULT_ACK_WAIT_S = 10.0
# A consumer nobody pulled from for this long is removed by nats-server, and with it what it held
# (only possible when siot runs against a server of its own choosing and stays down that long,
# or a node keeps an invalid config: the embedded broker stops with siot).
INACTIVE_THRESHOLD_S = 7 * 86_400.0
MAX_ACK_PENDING = 4_096
FETCH_BATCH = 512
IDLE_WAIT_S = 5.0  # one long poll while nothing is held
BUSY_WAIT_S = 0.05  # how long a batch waits to fill once messages flow
RETRY_SETUP_S = 5.0
DELETE_ATTEMPTS = 3
RETRY_DELETE_S = 1.0
HELLO_TIMEOUT_S = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

HeldHandler = Callable[[list[Msg]], Awaitable[None]]


def consumer_name(node: str) -> str:
    return CONSUMER_PREFIX + node


def held_by_broker(msg: Msg) -> bool:
    """Whether a message on a plain subscription came from an MQTT publish at QoS 1 or 2, which
    nats-server also stored in `$MQTT_msgs` before acknowledging it."""
    qos = (msg.headers or {}).get(MQTT_QOS_HEADER, "")
    return qos[:1] in ("1", "2")


def stored_ns(msg: Msg) -> int:
    """When nats-server stored the message (µs resolution, as nats-py parses it), in ns: the
    receive time of a held message, the same on every redelivery, so a reading delivered again
    after a crash is the identical point (a no-op in the store), not a second reading."""
    return (msg.metadata.timestamp - _EPOCH) // timedelta(microseconds=1) * 1_000


def _mqtt_hello(
    host: str, port: int, token: str, admin: Credential | None = None, tls: ssl.SSLContext | None = None
) -> bool:
    """Connect once to the MQTT listener and leave. nats-server creates an account's MQTT streams,
    `$MQTT_msgs` among them, when the first MQTT client of that account connects; before that
    there is nothing to put a consumer on, and the first device's QoS 1 messages would be
    acknowledged and held for nobody. Runs in a thread (paho is blocking)."""
    connected = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"siot-hello-{secrets.token_hex(4)}")
    if token:
        client.username_pw_set("siot", token)  # nats-server takes the token as the password
    elif admin is not None:
        client.username_pw_set(admin.user, admin.secret)
    if tls is not None:
        client.tls_set_context(tls)
    client.on_connect = lambda *_: connected.set()
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        logger.warning("ingest: cannot reach the MQTT listener at %s:%d: %s", host, port, exc)
        return False
    client.loop_start()
    try:
        return connected.wait(HELLO_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()


class Setup(Enum):
    READY = "ready"  # the consumer exists
    ABSENT = "absent"  # no stream (no JetStream, or MQTT not used yet): nothing is held
    FAILED = "failed"  # could not tell (server restarting, timeout): try again


class DurableIntake:
    """One ingest node's consumer on `$MQTT_msgs`: created (or updated) by `open`, pulled in
    stream order into `handler` (in batches of what is there), removed by `close(delete=True)`.

    `active` says the consumer exists, so the node's plain subscription must leave QoS 1
    messages to it. It stays true while pulling fails for a moment (server restarting): the
    consumer still holds those messages, and taking them from the plain subscription as well
    would store them twice (two receive times). It is false while there is no stream: then QoS 1
    messages come through the plain subscription, not held, as with `durable=false`.

    Where there is no stream yet: siot's own broker with MQTT on creates it at once (`_mqtt_hello`);
    against a server of the user's choosing siot checks again every RETRY_SETUP_S; with its own
    broker and MQTT off there is nothing to hold and nothing is checked."""

    def __init__(self, ctx: AppContext, node: str, handler: HeldHandler) -> None:
        self.ctx = ctx
        self.node = node
        self.name = consumer_name(node)
        self.handler = handler
        self.active = False
        self._js: JetStreamContext = ctx.nc.jetstream()
        self._config: ConsumerConfig | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def _mqtt_off(self) -> bool:
        """siot runs the broker and has not switched MQTT on: no QoS 1 message can arrive."""
        cfg = self.ctx.config
        return not cfg.nats_url and not cfg.mqtt_port

    async def open(self, subjects: list[str], *, ack_wait_s: float) -> None:
        """Create or update the consumer for `subjects` and (re)start pulling."""
        await self._stop_pulling()
        if self._mqtt_off:
            return
        self._config = ConsumerConfig(
            durable_name=self.name,
            description=f"siot ingest node {self.node}: MQTT QoS 1 messages held until committed",
            filter_subjects=[MQTT_SUBJECT_PREFIX + s for s in subjects],
            deliver_policy=DeliverPolicy.NEW,  # a new node takes what arrives from now on
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,  # held until committed, however long the store refuses
            max_ack_pending=MAX_ACK_PENDING,
            inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        setup = await self._setup()
        self._task = asyncio.get_running_loop().create_task(
            self._run(setup), name=f"ingest {self.node} durable intake"
        )

    async def close(self, *, delete: bool) -> None:
        """Stop pulling; with `delete`, remove the consumer, and with it what it still holds
        (the node was deleted, disabled, or made non-durable)."""
        await self._stop_pulling()
        self.active = False
        self._config = None
        if delete and not self._mqtt_off:
            await self._delete()

    async def _delete(self) -> None:
        """A removal the server does not answer is tried again a few times: a consumer left
        behind holds messages for nobody (until nats-server drops it, INACTIVE_THRESHOLD_S)."""
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            try:
                await self._js.delete_consumer(MQTT_STREAM, self.name)
            except nats.js.errors.NotFoundError:
                return  # never made (no MQTT), or gone already
            except (nats.errors.Error, TimeoutError) as exc:
                logger.warning(
                    "ingest %s: could not remove consumer %s (attempt %d of %d): %s",
                    self.node,
                    self.name,
                    attempt,
                    DELETE_ATTEMPTS,
                    exc,
                )
                await asyncio.sleep(RETRY_DELETE_S)
                continue
            logger.info("ingest %s: removed consumer %s on %s", self.node, self.name, MQTT_STREAM)
            return

    async def _stop_pulling(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stream_exists(self) -> bool | None:
        """None when it cannot be told now."""
        try:
            await self._js.stream_info(MQTT_STREAM)
            return True
        except nats.js.errors.NotFoundError:
            return False
        except nats.errors.NoRespondersError:
            return False  # no JetStream on this server: no MQTT either
        except (nats.errors.Error, TimeoutError):
            return None

    async def _setup(self) -> Setup:
        """Make sure the stream and our consumer exist, and set `active` by what was found."""
        exists = await self._stream_exists()
        cfg = self.ctx.config
        if exists is False and cfg.mqtt_port and not cfg.nats_url:
            host = "127.0.0.1" if cfg.nats_host in ("", "0.0.0.0") else cfg.nats_host
            hello = (host, cfg.mqtt_port, cfg.auth_token, self.ctx.admin, self.ctx.own_tls)
            if await asyncio.to_thread(_mqtt_hello, *hello):
                exists = await self._stream_exists()
        if exists is None:
            return Setup.FAILED
        if not exists:
            self.active = False
            return Setup.ABSENT
        assert self._config is not None
        try:
            await self._js.add_consumer(MQTT_STREAM, self._config)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("ingest %s: cannot create consumer %s: %s", self.node, self.name, exc)
            return Setup.FAILED
        self.active = True
        return Setup.READY

    async def _run(self, setup: Setup) -> None:
        announced = False
        while True:
            if setup is not Setup.READY:
                if setup is Setup.ABSENT and not announced:
                    logger.info(
                        "ingest %s: no %s stream on this server (JetStream off, or no MQTT client "
                        "yet): MQTT QoS 1 messages are not held until it appears; checking every %.0f s",
                        self.node,
                        MQTT_STREAM,
                        RETRY_SETUP_S,
                    )
                    announced = True
                await asyncio.sleep(RETRY_SETUP_S)
                setup = await self._setup()
                continue
            logger.info(
                "ingest %s: MQTT QoS 1 messages held in %s until committed (consumer %s)",
                self.node,
                MQTT_STREAM,
                self.name,
            )
            announced = False
            try:
                await self._pull()
            except nats.errors.Error as exc:
                # consumer removed under us, or the server lost it: make it again
                logger.warning("ingest %s: pulling from %s failed: %s", self.node, self.name, exc)
            except Exception:
                logger.exception("ingest %s: pulling from %s failed", self.node, self.name)
            await asyncio.sleep(RETRY_SETUP_S)
            setup = await self._setup()

    async def _pull(self) -> None:
        """Messages in stream order into the handler: one long poll while idle, then batches of
        what is there for as long as messages flow (nats-py's fetch of a batch waits for the
        whole batch or its timeout, so a long poll for a batch would delay a lone reading)."""
        sub = await self._js.pull_subscribe_bind(self.name, MQTT_STREAM)
        try:
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=IDLE_WAIT_S)
                except TimeoutError:  # nats-py's, or asyncio's: nothing held
                    continue
                while msgs:
                    await self.handler(msgs)
                    try:
                        msgs = await sub.fetch(FETCH_BATCH, timeout=BUSY_WAIT_S)
                    except TimeoutError:
                        msgs = []
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
