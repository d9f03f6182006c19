"""The HTTP server's wiring: `siot serve --http-port` listens, `/healthz` says ready, refusals by
the router are `{"error"}` JSON, a taken port is a clear start-up error."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support import SIOT_BIN, SiotProcess, free_port, running


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[SiotProcess]:
    """`siot serve` with HTTP on a free port (started outside the test's loop: its start waits
    with asyncio.run)."""
    with running(tmp_path / "data", http_port=free_port()) as proc:
        yield proc


async def test_healthz_and_router_errors_are_json(daemon: SiotProcess) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.http_port}") as http:
        async with http.get("/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True}
        async with http.get("/nope") as resp:
            assert resp.status == 404
            assert "no endpoint GET /nope" in (await resp.json())["error"]
        async with http.post("/healthz") as resp:
            assert resp.status == 405
            assert "allowed: GET" in (await resp.json())["error"]


def test_http_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--data", str(tmp_path), "--nats-port", str(free_port()), "--monitor-port", "0"]
        result = subprocess.run(
            [SIOT_BIN, *args, "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
    assert "--http-port" in result.stderr


def test_serve_process_has_no_http_by_default(tmp_path: Path) -> None:
    assert SiotProcess(data_dir=tmp_path).http_port == 0
