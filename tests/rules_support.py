"""Helpers for the rules tests: building rule trees, waiting for committed points, and the real
SMTP (aiosmtpd) and HTTP servers notifications are delivered to."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from support import free_port

from siot.client import Client
from siot.points import Point

WAIT_S = 15.0


def points_of(fields: dict[str, Any]) -> list[Point]:
    """{"pointType": "humidity", "weekday": {"5": True}} -> points (dict values become keyed points)."""
    out = []
    for name, value in fields.items():
        if isinstance(value, dict):
            out += [Point(name, v, key=k) for k, v in value.items()]
        else:
            out.append(Point(name, value))
    return out


async def make_rule(
    client: Client,
    parent: str,
    description: str,
    conditions: list[dict[str, Any]],
    actions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    inactive_actions: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[str, list[str], list[str]]:
    """Create a rule with its children; conditions first, so the rule is complete before its
    actions exist. Returns (rule id, condition ids, action ids)."""
    rule = await client.create_node(parent, "rule", [Point("description", description)])
    conds = [await client.create_node(rule, "condition", points_of(c)) for c in conditions]
    acts = [await client.create_node(rule, "action", points_of(a)) for a in actions]
    acts += [await client.create_node(rule, "actionInactive", points_of(a)) for a in inactive_actions]
    return rule, conds, acts


async def wait_point(
    client: Client, node: str, ptype: str, pred: Callable[[Any], bool], *, key: str = "0"
) -> Any:
    """Wait until the committed value of (node, ptype, key) satisfies `pred`; return it."""
    async with asyncio.timeout(WAIT_S), client.changes(node) as changes:
        info = await client.get_node(node)
        current = info.value(ptype, key)
        if current is not None and pred(current):
            return current
        async for change in changes:
            if change.node != node or change.parent is not None:
                continue
            for p in change.points:
                if p.type == ptype and p.key == key and not p.deleted and pred(p.value):
                    return p.value
    raise AssertionError("unreachable")


async def wait_cleared(client: Client, node: str, ptype: str) -> None:
    """Wait until (node, ptype) is deleted (tombstoned)."""
    async with asyncio.timeout(WAIT_S), client.changes(node) as changes:
        if (await client.get_node(node)).value(ptype) is None:
            return
        async for change in changes:
            if change.node == node and any(p.type == ptype and p.deleted for p in change.points):
                return


@dataclass
class Mailbox:
    """Mail received by the loopback aiosmtpd server, handed to the test's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        message["X-Rcpt"] = ", ".join(envelope.rcpt_tos)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        return "250 OK"

    async def get(self) -> Message:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox(asyncio.get_running_loop())
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@dataclass
class Webhook:
    """A real HTTP server on loopback. Answers 503 to the first `fail_first` requests."""

    loop: asyncio.AbstractEventLoop
    fail_first: int = 0
    queue: asyncio.Queue[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=asyncio.Queue)
    requests: int = 0

    async def get(self) -> tuple[dict[str, str], dict[str, Any]]:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()


@contextmanager
def webhook_server(fail_first: int = 0) -> Iterator[tuple[Webhook, str]]:
    hook = Webhook(asyncio.get_running_loop(), fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.requests += 1
            if hook.requests <= hook.fail_first:
                self.send_response(503)
                self.end_headers()
                return
            hook.loop.call_soon_threadsafe(hook.queue.put_nowait, (dict(self.headers), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
