"""Helpers of the HTTP tests: a `siot serve` with HTTP and a known admin, and a small client that
checks each answer's status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from support import SiotProcess, free_port, running

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"


@contextmanager
def http_daemon(data_dir: Path, *extra_args: str) -> Iterator[SiotProcess]:
    """`siot serve` with HTTP on a free port and ADMIN_EMAIL as its first admin."""
    env = {"SIOT_ADMIN_EMAIL": ADMIN_EMAIL, "SIOT_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with running(data_dir, http_port=free_port(), env=env, extra_args=list(extra_args)) as proc:
        yield proc


class Http:
    """An aiohttp session on one daemon; `call` asserts the status and returns the JSON body."""

    def __init__(self, session: aiohttp.ClientSession, token: str | None = None) -> None:
        self.session = session
        self.token = token

    def as_user(self, token: str) -> Http:
        return Http(self.session, token)

    @property
    def user_id(self) -> str:
        assert self.token
        return jwt.decode(self.token, options={"verify_signature": False})["sub"]

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        status: int = 200,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {"headers": self.headers(headers)}
        if json_body is not None:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"]["Content-Type"] = "application/json"
        async with self.session.request(method, path, **kwargs) as resp:
            text = await resp.text()
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            body = json.loads(text) if text else None
            if status >= 400:
                assert set(body) == {"error"} and body["error"], body
            return body

    async def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Http:
        answer = await self.call("POST", "/v1/auth", json_body={"email": email, "password": password})
        return self.as_user(answer["token"])

    async def root_id(self) -> str:
        """The instance root: the admin's parent."""
        return (await self.call("GET", f"/v1/nodes/{self.user_id}"))["parent"]

    async def create(self, parent: str, node_type: str, points: list[dict[str, Any]] | None = None) -> str:
        body = {"parent": parent, "type": node_type, "points": points or []}
        return (await self.call("POST", "/v1/nodes", 201, json_body=body))["id"]

    async def add_user(self, parent: str, email: str, role: str, password: str = "pw-" + "x" * 8) -> Http:
        """Create a user under `parent` (as this admin) and log it in."""
        points = [
            {"type": "email", "value": email},
            {"type": "role", "value": role},
            {"type": "password", "value": password},
        ]
        await self.create(parent, "user", points)
        return await Http(self.session).login(email, password)


@asynccontextmanager
async def http_session(proc: SiotProcess) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{proc.http_port}") as session:
        yield Http(session)


class EventReader:
    """Server-Sent Events from an open response: `next()` is the next event as a dict with its
    `id` (or None), `event` and decoded `data`; comments are skipped."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout_s: float = 10.0) -> dict[str, Any]:
        fields: dict[str, Any] = {"id": None, "event": None, "data": None}
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await self.resp.content.readline()).decode()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if not line:
                    if fields["data"] is not None:
                        return fields
                    fields = {"id": None, "event": None, "data": None}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                if name == "data":
                    fields["data"] = json.loads(value)
                elif name == "id":
                    fields["id"] = int(value)
                elif name == "event":
                    fields["event"] = value
