"""The web UI in a real Chromium (Debian's, through Playwright) against a real `siot serve` with
its HTTP port on, NATS and SQLite real: login, the tree and its search, live values, editing,
forms, charts, CSV, a `view` user, a phone-sized screen, and the weight of the first load."""

from __future__ import annotations

import asyncio
import csv
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect
from rules_support import webhook_server
from support import SiotProcess, free_port
from ui_support import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    Account,
    add_user,
    launch,
    login,
    point_is,
    screenshot,
    until,
)

from siot.client import Client
from siot.points import Point

TREE_DEVICES = 1000
GROUPS = 10
WEEK_S = 7 * 86400
HISTORY_STEP_S = 60  # a week of one reading a minute: 10,080 points to bucket
MAX_CHART_POINTS = 1000
PAGE_BUDGET_BYTES = 300 * 1024


@dataclass
class Site:
    proc: SiotProcess
    base_url: str
    root: str
    group: str
    device: str  # a week of temp history
    admin: Account
    viewer: Account


async def seed(proc: SiotProcess) -> Site:
    async with await Client.connect(proc.url, reconnect_forever=False) as client:
        root = await client.load_root()
        await client.send_points(root, [Point("description", "greenhouse gateway")])
        admin = await add_user(client, root, Account("admin@example.com", "admin-pass-1", "admin"))
        groups = [
            await client.create_node(root, "group", [Point("description", f"greenhouse {g}")])
            for g in range(GROUPS)
        ]
        viewer = await add_user(client, groups[0], Account("viewer@example.com", "viewer-pass-1", "view"))

        async def device(i: int) -> str:
            points = [Point("description", f"soil sensor {i:04d}"), Point("humidity", 30.0 + i % 7)]
            return await client.create_node(groups[i % GROUPS], "device", points)

        devices = []
        for start in range(0, TREE_DEVICES, 50):
            devices += await asyncio.gather(*(device(i) for i in range(start, start + 50)))
        now = time.time_ns()
        readings = [
            Point("temp", round(20 + 4 * math.sin(k / 90), 3), time=now - k * HISTORY_STEP_S * 10**9)
            for k in range(WEEK_S // HISTORY_STEP_S)
        ]
        for start in range(0, len(readings), 2000):
            await client.send_points(devices[0], readings[start : start + 2000])
        return Site(proc, f"http://127.0.0.1:{proc.http_port}", root, groups[0], devices[0], admin, viewer)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One daemon for the module (seeding 1,000 devices and a week of history takes a while)."""
    proc = SiotProcess(data_dir=tmp_path_factory.mktemp("ui") / "data", http_port=free_port()).start()
    try:
        yield asyncio.run(seed(proc))
    finally:
        proc.stop()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture
async def client(site: Site) -> AsyncIterator[Client]:
    async with await Client.connect(site.proc.url, reconnect_forever=False) as c:
        yield c


async def new_page(browser: Browser, viewport: dict[str, int] = DESKTOP) -> Page:
    context = await browser.new_context(viewport=viewport, color_scheme="dark", accept_downloads=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


def node_url(site: Site, node: str, parent: str = "") -> str:
    return f"{site.base_url}/#/node/{node}" + (f"?parent={parent}" if parent else "")


async def test_login_wrong_password_reload_logout_and_expiry(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    page = await new_page(browser)
    await page.goto(site.base_url + "/")
    await page.fill("input[name=email]", site.admin.email)
    await page.fill("input[name=password]", "not the password")
    await page.click("button[type=submit]")
    alert = page.get_by_role("alert")
    await alert.wait_for(timeout=WAIT_MS)
    assert "Wrong email or password" in await alert.inner_text()
    await screenshot(page, tmp_path, "login-wrong-password")

    await login(page, site.base_url, site.admin)
    assert site.admin.email in await page.inner_text("header.top")
    await page.reload()  # the token is kept: still logged in
    await page.wait_for_selector("header.top", timeout=WAIT_MS)

    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_selector("text=You are logged out.", timeout=WAIT_MS)

    # A token the server no longer takes (expired, revoked, forged) sends the user to the login
    # page with a message saying so.
    await page.evaluate(
        "localStorage.setItem('siot.session',"
        " JSON.stringify({token: 'x.y.z', expires: '2100-01-01T00:00:00Z'}))"
    )
    await page.reload()
    await page.wait_for_selector("text=Your session expired. Log in again.", timeout=WAIT_MS)
    assert not page.errors  # type: ignore[attr-defined]


async def test_tree_search_among_1000_devices_by_keyboard(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    tree = page.get_by_role("tree")
    await tree.get_by_role("treeitem").first.wait_for(timeout=WAIT_MS)
    # Lazy rendering: a 1,000-node tree, all expanded, renders only the rows in view.
    await page.get_by_role("button", name="Expand").first.click()
    assert await tree.get_by_role("treeitem").count() < 60
    await screenshot(page, tmp_path, "tree")

    # Arrow keys move through the rows; Right expands, Left collapses.
    await tree.get_by_role("treeitem").first.get_by_role("link").focus()
    await page.keyboard.press("ArrowDown")
    await expect(page.locator("[data-row='1'] a")).to_be_focused()
    await page.keyboard.press("End")  # the last row, scrolled into view
    await expect(page.locator(":focus")).to_have_attribute("href", re.compile("#/node/"))
    await expect(page.locator("[data-row='0']")).to_have_count(0)  # rendered lazily: out of view
    await page.keyboard.press("Home")
    await expect(page.locator("[data-row='0'] a")).to_be_focused()

    search = page.get_by_role("searchbox", name="Search nodes")
    await search.fill("sensor 0777")
    await page.wait_for_selector("text=1 found", timeout=WAIT_MS)
    await search.press("Tab")  # the "show deleted" toggle
    await page.keyboard.press("Tab")  # the one result
    await page.keyboard.press("Enter")
    await page.wait_for_selector("h1:has-text('soil sensor 0777')", timeout=WAIT_MS)
    assert not page.errors  # type: ignore[attr-defined]


async def test_point_written_over_nats_appears_live(
    site: Site, browser: Browser, client: Client, tmp_path: Path
) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.goto(node_url(site, site.device, site.group))
    await page.wait_for_selector("text=● live", timeout=WAIT_MS)
    await client.send_points(site.device, [Point("moisture", 41.25)])
    row = page.locator("tr[data-point='moisture:0']")
    await row.wait_for(timeout=WAIT_MS)  # no reload
    assert "41.25" in await row.inner_text()
    await client.send_points(site.device, [Point("moisture", 42.5)])
    await page.wait_for_selector("tr[data-point='moisture:0'] >> text=42.5", timeout=WAIT_MS)
    await screenshot(page, tmp_path, "node")
    assert not page.errors  # type: ignore[attr-defined]


async def test_edit_point_is_seen_over_nats(site: Site, browser: Browser, client: Client) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.goto(node_url(site, site.device, site.group))
    await page.get_by_role("button", name="edit humidity:0").click()
    editor = page.locator("tr[data-point='humidity:0'] form")
    assert await editor.locator("select[name=kind]").input_value() == "float"
    await editor.locator("input[name=value]").fill("55.5")
    await editor.get_by_role("button", name="Save").click()
    await until(lambda: point_is(client, site.device, "humidity", 55.5))
    # A typed input: a float typed as a whole number stays a float; text is refused for a number.
    await page.get_by_role("button", name="edit humidity:0").click()
    await editor.locator("input[name=value]").fill("sixty")
    await editor.get_by_role("button", name="Save").click()
    await page.wait_for_selector("text='sixty' is not a number", timeout=WAIT_MS)
    await editor.locator("input[name=value]").fill("60")
    await editor.get_by_role("button", name="Save").click()
    await until(lambda: point_is(client, site.device, "humidity", 60.0))  # a float, not 60


async def test_add_rule_with_condition_and_action_through_the_form_and_see_it_fire(
    site: Site, browser: Browser, client: Client, tmp_path: Path
) -> None:
    device = await client.create_node(
        site.group, "device", [Point("description", "boiler"), Point("temp", 20.0)]
    )
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.goto(node_url(site, site.group))
    await page.get_by_role("button", name="Add child").click()
    form = page.get_by_role("form", name="Add a child node")
    await form.locator("select[name=childType]").select_option("rule")
    await form.locator("#f-new-description").fill("boiler too hot")
    await form.get_by_role("button", name="+ Condition").click()
    await form.locator("#f-c0-nodeID").fill(device)
    await form.locator("#f-c0-pointType").fill("temp")
    await form.locator("#f-c0-operator").select_option(">")
    await form.locator("#f-c0-value").fill("30")
    await form.get_by_role("button", name="+ Action").click()
    await form.locator("#f-a0-nodeID").fill(device)
    await form.locator("#f-a0-pointType").fill("alarm")
    await form.locator("#f-a0-value").fill("1")
    await screenshot(page, tmp_path, "add-rule")
    await form.get_by_role("button", name="Create rule").click()
    await page.wait_for_selector("text=Created.", timeout=WAIT_MS)

    await client.send_points(device, [Point("temp", 35.0)])
    await until(lambda: point_is(client, device, "alarm", 1))
    await page.goto(site.base_url + "/#/rules")
    rule = page.locator("article.rule", has_text="boiler too hot")
    await rule.locator(".rule-state .state.on").wait_for(timeout=WAIT_MS)
    await screenshot(page, tmp_path, "rules")
    assert not page.errors  # type: ignore[attr-defined]


async def test_week_chart_is_drawn_from_buckets_and_downloads_as_csv(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.goto(f"{site.base_url}/#/chart/{site.device}?p=temp:0&r=7d")
    chart = page.locator(".chart[data-points]")
    await chart.wait_for(timeout=WAIT_MS)
    await page.locator(".chart canvas").wait_for(timeout=WAIT_MS)
    drawn = int(await chart.get_attribute("data-points") or 0)
    # 10,080 readings in the week; the chart holds one point per bucket, at most ~1,000.
    assert 500 < drawn <= MAX_CHART_POINTS
    await screenshot(page, tmp_path, "chart")

    async with page.expect_download() as info:
        await page.get_by_role("button", name="Download CSV").click()
    download = await info.value
    path = tmp_path / download.suggested_filename
    await download.save_as(path)
    rows = list(csv.reader(path.open()))
    assert rows[0][:3] == ["time", "temp count", "temp min"]
    assert len(rows) - 1 == drawn
    assert sum(int(r[1]) for r in rows[1:]) >= WEEK_S // HISTORY_STEP_S - 2

    # A chosen range: the last two days but one, drawn from its own buckets.
    await page.get_by_role("button", name="Custom…").click()
    start, end = time.time() - 3 * 86400, time.time() - 86400
    await page.get_by_label("From").fill(time.strftime("%Y-%m-%dT%H:%M", time.localtime(start)))
    await page.get_by_label("To").fill(time.strftime("%Y-%m-%dT%H:%M", time.localtime(end)))
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_selector(".chart[data-every='5m']", timeout=WAIT_MS)
    assert 0 < int(await chart.get_attribute("data-points") or 0) <= MAX_CHART_POINTS
    assert "r=custom" in page.url
    assert not page.errors  # type: ignore[attr-defined]


async def test_view_user_sees_no_edit_controls_and_a_forged_write_is_refused(
    site: Site, browser: Browser
) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.viewer)
    await page.goto(node_url(site, site.device, site.group))
    await page.wait_for_selector("tr[data-point='temp:0']", timeout=WAIT_MS)
    for name in ("Add child", "Add point", "Move", "Mirror", "Delete"):
        assert await page.get_by_role("button", name=name, exact=True).count() == 0
    assert await page.get_by_role("button", name="edit temp:0").count() == 0
    assert await page.get_by_role("link", name="Users").count() == 0
    assert await page.get_by_role("link", name="Sync & health").count() == 0

    # What the UI hides, the API refuses: a write with the viewer's own token.
    token = await page.evaluate("JSON.parse(localStorage.getItem('siot.session')).token")
    async with aiohttp.ClientSession() as http:
        url = f"{site.base_url}/v1/nodes/{site.device}/points"
        reply = await http.post(
            url, json=[{"type": "temp", "value": 99.0}], headers={"Authorization": f"Bearer {token}"}
        )
        assert reply.status == 403, await reply.text()


async def test_phone_sized_screen(site: Site, browser: Browser, tmp_path: Path) -> None:
    page = await new_page(browser, PHONE)
    await login(page, site.base_url, site.admin)
    await page.get_by_role("tree").get_by_role("treeitem").first.wait_for(timeout=WAIT_MS)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await screenshot(page, tmp_path, "phone-tree")
    await page.goto(node_url(site, site.device, site.group))
    await page.wait_for_selector("tr[data-point='temp:0']", timeout=WAIT_MS)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert await page.get_by_role("button", name="Add child").is_visible()
    await screenshot(page, tmp_path, "phone-node")
    assert not page.errors  # type: ignore[attr-defined]


async def test_first_load_weight_compression_and_caching(site: Site, browser: Browser) -> None:
    page = await new_page(browser)
    responses = []
    page.on("response", lambda r: responses.append(r))
    await login(page, site.base_url, site.admin)
    await page.get_by_role("tree").get_by_role("treeitem").first.wait_for(timeout=WAIT_MS)
    files = [r for r in responses if not r.url.startswith(f"{site.base_url}/v1/")]
    assert any(r.url.endswith("/js/app.js") for r in files)
    transferred = 0
    for r in files:
        sizes = await r.request.sizes()
        transferred += sizes["responseBodySize"]
        if r.url.endswith((".js", ".mjs", ".css")) and sizes["responseBodySize"] > 1024:
            assert r.headers.get("content-encoding") == "gzip", r.url
            assert "immutable" in r.headers.get("cache-control", ""), r.url
    print(f"first load: {len(files)} files, {transferred} bytes transferred")
    assert transferred <= PAGE_BUDGET_BYTES, f"first load: {transferred} bytes"

    # The page itself is revalidated with its ETag: a 304 when nothing changed.
    async with aiohttp.ClientSession() as http:
        first = await http.get(site.base_url + "/")
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "no-cache"
        again = await http.get(site.base_url + "/", headers={"If-None-Match": etag})
        assert again.status == 304


async def test_users_admin_and_health_pages(
    site: Site, browser: Browser, client: Client, tmp_path: Path
) -> None:
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.get_by_role("link", name="Users").click()
    await page.get_by_role("button", name="Add user").click()
    form = page.get_by_role("form", name="Add a user")
    await form.locator("#f-user-email").fill("operator@example.com")
    await form.locator("#f-user-role").select_option("edit")
    await form.locator("#f-user-password").fill("operator-pass-1")
    await form.get_by_role("button", name="Add user").click()
    row = page.locator("tr[data-user='operator@example.com']")
    await row.wait_for(timeout=WAIT_MS)
    await row.get_by_role("combobox").select_option("view")
    await row.get_by_text("Role changed.").wait_for(timeout=WAIT_MS)
    await screenshot(page, tmp_path, "users")
    operator = Account("operator@example.com", "operator-pass-1", "view")
    await row.get_by_role("button", name="Reset password").click()
    await row.get_by_label("new password").fill("operator-pass-2")
    await row.get_by_role("button", name="Set").click()
    await row.get_by_text("Password reset.").wait_for(timeout=WAIT_MS)

    # The new password works, the role is the one set.
    other = await new_page(browser)
    operator.password = "operator-pass-2"
    await login(other, site.base_url, operator)
    assert "operator@example.com · view" in await other.inner_text("header.top")

    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Delete").click()  # confirm
    await row.wait_for(state="detached", timeout=WAIT_MS)

    # An upstream that does not answer: the peer shows with its state and its last error.
    dead = f"nats://127.0.0.1:{free_port()}"
    sync = await client.create_node(site.root, "sync", [Point("description", "cloud"), Point("uri", dead)])
    await page.get_by_role("link", name="Sync & health").click()
    await page.get_by_role("heading", name="Counters").wait_for(timeout=WAIT_MS)
    assert "acceptedPoints" in await page.inner_text("table.counters")
    peer = page.locator("table.peers tr", has_text="cloud")
    await peer.get_by_text("Connection refused").wait_for(timeout=WAIT_MS)
    assert "connecting" in await peer.inner_text()
    await screenshot(page, tmp_path, "health")
    await client.delete_node(sync, site.root)
    assert not page.errors  # type: ignore[attr-defined]


async def test_delete_undelete_move_and_mirror(site: Site, browser: Browser, client: Client) -> None:
    device = await client.create_node(site.group, "device", [Point("description", "pump 7")])
    other = await client.create_node(site.root, "group", [Point("description", "pump house")])
    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.goto(node_url(site, device, site.group))
    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
    await page.wait_for_selector("h1:has-text('greenhouse 0')", timeout=WAIT_MS)  # the parent's page
    await until(lambda: parents(client, device, deleted=True))

    # Deleted nodes show in the tree behind the toggle, with Undelete.
    await page.goto(site.base_url + "/#/")
    await page.get_by_role("searchbox", name="Search nodes").fill("pump 7")
    await page.wait_for_selector("text=0 found", timeout=WAIT_MS)
    await page.get_by_label("Show deleted").check()
    row = page.get_by_role("treeitem").filter(has_text="pump 7")
    await row.get_by_role("button", name="Undelete").click()
    await until(lambda: parents(client, device))

    await page.goto(node_url(site, device, site.group))
    await page.get_by_role("button", name="Mirror", exact=True).click()
    await page.get_by_role("searchbox").last.fill("pump house")
    await page.get_by_role("button", name="pump house group").click()
    await page.get_by_role("button", name="Mirror", exact=True).last.click()
    await until(lambda: _has(parents(client, device), {site.group, other}))

    await page.goto(node_url(site, device, other))
    await page.get_by_role("button", name="Move", exact=True).click()
    await page.get_by_role("searchbox").last.fill("greenhouse 1")
    await page.get_by_role("button", name="greenhouse 1 group").click()
    await page.get_by_role("button", name="Move", exact=True).last.click()
    greenhouse1 = next(n.id for n in await client.children(site.root) if n.description == "greenhouse 1")
    await until(lambda: _has(parents(client, device), {site.group, greenhouse1}))
    assert other not in await parents(client, device)
    assert not page.errors  # type: ignore[attr-defined]


async def parents(client: Client, node: str, *, deleted: bool = False) -> set[str]:
    """The node's parents over live edges, or over deleted ones."""
    return {n.parent for n in await client.nodes("all", node, deleted=True) if n.deleted == deleted}


async def _has(found: Awaitable[set[str]], expected: set[str]) -> bool:
    return await found == expected


async def test_change_own_password_and_several_points_on_one_chart(
    site: Site, browser: Browser, client: Client
) -> None:
    account = await add_user(client, site.group, Account("grower@example.com", "grower-pass-1", "view"))
    page = await new_page(browser)
    await login(page, site.base_url, account)
    await page.get_by_role("link", name="grower@example.com · view").click()
    form = page.get_by_role("form", name="Change your password")
    await form.get_by_label("New password").fill("grower-pass-2")
    await form.get_by_label("Again").fill("grower-pass-2")
    await form.get_by_role("button", name="Change password").click()
    await form.get_by_text("Password changed.").wait_for(timeout=WAIT_MS)
    account.password = "grower-pass-2"
    await page.reload()  # the new token was kept
    await page.wait_for_selector("header.top", timeout=WAIT_MS)

    await page.goto(f"{site.base_url}/#/chart/{site.device}?p=temp:0,humidity:0&r=24h")
    await page.locator(".chart canvas").wait_for(timeout=WAIT_MS)
    legend = page.locator(".chart .u-legend")
    assert "temp (mean)" in await legend.inner_text()
    assert "humidity (mean)" in await legend.inner_text()
    assert not page.errors  # type: ignore[attr-defined]


async def test_notification_log_is_a_table(
    site: Site, browser: Browser, client: Client, tmp_path: Path
) -> None:
    with webhook_server() as (hook, url):
        room = await client.create_node(site.root, "group", [Point("description", "tank room")])
        service = [Point("description", "ops webhook"), Point("service", "webhook"), Point("url", url)]
        webhook = await client.create_node(room, "msgService", service)
        tank = await client.create_node(room, "device", [Point("description", "tank"), Point("level", 10.0)])
        rule = await client.create_node(room, "rule", [Point("description", "tank low")])
        condition = [
            Point("nodeID", tank),
            Point("pointType", "level"),
            Point("operator", "<"),
            Point("value", 5),
        ]
        await client.create_node(rule, "condition", condition)
        action = [
            Point("action", "notify"),
            Point("nodeID", webhook),
            Point("value", "{node} is low: {value}"),
        ]
        await client.create_node(rule, "action", action)
        await client.send_points(tank, [Point("level", 3.0)])
        _headers, body = await hook.get()
        assert body["ruleDescription"] == "tank low"

    page = await new_page(browser)
    await login(page, site.base_url, site.admin)
    await page.get_by_role("link", name="Rules").click()
    row = page.locator("table.log tbody tr", has_text="tank low")
    await row.wait_for(timeout=WAIT_MS)
    text = await row.inner_text()
    assert "webhook" in text and "sent" in text and "is low: 3" in text
    card = page.locator("article.rule", has_text="tank low")
    assert "notify ops webhook" in await card.inner_text()
    await screenshot(page, tmp_path, "notifications")
    assert not page.errors  # type: ignore[attr-defined]


async def test_user_under_two_nodes_gets_both_live(site: Site, browser: Browser, client: Client) -> None:
    groups = {n.description: n.id for n in await client.children(site.root, type="group")}
    account = await add_user(client, groups["greenhouse 2"], Account("two@example.com", "two-pass-1", "view"))
    await client.send_edge_points(
        account.id, groups["greenhouse 3"], [Point("nodeType", "user"), Point("tombstone", 0)]
    )
    device = next(
        n.id for n in await client.children(groups["greenhouse 3"]) if n.description == "soil sensor 0003"
    )
    page = await new_page(browser)
    await login(page, site.base_url, account)
    tree = page.get_by_role("tree")
    # Two groups of 100 devices each, and the user itself.
    await page.wait_for_selector("text=203 nodes", timeout=WAIT_MS)
    await page.get_by_role("searchbox", name="Search nodes").fill("soil sensor 0003")
    row = tree.get_by_role("treeitem").filter(has_text="soil sensor 0003")
    await row.get_by_text("humidity").wait_for(timeout=WAIT_MS)
    await client.send_points(device, [Point("co2", 612)])
    await row.get_by_text("co2 612").wait_for(timeout=WAIT_MS)  # live, from the second root's stream
    assert not page.errors  # type: ignore[attr-defined]
