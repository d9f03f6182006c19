"""One HTTP write of line protocol to InfluxDB 1.x (`/write?db=`), InfluxDB 2.x or VictoriaMetrics
(`/api/v2/write?org=&bucket=`), with aiohttp's client, and what its answer means for the
exporter's cursor.

- 2xx: written; the cursor may move past these lines.
- 400 and 422: the database refused lines (a field type conflict, a line it cannot parse).
  InfluxDB writes the other lines of the request and names the bad ones ("partial write"):
  sending the same lines again would be refused again, so the exporter reports it and moves on.
- 413: the request is too large; the exporter splits it.
- anything else (401/403 credentials, 404 no such database, 429, 5xx) and no answer at all:
  nothing was written; the exporter keeps its cursor and retries until the database takes it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

import aiohttp

from siot.nodes.export.config import DbConfig, WriteApi, redact_url

MAX_MESSAGE_CHARS = 500


class Outcome(StrEnum):
    WRITTEN = "written"
    REJECTED = "rejected"  # bad lines: reported, not retried
    TOO_LARGE = "too large"  # split and send again
    FAILED = "failed"  # nothing written: retry later


@dataclass(slots=True, frozen=True)
class WriteResult:
    outcome: Outcome
    status: int = 0  # the HTTP status; 0 when there was no answer
    message: str = ""


class InfluxWriter:
    """`async with InfluxWriter(config) as writer:` holds one connection pool to the database;
    `await writer.write(body)` sends one request and never raises for what the database or the
    network did (the result says it)."""

    def __init__(self, config: DbConfig) -> None:
        self.config = config
        self.target = redact_url(config.url)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.api is WriteApi.V2:
            self.endpoint = f"{config.url}/api/v2/write"
            self.params = {"org": config.org, "bucket": config.bucket, "precision": "ns"}
            if config.token:
                headers["Authorization"] = f"Token {config.token}"
        else:
            self.endpoint = f"{config.url}/write"
            self.params = {"db": config.database, "precision": "ns"}
        if config.user and not config.token:
            # By hand: aiohttp's BasicAuth is deprecated in 3.14, its replacement absent before.
            basic = base64.b64encode(f"{config.user}:{config.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        self.headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def write(self, body: bytes) -> WriteResult:
        assert self._session is not None, "use InfluxWriter as an async context manager"
        try:
            async with self._session.post(
                self.endpoint, params=self.params, data=body, headers=self.headers
            ) as response:
                status = response.status
                text = "" if 200 <= status < 300 else await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "no answer within the timeout" if isinstance(exc, TimeoutError) else _plain(exc)
            return WriteResult(Outcome.FAILED, 0, f"cannot write to {self.target}: {reason}")
        if 200 <= status < 300:
            return WriteResult(Outcome.WRITTEN, status)
        message = f"{self.target} answered {status}: {_error_text(text)}"
        if status in (400, 422):
            return WriteResult(Outcome.REJECTED, status, message)
        if status == 413:
            return WriteResult(Outcome.TOO_LARGE, status, message)
        return WriteResult(Outcome.FAILED, status, message)


def _plain(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_text(body: str) -> str:
    """The database's own message: InfluxDB 1.x answers `{"error"}`, 2.x `{"code","message"}`."""
    text = body.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        text = str(parsed.get("error") or parsed.get("message") or text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "…"
    return text or "(no message)"
