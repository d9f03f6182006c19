"""The typed config of an `ingest` node, decoded from its points by the node manager."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from siot.errors import InvalidInput
from siot.nodes.config import Duration
from siot.nodes.ingest.durable import DEFAULT_ACK_WAIT_S
from siot.nodes.listener import ListenerConfig
from siot.nodes.topics import check_not_reserved

INGEST_NODE_TYPE = "ingest"
DEFAULT_DEVICE_TYPE = "device"
# Devices one ingest node may create (Simple IoT's `maxNodes`): one message naming 20,000 device
# ids must not become 20,000 nodes. Bounded so the point itself is a config, not a way around it.
DEFAULT_MAX_DEVICES = 1_000
MAX_MAX_DEVICES = 1_000_000
# ackWait: at least a second (a held batch needs its commit), at most a day (how long messages in
# flight when siot died wait before they come back).
AckWait = Duration(1.0, 86_400.0)


class TimeUnit(StrEnum):
    AUTO = "auto"  # numbers by magnitude (s, ms, µs, ns), strings as RFC 3339
    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"
    RFC3339 = "rfc3339"


class IngestConfig(ListenerConfig):
    """How to turn JSON messages on `topic` (MQTT filter) or `subject` (NATS filter) into points.

    Keyed points: `field` key=<JSON field> value=<point type> (when any is set, only those fields
    are taken; otherwise every number, bool and string field, by its own name); `tag`
    key=<name> value=<anything> (static metadata copied onto every device as `tag` points).

    `durable` (default true): MQTT QoS 1 messages are held by nats-server until their points are
    committed (durable.py); false gives the broker's own PUBACK, sent before siot has them.
    `ackWait` (s): how long a held message may be under way before nats-server delivers it
    again, which is also how soon messages in flight when siot died come back after a restart.

    `maxDevices`: how many devices (by name, deleted ones included: their names stay refused)
    the node may have; a message that would create one more is refused (runner.py).

    Filters that could match siot's own subjects or the broker's internal ones are refused
    (topics.check_not_reserved): such a node would answer the API's or the edges' requests.
    """

    device_field: str = Field("", alias="deviceField")
    device_topic_level: int | None = Field(None, alias="deviceTopicLevel")
    field_map: dict[str, str] = Field(default_factory=dict, alias="field")
    time_field: str = Field("", alias="timeField")
    time_unit: TimeUnit = Field(TimeUnit.AUTO, alias="timeUnit")
    tags: dict[str, Any] = Field(default_factory=dict, alias="tag")
    device_model: str = Field("", alias="deviceModel")
    device_type: str = Field(DEFAULT_DEVICE_TYPE, alias="deviceType")
    durable: bool = True
    ack_wait_s: AckWait = Field(DEFAULT_ACK_WAIT_S, alias="ackWait")
    max_devices: int = Field(DEFAULT_MAX_DEVICES, alias="maxDevices", ge=1, le=MAX_MAX_DEVICES)

    @model_validator(mode="after")
    def _not_reserved(self) -> IngestConfig:
        try:
            for subject in self.subjects:
                check_not_reserved(subject, self.topic)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from exc
        return self
