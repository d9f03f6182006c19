"""Find where a notification goes (msgService and user nodes above the rule), deliver it through
every service concurrently, and record each delivery as a `notification` point on the rule.

Lookups go through the API at send time rather than being cached: notifications are rare, and a
fresh read means a changed email address or webhook URL applies to the very next message.
"""

from __future__ import annotations

import asyncio
import logging

from siot.client import BaseClient, NodeInfo
from siot.nodes.config import try_decode_config
from siot.nodes.notify.config import MsgServiceConfig, UserConfig
from siot.nodes.notify.deliver import DeliveryResult, deliver
from siot.nodes.notify.message import Notification
from siot.nodes.notify.transports import DeliveryFailed
from siot.points import Point

logger = logging.getLogger(__name__)

MSG_SERVICE = "msgService"
USER = "user"
NOTIFICATION = "notification"


async def find_upward(client: BaseClient, node: str, node_type: str) -> list[NodeInfo]:
    """Nodes of `node_type` that are children of any ancestor of `node`, nearest first, each once."""
    found: dict[str, NodeInfo] = {}
    seen = {node}
    level = [p.parent for p in await client.nodes("all", node)]
    while level:
        next_level: list[str] = []
        for ancestor in level:
            if ancestor in seen or ancestor == "root":
                continue
            seen.add(ancestor)
            for child in await client.children(ancestor, type=node_type):
                found.setdefault(child.id, child)
            next_level += [p.parent for p in await client.nodes("all", ancestor)]
        level = next_level
    return list(found.values())


class Notifier:
    """Sends notifications for the rules manager, on its client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        # Deliveries (one per service a notification went through) that succeeded, and those
        # that failed after their retries plus notifications that found no service to go
        # through: `siot.stats` (`rules`) and /metrics.
        self.sent = 0
        self.failed = 0

    async def send(
        self, *, rule: str, origin: str, service_id: str, note: Notification
    ) -> list[DeliveryResult]:
        """Deliver `note` through `service_id` (or every msgService above the rule when blank).

        Raises `DeliveryFailed` when there is no usable service, or when every delivery failed,
        so the action gets an `error` point; each attempt is recorded either way.
        """
        if service_id:
            services = [await self.client.get_node(service_id, deleted=False)]
        else:
            services = await find_upward(self.client, rule, MSG_SERVICE)
        recipients = []
        for user in await find_upward(self.client, rule, USER):
            config, _ = try_decode_config(UserConfig, user.points)
            # A login name is not an address: the first admin is "admin" unless
            # SIOT_ADMIN_EMAIL says otherwise (docs/users.md).
            if config is not None and "@" in config.email:
                recipients.append(config.email)
        jobs = []
        config_errors = []
        for service in services:
            config, error = try_decode_config(MsgServiceConfig, service.points)
            if config is None:
                config_errors.append(f"msgService {service.id}: {error}")
            elif not config.disabled:
                to = list(dict.fromkeys([*recipients, *config.to.values()]))
                jobs.append(deliver(service.id, config, to, note))
        if not jobs:
            self.failed += 1
            raise DeliveryFailed(
                "; ".join(config_errors) or "no msgService node found above the rule", permanent=True
            )
        results = list(await asyncio.gather(*jobs))
        ok = sum(r.ok for r in results)
        self.sent += ok
        self.failed += len(results) - ok
        await self.client.send_points(rule, [self._record(r, note, origin) for r in results])
        if not any(r.ok for r in results):
            raise DeliveryFailed("; ".join(r.error for r in results), permanent=True)
        return results

    @staticmethod
    def _record(result: DeliveryResult, note: Notification, origin: str) -> Point:
        """The alert log entry: one `notification` point per delivery, keyed by service."""
        return Point(
            NOTIFICATION,
            {
                "service": result.service,
                "kind": result.kind,
                "to": list(result.to),
                "ok": result.ok,
                "attempts": result.attempts,
                "error": result.error,
                "node": note.node,
                "point": note.point,
                "value": note.value,
                "message": note.text,
            },
            key=result.service,
            origin=origin,
        )
