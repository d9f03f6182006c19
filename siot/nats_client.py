"""nats-py's client, hardened against messages it cannot read.

nats-py decodes each message's subject, reply subject and header status line as UTF-8 inside its
read loop, and any exception there ends the loop for good: the connection stays "connected" but
never reads again. nats-server passes subjects through as bytes, so one publish by any client to
`p.<byte 0xff>` (or a header status line that is not UTF-8) silently took the daemon off the air.
Here such bytes are replaced (U+FFFD), so the message still reaches its handler, which refuses
and counts it like any bad input; a message that still cannot be built is dropped with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

logger = logging.getLogger(__name__)


class TolerantClient(NATS):
    """`nats.aio.client.Client` whose read loop survives undecodable messages."""

    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        try:
            return super()._build_message(sid, subject, reply, data, headers)
        except UnicodeDecodeError:
            return super()._build_message(sid, _utf8(subject), _utf8(reply), data, headers)

    async def _process_headers(self, headers: bytes | None) -> dict[str, str] | None:
        try:
            return await super()._process_headers(headers)
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            logger.warning("nats: ignored the unreadable headers of a message: %s", exc)
            return None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:  # anything raised here would end nats-py's read loop
            logger.warning("nats: dropped a message on %r that could not be read: %r", subject[:100], exc)


def _utf8(raw: bytes) -> bytes:
    return raw.decode(errors="replace").encode()


async def connect(servers: str | list[str], **options: Any) -> TolerantClient:
    """`nats.connect`, returning a `TolerantClient`."""
    nc = TolerantClient()
    await nc.connect(servers, **options)
    return nc
