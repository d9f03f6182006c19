"""Users (siot/users.py, docs/users.md) against real daemons: a password is hashed before the
merge on every path and found nowhere in the SQLite files nor the log; the first admin; the CLI;
bad fields refused with clear errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from support import SiotProcess, run_siot, serve_config, stop_all, without_rules
from sync_support import connect, start, until, upstream_settled

from siot.app import App
from siot.errors import InvalidInput, RequestFailed
from siot.passwords import hash_password, is_password_hash, verify_password
from siot.points import Point
from siot.store import Store, StoreConfig
from siot.sync.apply import apply_rows
from siot.sync.protocol import SyncRow
from siot.users import (
    INITIAL_PASSWORD_FILE,
    PASSWORD_HASH,
    USER_TYPE,
    attach,
    find_user_by_email,
    user_by_id,
)

ADMIN_ENV = {"SIOT_ADMIN_EMAIL": "Boss@Example.com", "SIOT_ADMIN_PASSWORD": "env-Secret-0001"}


def files_holding(data_dir: Path, secrets: list[str]) -> list[str]:
    """Which files under `data_dir` (SQLite file and WAL, nats state, the log) hold which secret."""
    found = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            found += [f"{path.name}: {s}" for s in secrets if s.encode() in content]
    return found


def password_hash_of(points: list[Point]) -> str:
    assert not [p for p in points if p.type == "password"]
    (hashed,) = [p.value for p in points if p.type == PASSWORD_HASH and not p.deleted]
    assert isinstance(hashed, str) and is_password_hash(hashed)
    return hashed


async def test_passwords_are_hashed_over_nats_and_import_and_never_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await start(SiotProcess(data_dir=data, env=ADMIN_ENV))
    secrets = [ADMIN_ENV["SIOT_ADMIN_PASSWORD"], "nats-Secret-0002", "nats-Secret-0003", "yaml-Secret-0004"]
    try:
        client = await connect(proc)
        # the admin from the environment, hashed like any other
        (admin,) = [n for n in await client.children(client.root_id) if n.type == USER_TYPE]
        assert admin.value("email") == "Boss@Example.com" and admin.value("role") == "admin"
        assert verify_password(password_hash_of(admin.points), secrets[0])
        assert not (data / INITIAL_PASSWORD_FILE).exists()

        user = await client.create_node(
            client.root_id,
            USER_TYPE,
            [Point("email", "ada@example.com"), Point("role", "edit"), Point("password", secrets[1])],
        )
        first = password_hash_of((await client.get_node(user)).points)
        assert verify_password(first, secrets[1]) and not verify_password(first, "wrong")
        await client.send_points(user, [Point("password", secrets[2])])
        second = password_hash_of((await client.get_node(user)).points)
        assert verify_password(second, secrets[2]) and not verify_password(second, secrets[1])
        history = await client.history(user)
        assert {p.type for p in history} == {"email", "role", PASSWORD_HASH}

        # bad fields are refused whole, with the point and field named, never quoting a password
        with pytest.raises(RequestFailed, match=r"field 'value': role must be one of view, edit, admin"):
            await client.send_points(user, [Point("role", "root"), Point("firstName", "Ada")])
        with pytest.raises(RequestFailed, match="passwordHash must be an argon2id hash") as refused:
            await client.send_points(user, [Point(PASSWORD_HASH, "not-a-Secret-hash")])
        assert "not-a-Secret-hash" not in str(refused.value)
        with pytest.raises(RequestFailed, match="a password must be a non-empty string"):
            await client.send_points(user, [Point("password", "")])
        with pytest.raises(RequestFailed, match="point of the user node, not of its edge"):
            await client.send_edge_points(user, client.root_id, [Point("password", "edge-Secret")])
        assert (await client.get_node(user)).value("firstName") is None
        # a valid hash (an export being imported) is taken as it is
        imported_hash = hash_password("hash-Secret-0005")
        await client.send_points(user, [Point(PASSWORD_HASH, imported_hash)])
        assert password_hash_of((await client.get_node(user)).points) == imported_hash
        # another node type's password (an SMTP login) is none of users' business
        notify = await client.create_node(client.root_id, "notify", [Point("password", "smtp-pw")])
        assert (await client.get_node(notify)).value("password") == "smtp-pw"

        # YAML import with a password point; an export holds only hashes and imports back
        doc = {"type": USER_TYPE, "points": {"email": "yaml@example.com", "password": secrets[3]}}
        run_siot(proc.url, "import", stdin=yaml.safe_dump(doc))
        exported = run_siot(proc.url, "export").stdout
        assert PASSWORD_HASH in exported and not [s for s in secrets if s in exported]
        run_siot(proc.url, "import", stdin=exported)
        (yaml_user,) = [
            n for n in await client.children(client.root_id) if n.value("email") == "yaml@example.com"
        ]
        assert verify_password(password_hash_of(yaml_user.points), secrets[3])
        await client.close()
        assert files_holding(data, secrets) == []  # the db, its WAL and the log, while running
        assert files_holding(data, ["smtp-pw"])  # where the scan does find a stored value
    finally:
        proc.stop()
    assert files_holding(data, secrets) == []  # and after the last checkpoint


async def test_in_process_writes_are_hashed_and_found(tmp_path: Path) -> None:
    async with App(serve_config(tmp_path), node_clients=without_rules()) as app:
        assert app.context is not None and app.store is not None
        client, store = app.context.client, app.store
        node = await client.create_node(
            store.root_id,
            USER_TYPE,
            [
                Point("email", "Grace@Example.com"),
                Point("password", "local-Secret-1"),
                Point("lastName", "H"),
            ],
        )
        found = find_user_by_email(store, "  grace@example.COM ")
        assert found is not None and found == user_by_id(store, node)
        assert (found.email, found.last_name, found.role, found.parents) == (
            "Grace@Example.com",
            "H",
            "view",  # no role point: the least one
            (store.root_id,),
        )
        assert verify_password(found.password_hash, "local-Secret-1")
        await client.send_points(node, [Point("password", "local-Secret-2"), Point("role", "admin")])
        changed = user_by_id(store, node)
        assert changed is not None and changed.role == "admin"
        assert verify_password(changed.password_hash, "local-Secret-2")
        with pytest.raises(InvalidInput, match="role must be one of"):
            await client.send_points(node, [Point("role", "owner")])
        await client.delete_node(node, store.root_id)
        assert find_user_by_email(store, "grace@example.com") is None and user_by_id(store, node) is None
        assert user_by_id(store, store.root_id) is None  # not a user
    assert files_holding(tmp_path / "data", ["local-Secret-1", "local-Secret-2"]) == []


async def test_rows_from_a_sync_peer_are_hashed_too(tmp_path: Path) -> None:
    """A peer that sends a plain `password` row (one that stored it, unlike siot) does not get
    it stored here: sync's writes pass the same check in the store."""
    path = tmp_path / "siot.db"
    async with Store(StoreConfig(path=str(path), instance_id="here")) as store:
        await attach(store)
        rows = [
            SyncRow(1, "u1", "here", Point("nodeType", USER_TYPE, time=10), "peer", 1),
            SyncRow(2, "u1", "", Point("email", "sync@example.com", time=11), "peer", 2),
            SyncRow(3, "u1", "", Point("password", "sync-Secret-1", time=12), "peer", 3),
        ]
        applied = await apply_rows(store, rows, via="peer", fallback_instance="peer")
        assert (applied.refused, applied.changed) == (0, 3)
        found = find_user_by_email(store, "SYNC@example.com")
        assert found is not None and verify_password(found.password_hash, "sync-Secret-1")
    assert files_holding(tmp_path, ["sync-Secret-1"]) == []


async def test_a_refused_edge_write_leaves_no_node_behind(tmp_path: Path) -> None:
    """A user node created with its password as an edge point is refused whole: the tree (which
    the store updates as it checks each write) does not keep the edge the file never got."""
    async with Store(StoreConfig(path=str(tmp_path / "siot.db"), instance_id="here")) as store:
        await attach(store)
        with pytest.raises(InvalidInput, match="password"):
            await store.submit(
                "u1", [Point("nodeType", USER_TYPE), Point("password", "edge-Secret-1")], parent="here"
            )
        assert not store.tree.has_node("u1")
        await store.submit("u1", [Point("nodeType", USER_TYPE)], parent="here")  # and it can be made
        assert store.tree.node_type("u1") == USER_TYPE


async def test_sync_ships_only_the_hash(tmp_path: Path) -> None:
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    edge = await start(
        SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
    )
    try:
        edge_client, cloud_client = await connect(edge), await connect(cloud)
        await until(lambda: upstream_settled(edge_client))
        user = await edge_client.create_node(
            "edge-1", USER_TYPE, [Point("email", "field@example.com"), Point("password", "sync-Secret-2")]
        )

        async def cloud_hash() -> str | None:
            found = await cloud_client.nodes("all", user) if user in await _cloud_nodes() else []
            return found[0].value(PASSWORD_HASH) if found else None

        async def _cloud_nodes() -> set[str]:
            return {n.id for n in await cloud_client.children("edge-1")}

        first = await until(cloud_hash)
        assert verify_password(first, "sync-Secret-2")
        await edge_client.send_points(user, [Point("password", "sync-Secret-3")])
        second = await until(lambda: _changed(cloud_hash, first))
        assert verify_password(second, "sync-Secret-3")
        await edge_client.close()
        await cloud_client.close()
        for data in (tmp_path / "cloud", tmp_path / "edge"):
            assert files_holding(data, ["sync-Secret-2", "sync-Secret-3"]) == []
    finally:
        stop_all(edge, cloud)


async def _changed(read, old: str) -> str | None:  # type: ignore[no-untyped-def]
    new = await read()
    return new if new and new != old else None


async def test_first_start_makes_a_random_admin_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await start(SiotProcess(data_dir=data))
    try:
        password_file = data / INITIAL_PASSWORD_FILE
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 20
        assert proc.log_path is not None
        assert proc.log_path.read_text().count(password) == 1  # logged once, where it says so
        client = await connect(proc)
        (admin,) = [n for n in await client.children(client.root_id) if n.type == USER_TYPE]
        assert (admin.value("email"), admin.value("role")) == ("admin", "admin")
        assert verify_password(password_hash_of(admin.points), password)
        await client.close()
        proc.stop()
        await start(proc)  # a restart with a user makes none
        client = await connect(proc)
        users = [n for n in await client.children(client.root_id) if n.type == USER_TYPE]
        assert [u.id for u in users] == [admin.id]
        assert password_file.read_text().strip() == password
        assert proc.log_path.read_text().count(password) == 1
        assert proc.log_path.read_text().count("created the admin user") == 1  # the log is appended to
        await client.close()
        # the SQLite files hold only the hash (the password file, made for the operator, does)
        assert files_holding(data, [password]) == [
            f"{INITIAL_PASSWORD_FILE}: {password}",
            f"siot.log: {password}",
        ]
    finally:
        proc.stop()


def test_user_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = SiotProcess(data_dir=data, env=ADMIN_ENV).start()
    try:
        url = proc.url
        group = run_siot(url, "add", "root", "group").stdout.strip()
        user = run_siot(
            url,
            "user",
            "add",
            "Ada@Example.com",
            "--role",
            "edit",
            "--parent",
            group,
            "--first-name",
            "Ada",
            "--password-stdin",
            stdin="cli-Secret-1\n",
        ).stdout.strip()
        again = run_siot(url, "user", "add", "ada@example.com", "--password-stdin", stdin="x\n", ok=False)
        assert again.returncode == 1 and "exists already" in again.stderr
        bad = run_siot(
            url, "user", "add", "eve@example.com", "--role", "root", "--password-stdin", stdin="x\n", ok=False
        )
        assert bad.returncode == 2 and "'root' is not one of 'view', 'edit', 'admin'" in bad.stderr
        empty = run_siot(url, "user", "add", "eve@example.com", "--password-stdin", stdin="\n", ok=False)
        assert empty.returncode == 1 and "the password is empty" in empty.stderr

        listed = json.loads(run_siot(url, "user", "list", "--json").stdout)
        by_email = {row["email"]: row for row in listed}
        assert set(by_email) == {"Boss@Example.com", "Ada@Example.com"}
        assert by_email["Ada@Example.com"] == {
            "id": user,
            "email": "Ada@Example.com",
            "role": "edit",
            "firstName": "Ada",
            "lastName": "",
            "parents": [group],
        }
        assert "Ada@Example.com\tedit\tAda\t" in run_siot(url, "user", "list").stdout

        def hash_of(node: str) -> str:
            points = json.loads(run_siot(url, "get", node, "--json").stdout)["points"]
            return next(p["value"] for p in points if p["type"] == PASSWORD_HASH)

        assert verify_password(hash_of(user), "cli-Secret-1")
        run_siot(url, "user", "passwd", "ADA@example.com", "--password-stdin", stdin="cli-Secret-2\n")
        assert verify_password(hash_of(user), "cli-Secret-2")
        missing = run_siot(
            url, "user", "passwd", "nobody@example.com", "--password-stdin", stdin="x\n", ok=False
        )
        assert (
            missing.returncode == 1 and "no user with the email or id 'nobody@example.com'" in missing.stderr
        )

        run_siot(url, "user", "rm", user)
        assert [row["email"] for row in json.loads(run_siot(url, "user", "list", "--json").stdout)] == [
            "Boss@Example.com"
        ]
        assert files_holding(data, ["cli-Secret-1", "cli-Secret-2"]) == []
    finally:
        proc.stop()
    assert files_holding(data, ["cli-Secret-1", "cli-Secret-2"]) == []
