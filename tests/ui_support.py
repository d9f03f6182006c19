"""Support for the web UI's browser tests: Debian's Chromium driven by Playwright (nothing
downloaded: `executable_path` is the system's browser, found or installed by
siot.cmd.debian_packages, else the test fails with the install command), and a daemon with its
HTTP port on, users made over NATS.

Screenshots go to the test's tmp_path, and also to `$UI_SCREENSHOTS_DIR` when that is set (how
docs/screenshots/ is made: docs/ui.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Playwright

from siot.client import Client
from siot.cmd.debian_packages import require
from siot.points import Point

# Flags that work on the project's machines (a root user, no GPU, no network but loopback).
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the machine is shared; nothing here measures speed.
WAIT_MS = 15_000
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
SCREENSHOTS_ENV = "UI_SCREENSHOTS_DIR"


async def launch(playwright: Playwright) -> Browser:
    """Chromium from Debian's package, with a fresh profile (Playwright makes one per launch)."""
    return await playwright.chromium.launch(executable_path=require("chromium"), args=BROWSER_ARGS)


@dataclass
class Account:
    email: str
    password: str
    role: str
    id: str = ""


async def add_user(client: Client, parent: str, account: Account) -> Account:
    points = [Point("email", account.email), Point("role", account.role), Point("password", account.password)]
    account.id = await client.create_node(parent, "user", points)
    return account


async def login(page: Page, base_url: str, account: Account) -> None:
    await page.goto(base_url + "/")
    await page.fill("input[name=email]", account.email)
    await page.fill("input[name=password]", account.password)
    await page.click("button[type=submit]")
    await page.wait_for_selector("header.top", timeout=WAIT_MS)


async def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path))
    if target := os.environ.get(SCREENSHOTS_ENV):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; fail with its last answer."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {timeout_s} s (last: {last!r})")


async def point_is(client: Client, node: str, point_type: str, expected: Any) -> bool:
    """Whether the node's point has the value (and the type of value) expected."""
    value = await point_value(client, node, point_type)
    return value == expected and type(value) is type(expected)


async def point_value(client: Client, node: str, point_type: str) -> Any:
    info = await client.get_node(node)
    for p in info.points:
        if p.type == point_type and not p.deleted:
            return p.value
    return None
