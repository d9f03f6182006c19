"""Users, roles and scope over HTTP (DESIGN §10), and the life of a token: a user of one group
refused another group's nodes (read, write, stream), a `view` user refused writes, users managed
only by admins, tokens revoked by a password change or the user's deletion, expired tokens, and
the login rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from http_support import ADMIN_EMAIL, Http, http_daemon, http_session
from support import SiotProcess


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiotProcess]:
    with http_daemon(tmp_path_factory.mktemp("access") / "data") as proc:
        yield proc


@pytest.fixture
async def admin(daemon: SiotProcess) -> AsyncIterator[Http]:
    async with http_session(daemon) as http:
        yield await http.login()


def pt(ptype: str, value: object) -> dict[str, object]:
    return {"type": ptype, "value": value}


async def two_groups(admin: Http) -> tuple[str, str, str, str]:
    """Groups A and B under the root, each with a device."""
    root = await admin.root_id()
    group_a, group_b = await admin.create(root, "group"), await admin.create(root, "group")
    return group_a, group_b, await admin.create(group_a, "device"), await admin.create(group_b, "device")


async def test_a_user_of_one_group_is_refused_the_other_groups_nodes(admin: Http) -> None:
    group_a, group_b, dev_a, dev_b = await two_groups(admin)
    editor = await admin.add_user(group_a, "editor-a@example.com", "edit")
    assert (await editor.call("GET", f"/v1/nodes/{dev_a}"))["id"] == dev_a
    assert [c["id"] for c in (await editor.call("GET", f"/v1/nodes/{group_a}/children"))["nodes"]] == sorted(
        [dev_a, editor.user_id]
    )
    await editor.call("POST", f"/v1/nodes/{dev_a}/points", json_body=pt("temp", 1))

    for path in (f"/v1/nodes/{dev_b}", f"/v1/nodes/{group_b}/children", f"/v1/nodes/{dev_b}/history"):
        assert "outside your scope" in (await editor.call("GET", path, 403))["error"]
    await editor.call("POST", f"/v1/nodes/{dev_b}/points", 403, json_body=pt("temp", 1))
    await editor.call("POST", "/v1/nodes", 403, json_body={"parent": group_b, "type": "device"})
    await editor.call("DELETE", f"/v1/nodes/{dev_b}", 403)
    await editor.call("POST", f"/v1/nodes/{dev_a}/move", 403, json_body={"from": group_a, "to": group_b})
    # a node that does not exist is as refused as one of another group: nothing leaks
    assert (await editor.call("GET", "/v1/nodes/no-such-node", 403))["error"] == (
        "node 'no-such-node' is outside your scope"
    )
    await editor.call("GET", f"/v1/stream?node={group_b}", 403)
    await editor.call("GET", f"/v1/nodes/{await admin.root_id()}", 403)
    # nor may it cut its own group off the tree
    await editor.call("DELETE", f"/v1/nodes/{group_a}", 403)

    # within its group an editor creates, moves and deletes
    sub = await editor.create(group_a, "group")
    assert await editor.call("POST", f"/v1/nodes/{dev_a}/move", json_body={"from": group_a, "to": sub}) == {
        "ok": True
    }
    assert await editor.call("DELETE", f"/v1/nodes/{dev_a}") == {"ok": True}


async def test_a_view_user_reads_but_is_refused_writes(admin: Http) -> None:
    group_a, _, dev_a, _ = await two_groups(admin)
    viewer = await admin.add_user(group_a, "viewer-a@example.com", "view")
    assert (await viewer.call("GET", f"/v1/nodes/{dev_a}"))["id"] == dev_a
    await viewer.call("GET", f"/v1/nodes/{dev_a}/history")
    refused = await viewer.call("POST", f"/v1/nodes/{dev_a}/points", 403, json_body=pt("t", 1))
    assert refused["error"] == "writing points needs the role 'edit' or above; yours is 'view'"
    await viewer.call("POST", "/v1/nodes", 403, json_body={"parent": group_a, "type": "device"})
    await viewer.call("DELETE", f"/v1/nodes/{dev_a}", 403)
    sub = await admin.create(group_a, "group")
    await viewer.call("POST", f"/v1/nodes/{dev_a}/move", 403, json_body={"from": group_a, "to": sub})
    # its own password it may change; its role it may not
    await viewer.call("POST", f"/v1/nodes/{viewer.user_id}/points", 403, json_body=pt("role", "admin"))
    await viewer.call("POST", f"/v1/nodes/{viewer.user_id}/points", json_body=pt("password", "new-pw-1"))
    await viewer.call("GET", f"/v1/nodes/{dev_a}", 401)  # its token went with the old password
    await Http(viewer.session).login("viewer-a@example.com", "new-pw-1")


async def test_only_admins_manage_users_and_only_in_their_scope(admin: Http) -> None:
    group_a, group_b, _, _ = await two_groups(admin)
    editor = await admin.add_user(group_a, "editor-u@example.com", "edit")
    group_admin = await admin.add_user(group_a, "admin-a@example.com", "admin")
    user = {"parent": group_a, "type": "user", "points": [{"type": "email", "value": "x@example.com"}]}
    assert "managing users" in (await editor.call("POST", "/v1/nodes", 403, json_body=user))["error"]
    await editor.call("POST", f"/v1/nodes/{group_admin.user_id}/points", 403, json_body=pt("role", "view"))
    await editor.call("DELETE", f"/v1/nodes/{group_admin.user_id}", 403)
    made = await group_admin.call("POST", "/v1/nodes", 201, json_body=user)
    await group_admin.call("POST", f"/v1/nodes/{made['id']}/points", json_body=pt("role", "edit"))
    await group_admin.call("POST", "/v1/nodes", 403, json_body={**user, "parent": group_b})
    # a bad role is the write path's 400, named
    bad = await group_admin.call("POST", f"/v1/nodes/{made['id']}/points", 400, json_body=pt("role", "god"))
    assert "role must be one of" in bad["error"]


async def test_password_change_and_deletion_revoke_tokens(admin: Http) -> None:
    group_a, _, dev_a, _ = await two_groups(admin)
    user = await admin.add_user(group_a, "revoked@example.com", "edit", password="first-pass")
    await user.call("GET", f"/v1/nodes/{dev_a}")
    await admin.call("POST", f"/v1/nodes/{user.user_id}/points", json_body=pt("password", "second"))
    assert "password changed" in (await user.call("GET", f"/v1/nodes/{dev_a}", 401))["error"]
    await Http(user.session).call(
        "POST", "/v1/auth", 401, json_body={"email": "revoked@example.com", "password": "first-pass"}
    )
    again = await Http(user.session).login("revoked@example.com", "second")
    await again.call("GET", f"/v1/nodes/{dev_a}")
    await admin.call("DELETE", f"/v1/nodes/{user.user_id}")
    assert "no longer exists" in (await again.call("GET", f"/v1/nodes/{dev_a}", 401))["error"]


async def test_a_stream_ends_when_its_token_is_revoked(admin: Http) -> None:
    group_a, _, _, _ = await two_groups(admin)
    user = await admin.add_user(group_a, "streamer@example.com", "view")
    async with user.session.get("/v1/stream", headers=user.headers()) as resp:
        assert resp.status == 200
        await admin.call("POST", f"/v1/nodes/{user.user_id}/points", json_body=pt("password", "p2"))
        # the change of its own user node wakes the stream, which finds the token revoked
        async with asyncio.timeout(30):
            while await resp.content.readline():
                pass


def test_expired_tokens_and_the_login_rate_limit(tmp_path: Path) -> None:
    with http_daemon(tmp_path / "data", "--token-ttl", "1") as proc:
        asyncio.run(expire_and_limit(proc))


async def expire_and_limit(proc: SiotProcess) -> None:
    async with http_session(proc) as http:
        admin = await http.login()
        root = await admin.root_id()
        await asyncio.sleep(2.1)
        assert "expired" in (await admin.call("GET", f"/v1/nodes/{root}", 401))["error"]
        wrong = {"email": ADMIN_EMAIL, "password": "wrong"}
        for _ in range(10):  # the account's limit
            await http.call("POST", "/v1/auth", 401, json_body=wrong)
        async with http.session.post("/v1/auth", json=wrong) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) > 0
            assert "too many failed logins" in (await resp.json())["error"]
        # the right password is refused too while the account is held: guessing gains nothing
        await http.call("POST", "/v1/auth", 429, json_body={"email": ADMIN_EMAIL, "password": "x"})
        for n in range(10):  # other accounts from the same address, up to the address's limit
            await http.call(
                "POST", "/v1/auth", 401, json_body={"email": f"u{n}@example.com", "password": "x"}
            )
        await http.call("POST", "/v1/auth", 429, json_body={"email": "fresh@example.com", "password": "x"})
