"""Deliver one notification through one service, retrying transient failures with capped,
jittered exponential backoff (the nats.py reconnect habit)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from siot.nodes.notify.config import MAX_BACKOFF_S, MsgServiceConfig, ServiceKind
from siot.nodes.notify.message import Notification
from siot.nodes.notify.transports import DeliveryFailed, post_webhook, send_email

logger = logging.getLogger(__name__)

BACKOFF_JITTER = 0.2


@dataclass(slots=True, frozen=True)
class DeliveryResult:
    service: str
    kind: str
    to: tuple[str, ...]
    ok: bool
    attempts: int
    error: str = ""


async def deliver(
    service_id: str, service: MsgServiceConfig, recipients: list[str], note: Notification
) -> DeliveryResult:
    """Send `note`; try up to 1 + `service.retries` times. Never raises for delivery problems:
    the result says what happened, so the caller can record it as a `notification` point."""
    if service.service is ServiceKind.SMTP and not recipients:
        return DeliveryResult(
            service_id, service.service, (), False, 0, "no recipients (no user email, no 'to')"
        )
    delay_s = service.backoff_s
    attempts = 0
    while True:
        attempts += 1
        try:
            if service.service is ServiceKind.SMTP:
                await asyncio.to_thread(send_email, service, recipients, note)
            else:
                await asyncio.to_thread(post_webhook, service, note)
        except DeliveryFailed as exc:
            if exc.permanent or attempts > service.retries:
                logger.error("notify: giving up on %s after %d attempt(s): %s", service_id, attempts, exc)
                return DeliveryResult(
                    service_id, service.service, tuple(recipients), False, attempts, str(exc)
                )
            logger.warning(
                "notify: %s attempt %d failed (%s); retrying in %.2f s", service_id, attempts, exc, delay_s
            )
            await asyncio.sleep(delay_s * (1 + random.random() * BACKOFF_JITTER))
            delay_s = min(max(delay_s * 2, 0.001), MAX_BACKOFF_S)
        else:
            logger.info(
                "notify: sent via %s (%s) to %s", service_id, service.service, recipients or service.url
            )
            return DeliveryResult(service_id, service.service, tuple(recipients), True, attempts)
