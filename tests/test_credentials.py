"""Device and edge credentials (issue 16, docs/security.md) against real processes: `siot serve`
with its nats-server, NATS clients (siot.Client, nats-py), MQTT clients (paho, mosquitto_pub).

A device's credential reaches its own subtree and nothing else; what is refused is refused by the
broker ("permissions violation") or by siot ("not allowed: ... outside the subtree"), and counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import msgpack
import nats
import paho.mqtt.client as paho
import pytest
from support import SIOT_BIN, SiotProcess, connected, free_port, serve_config
from sync_support import start, until

from siot import credfile
from siot.app import App
from siot.client import Client
from siot.cmd import debian_packages
from siot.codec import encode
from siot.errors import ConnectFailed, RequestFailed
from siot.points import Point

# Refusals the tests provoke: nats-server's lines are WARNINGs (counted); these are not errors.
MQTT_WAIT_S = 10.0


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[SiotProcess]:
    proc = SiotProcess(data_dir=tmp_path / "d", extra_args=["--mqtt-port", str(free_port())])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def mqtt_port(proc: SiotProcess) -> int:
    return int(proc.extra_args[proc.extra_args.index("--mqtt-port") + 1])


@asynccontextmanager
async def admin_of(proc: SiotProcess) -> AsyncIterator[Client]:
    async with connected(proc) as client:
        yield client


async def issue(admin: Client, node: str, **request: Any) -> credfile.Credential:
    reply = await admin.request("siot.cred.issue", encode({"node": node, **request}))
    assert set(reply) >= {"user", "secret", "node"}
    return credfile.Credential(reply["user"], reply["secret"], reply["node"])


async def device_client(proc: SiotProcess, credential: credfile.Credential, **options: Any) -> Client:
    return await Client.connect(
        proc.url, credential=credential, reconnect_forever=False, timeout_s=3, **options
    )


class Mqtt:
    """A paho client in its own thread: connect result, received messages, SUBACK codes."""

    def __init__(self, port: int, user: str, secret: str, client_id: str) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(user, secret)
        self.connected = threading.Event()
        self.answered = threading.Event()  # CONNACK, accepted or not
        self.refused: list[str] = []
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[list[str]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.append([str(c) for c in codes])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        if code.is_failure:
            self.refused.append(str(code))
        else:
            self.connected.set()
        self.answered.set()

    def subscribe(self, topic: str) -> str:
        count = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + MQTT_WAIT_S
        while len(self.subacks) == count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.subacks[-1][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def mqtt(port: int, credential: credfile.Credential, client_id: str) -> Iterator[Mqtt]:
    client = Mqtt(port, credential.user, credential.secret, client_id)
    try:
        client.answered.wait(MQTT_WAIT_S)
        assert client.connected.is_set(), client.refused
        yield client
    finally:
        client.close()


async def counted(admin: Client, counter: str, who: str, at_least: int) -> bool:
    """Whether siot.stats counts at least `at_least` broker refusals of `who` (nats-server's log
    is read as it comes, so a refusal is counted a moment after it happened)."""
    return (await admin.stats())["credentials"][counter].get(who, 0) >= at_least


async def value_of(admin: Client, node: str, ptype: str, want: Any) -> bool:
    return (await admin.get_node(node)).value(ptype) == want


# ---- a device over NATS ----


async def test_a_device_credential_reaches_its_subtree_and_nothing_else(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device", [Point("description", "A")])
        b = await admin.create_node(admin.root_id, "device", [Point("description", "B")])
        cred_a = await issue(admin, a)
        violations: list[str] = []

        async def on_error(exc: Exception) -> None:
            violations.append(str(exc))

        device = await device_client(instance, cred_a, error_cb=on_error)
        try:
            # its own points, a child, the child's points, its subtree, a setpoint sent to it
            await device.send_points(a, [Point("temperature", 21.5)])
            child = await device.create_node(a, "device", [Point("description", "probe")])
            await device.send_points(child, [Point("temperature", 4.0)])
            tree = await device.tree()
            assert tree.node.id == a and [c.node.id for c in tree.children] == [child]
            assert [p.value for p in await device.history(child, "temperature")] == [4.0]
            async with device.changes(a) as changes:
                await admin.send_points(a, [Point("setpoint", 19.0)])
                change = await asyncio.wait_for(changes.get(), 5)
                assert [(p.type, p.value) for p in change.points] == [("setpoint", 19.0)]

            # device B's node: refused by siot on the scoped subjects...
            refusals = [
                device.send_points(b, [Point("setpoint", 99)]),
                device.send_edge_points(b, a, [Point("nodeType", "device")]),  # adopting B
                device.send_edge_points(child, b, [Point("nodeType", "device")]),  # hanging under B
                device.get_node(b),
                device.children(b),
                device.history(b),
            ]
            for refusal in refusals:
                with pytest.raises(RequestFailed, match=r"not allowed: .*outside the subtree"):
                    await refusal
            # ... and by the broker on every other subject
            nc = device.nc
            for subject in (f"p.{b}", f"history.{b}", f"nodes.all.{b}", f"s.{b}.p.{b}", "siot.cred.issue"):
                with pytest.raises(nats.errors.TimeoutError):
                    await nc.request(subject, encode([]), timeout=0.5)
            await nc.subscribe(f"up.{b}.>")
            await nc.flush()
            await asyncio.sleep(0.2)
            assert any(f'publish to "p.{b}"' in v for v in violations)
            assert any(f'subscription to "up.{b}.>"' in v for v in violations)
            assert await value_of(admin, b, "setpoint", None)
            stats = (await admin.stats())["credentials"]
            assert stats["scopeRefused"] == {a: len(refusals)}
            await until(lambda: counted(admin, "permissionViolations", cred_a.user, 6))
        finally:
            await device.close()
    instance.stop()


async def test_replies_of_other_credentials_cannot_be_read(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        b = await admin.create_node(admin.root_id, "device")
        cred_a, cred_b = await issue(admin, a), await issue(admin, b)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        snoop = await nats.connect(instance.url, user=cred_a.user, password=cred_a.secret, error_cb=on_error)
        for inbox in ("_INBOX.>", f"_INBOX_{cred_b.user}.>", ">"):
            await snoop.subscribe(inbox)
        await snoop.flush()
        device_b = await device_client(instance, cred_b)
        assert (await device_b.get_node(b)).id == b  # its reply goes to its own inbox
        await asyncio.sleep(0.2)
        assert len([e for e in errors if "permissions violation for subscription" in e]) == 3
        await device_b.close()
        await snoop.close()


# ---- a device over MQTT ----


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_device_credential_over_mqtt(instance: SiotProcess, qos: int) -> None:
    port = mqtt_port(instance)
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        b = await admin.create_node(admin.root_id, "device")
        cred = await issue(admin, a)
        with mqtt(port, cred, "dev-a") as device:
            assert await asyncio.to_thread(device.subscribe, f"up/{a}/#") == f"Granted QoS {max(qos, 1)}"
            assert "Unspecified error" in await asyncio.to_thread(device.subscribe, f"up/{b}/#")
            ours = device.client.publish(f"p/{a}", json.dumps([{"type": "humidity", "value": 29.5}]), qos=qos)
            theirs = device.client.publish(f"p/{b}", json.dumps([{"type": "humidity", "value": 99}]), qos=qos)
            await asyncio.to_thread(ours.wait_for_publish, MQTT_WAIT_S)
            await asyncio.to_thread(theirs.wait_for_publish, MQTT_WAIT_S)
            await until(lambda: value_of(admin, a, "humidity", 29.5), 10)
            await admin.send_points(a, [Point("setpoint", 18)])  # a setpoint reaches the device
            await until(lambda: asyncio.sleep(0, [t for t, _ in device.messages if t == f"up/{a}/{a}"]), 10)
            await admin.send_points(b, [Point("marker", 1)])  # B's node: written only by the admin
            assert (await admin.get_node(b)).value("humidity") is None
        with pytest.raises(AssertionError):  # a wrong secret is refused at CONNECT
            with mqtt(port, credfile.Credential(cred.user, "wrong"), "dev-x"):
                pass
        # the SUBSCRIBE and the PUBLISH on B
        await until(lambda: counted(admin, "permissionViolations", "client dev-a", 2))


async def test_mosquitto_pub_with_a_device_credential(instance: SiotProcess) -> None:
    mosquitto_pub = debian_packages.require("mosquitto-clients")
    port = mqtt_port(instance)
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        b = await admin.create_node(admin.root_id, "device")
        cred = await issue(admin, a)

        def pub(node: str, secret: str, value: float) -> subprocess.CompletedProcess[str]:
            payload = json.dumps([{"type": "humidity", "value": value}])
            args = ["-h", "127.0.0.1", "-p", str(port), "-u", cred.user, "-P", secret, "-q", "1"]
            return subprocess.run(
                [mosquitto_pub, *args, "-t", f"p/{node}", "-m", payload],
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert (await asyncio.to_thread(pub, a, cred.secret, 31.0)).returncode == 0
        await until(lambda: value_of(admin, a, "humidity", 31.0), 10)
        await asyncio.to_thread(pub, b, cred.secret, 99.0)  # refused by the broker
        refused = await asyncio.to_thread(pub, a, "not-the-secret", 1.0)
        assert refused.returncode != 0 and "not authori" in (refused.stderr + refused.stdout).lower()
        await admin.send_points(b, [Point("marker", 1)])
        assert (await admin.get_node(b)).value("humidity") is None
        assert (await admin.get_node(a)).value("humidity") == 31.0
        stats = (await admin.stats())["credentials"]
        assert sum(stats["permissionViolations"].values()) >= 1 and stats["authFailures"]


# ---- revocation and rotation ----


async def test_revocation_disconnects_within_5_s_and_leaves_others_connected(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        b = await admin.create_node(admin.root_id, "device")
        cred_a, cred_b = await issue(admin, a), await issue(admin, b)
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        async def quiet(exc: Exception) -> None:
            """The revoked device's reconnection attempts fail: expected."""

        device_a = await nats.connect(
            instance.url,
            user=cred_a.user,
            password=cred_a.secret,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.1,
            closed_cb=on_closed,
            error_cb=quiet,
        )
        device_b = await device_client(instance, cred_b)
        with mqtt(mqtt_port(instance), cred_b, "dev-b") as mqtt_b:
            begin = time.monotonic()
            reply = await admin.request("siot.cred.revoke", encode({"node": a}))
            assert reply["revoked"] == [cred_a.user]
            await asyncio.wait_for(closed.wait(), 5)
            assert time.monotonic() - begin < 5
            with pytest.raises(ConnectFailed):
                await device_client(instance, cred_a)
            await device_b.send_points(b, [Point("alive", True)])  # the others stay connected
            assert device_b.nc.is_connected and mqtt_b.client.is_connected()
        await device_b.close()
        await device_a.close()


async def test_rotation_keeps_the_old_secret_for_the_grace_period(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        old = await issue(admin, a)
        reply = await admin.request("siot.cred.issue", encode({"node": a, "rotate": True, "grace": 2}))
        new = credfile.Credential(reply["user"], reply["secret"], a)
        assert reply["expiring"] == [old.user]
        for credential in (old, new):  # both work during the grace period
            client = await device_client(instance, credential)
            await client.send_points(a, [Point("n", 1)])
            await client.close()
        await asyncio.sleep(2.5)
        with pytest.raises(ConnectFailed):
            await device_client(instance, old)
        client = await device_client(instance, new)
        await client.close()
        states = {
            c["user"]: c["state"] for c in (await admin.request("siot.cred.list", encode({})))["credentials"]
        }
        assert states == {old.user: "expired", new.user: "active"}


# ---- the CLI, the admin credential, secrets at rest ----


def cli(proc: SiotProcess, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
    result = subprocess.run(
        [SIOT_BIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "SIOT_DATA": str(proc.data_dir)},
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


async def test_cli_issues_and_revokes_and_secrets_are_stored_only_hashed(instance: SiotProcess) -> None:
    node = cli(instance, "add", "root", "device").stdout.strip()  # the admin credential from --data
    issued = json.loads(cli(instance, "device", "credential", node, "--json").stdout)
    assert set(issued) == {"user", "secret", "node"}
    # with a credential on, anonymous clients are refused and the admin's commands still work
    with pytest.raises(ConnectFailed):
        await Client.connect(instance.url, reconnect_forever=False, timeout_s=2)
    assert cli(instance, "get", node, "--json").returncode == 0
    device = await device_client(instance, credfile.Credential(issued["user"], issued["secret"], node))
    await device.send_points(node, [Point("temperature", 1.5)])
    await device.close()
    listing = json.loads(cli(instance, "device", "credential", node, "--list", "--json").stdout)
    assert [c["state"] for c in listing] == ["active"]
    assert json.loads(cli(instance, "device", "credential", node, "--revoke", "--json").stdout) == {
        "revoked": [issued["user"]]
    }
    export = cli(instance, "export").stdout
    instance.stop()  # everything on disk, the WAL checkpointed
    secret = issued["secret"].encode()
    hashed = False
    for path in instance.data_dir.rglob("*"):
        if path.is_file() and path.name != "admin.cred":
            data = path.read_bytes()
            assert secret not in data, f"the secret is in {path}"
            hashed |= b"$2b$04$" in data
    assert hashed and secret.decode() not in export
    assert stat.S_IMODE((instance.data_dir / "admin.cred").stat().st_mode) == 0o600
    assert stat.S_IMODE((instance.data_dir / "nats" / "nats-server.conf").stat().st_mode) == 0o600
    # a restart starts with the users: no moment without them
    text = (instance.data_dir / "nats" / "nats-server.conf").read_text()
    assert "authorization { users" in text
    await start(instance)
    with pytest.raises(ConnectFailed):
        await Client.connect(instance.url, reconnect_forever=False, timeout_s=2)


async def test_a_plain_secret_is_never_stored_on_a_credential_node(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        a = await admin.create_node(admin.root_id, "device")
        cred = await issue(admin, a)
        listing = (await admin.request("siot.cred.list", encode({"node": a})))["credentials"]
        with pytest.raises(RequestFailed, match="only the bcrypt hash"):
            await admin.send_points(listing[0]["id"], [Point("secret", "hunter2")])
        with pytest.raises(RequestFailed, match="must be a bcrypt hash"):
            await admin.send_points(listing[0]["id"], [Point("secretHash", "plain")])
        assert cred.user == listing[0]["user"]


async def test_without_credentials_an_instance_stays_open(instance: SiotProcess) -> None:
    client = await Client.connect(instance.url, reconnect_forever=False)  # anonymous, as before
    await client.load_root()
    stats = (await client.stats())["credentials"]
    assert stats["enforced"] is False and stats["credentials"] == 0
    await client.close()
    assert "authorization" not in (instance.data_dir / "nats" / "nats-server.conf").read_text()


async def test_a_token_instance_says_credentials_need_users(tmp_path: Path) -> None:
    async with App(serve_config(tmp_path, auth_token="s3cret")) as app:
        assert app.context is not None
        url = app.context.broker_url
        async with await Client.connect(url, token="s3cret", reconnect_forever=False) as client:
            root = await client.load_root()
            with pytest.raises(RequestFailed, match="--auth-token"):
                await client.request("siot.cred.issue", encode({"node": root}))


# ---- edges ----


async def test_a_rogue_edge_credential_cannot_write_outside_its_subtree(instance: SiotProcess) -> None:
    async with admin_of(instance) as admin:
        victim = await admin.create_node(admin.root_id, "device", [Point("setpoint", 20, time=1000)])
        cred = await issue(admin, "edge-7", kind="edge")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        edge = await nats.connect(
            instance.url,
            user=cred.user,
            password=cred.secret,
            inbox_prefix=f"_INBOX_{cred.user}",
            error_cb=on_error,
        )

        async def request(subject: str, payload: dict[str, Any]) -> dict[str, Any]:
            return msgpack.unpackb((await edge.request(subject, encode(payload), timeout=3)).data)

        hello = await request("sync.hello.edge-7", {"instance": "edge-7", "version": 1, "session": "s"})
        assert hello["attached"]

        def row(seq: int, node: str, parent: str, ptype: str, value: object) -> list[object]:
            return [seq, node, parent, ptype, "0", 2000, msgpack.packb(value), 0, "", "edge-7", seq]

        rows = [row(1, victim, "", "setpoint", 99), row(2, "edge-7", "", "temp", 21.5)]
        reply = await request("sync.up.edge-7", {"from": 0, "to": 2, "rows": rows, "session": "s"})
        assert reply["outside"] == 1 and reply["refused"] == 1
        assert (await admin.get_node(victim)).value("setpoint") == 20
        assert (await admin.get_node("edge-7")).value("temp") == 21.5
        # another edge's id, or the daemon's API outside its subtree: the broker refuses
        with pytest.raises(nats.errors.TimeoutError):
            await edge.request("sync.hello.other", encode({"instance": "other", "version": 1}), timeout=0.5)
        with pytest.raises(nats.errors.TimeoutError):
            await edge.request(f"p.{victim}", encode([]), timeout=0.5)
        await edge.close()
        assert (await admin.stats())["syncErrors"] == {"edge-7": 1}
        await until(lambda: counted(admin, "permissionViolations", cred.user, 2))


async def test_edge_provisioning_one_command_each_side(tmp_path: Path) -> None:
    cloud = SiotProcess(data_dir=tmp_path / "cloud", extra_args=["--require-credentials"])
    await start(cloud)
    try:
        async with admin_of(cloud) as admin:
            site = await admin.create_node(admin.root_id, "group", [Point("description", "site")])
        cred_file = tmp_path / "edge.cred"
        issued = cli(cloud, "edge", "credential", "gw-1", "--parent", site, "--json").stdout
        cred_file.write_text(issued)
        edge = SiotProcess(
            data_dir=tmp_path / "edge",
            instance_id="gw-1",
            extra_args=["--upstream", cloud.url, "--upstream-credential", str(cred_file)],
        )
        await start(edge)
        try:
            async with connected(edge) as edge_client, admin_of(cloud) as admin:
                await edge_client.send_points(edge_client.root_id, [Point("temperature", 7.5)])
                await until(lambda: _parent_and_value(admin, "gw-1", site), 30)
                args = " ".join(edge.proc.args) if edge.proc else ""  # type: ignore[arg-type]
                assert json.loads(issued)["secret"] not in args
        finally:
            edge.stop()
    finally:
        cloud.stop()


async def _parent_and_value(admin: Client, node: str, parent: str) -> bool:
    try:
        info = await admin.get_node(node)
    except RequestFailed:
        return False
    return info.parent == parent and info.value("temperature") == 7.5
