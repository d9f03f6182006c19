"""The typed config of a `db` node (Simple IoT's name): where the exporter writes, how, and what.

`url` is the database's base URL (`http://127.0.0.1:8086`). With `database` the exporter writes to
InfluxDB 1.x's `/write?db=` (basic auth from `user`/`password` when set); with `bucket` to the
InfluxDB 2.x API `/api/v2/write?org=&bucket=` (`Authorization: Token <token>`), which
VictoriaMetrics also serves. `nodeTypes` and `pointTypes` narrow what is exported (names separated
by commas or spaces; empty = everything). `password` and `token` are points like any other
(docs/export.md says who can read them); they are never logged nor shown in metrics.
"""

from __future__ import annotations

import re
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from siot.nodes.config import Duration
from siot.nodes.manager import ManagedConfig

DB_NODE_TYPE = "db"
DEFAULT_BATCH_LINES = 5_000
MAX_BATCH_LINES = 50_000
DEFAULT_BATCH_WAIT_S = 1.0
DEFAULT_TIMEOUT_S = 30.0
BatchWait = Duration(0.0, 60.0)
RequestTimeout = Duration(0.0, 600.0, exclusive_min=True)
_NAME_SEPARATORS = re.compile(r"[,\s]+")


class WriteApi(StrEnum):
    V1 = "v1"  # InfluxDB 1.x: POST /write?db=
    V2 = "v2"  # InfluxDB 2.x, VictoriaMetrics: POST /api/v2/write?org=&bucket=


class DbConfig(ManagedConfig):
    """Points of a `db` node. `url` empty means the node is being set up: nothing runs yet."""

    url: str = ""
    database: str = ""
    org: str = ""
    bucket: str = ""
    token: str = Field("", repr=False)  # never in a log line, even of the whole config
    user: str = ""
    password: str = Field("", repr=False)
    node_types: frozenset[str] = Field(frozenset(), alias="nodeTypes")
    point_types: frozenset[str] = Field(frozenset(), alias="pointTypes")
    # Log entries read per window; every exportable one becomes a line of one HTTP request.
    batch_lines: int = Field(DEFAULT_BATCH_LINES, alias="batchLines", ge=1, le=MAX_BATCH_LINES)
    # After a commit wakes the exporter, how long it gathers more before it writes a short batch.
    batch_wait_s: BatchWait = Field(DEFAULT_BATCH_WAIT_S, alias="batchWait")
    timeout_s: RequestTimeout = Field(DEFAULT_TIMEOUT_S, alias="timeout")

    @field_validator("node_types", "point_types", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(name for name in _NAME_SEPARATORS.split(value) if name)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"'{redact_url(value)}' is not an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_api(self) -> DbConfig:
        if self.url and bool(self.database) == bool(self.bucket):
            raise ValueError("set either 'database' (InfluxDB 1.x) or 'bucket' (InfluxDB 2.x), not both")
        return self

    @property
    def api(self) -> WriteApi:
        return WriteApi.V2 if self.bucket else WriteApi.V1


def redact_url(url: str) -> str:
    """`url` without any user:password part, for logs and `error` points."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()
