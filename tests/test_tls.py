"""TLS on every listener (issue 16): `siot cert` makes a CA and a server certificate, `siot serve
--tls-cert/--tls-key` serves them on the NATS port, MQTT and leafnodes, plain connections are
refused unless --tls-allow-plain, --tls-ca asks clients for certificates, SIGHUP picks up a new
certificate, and an edge syncs over tls:// with its credential."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from support import SIOT_BIN, SiotProcess, connected, free_port
from sync_support import start, until

from siot.client import Client
from siot.codec import encode
from siot.errors import ConnectFailed, RequestFailed
from siot.points import Point

# A client whose TLS handshake fails leaves a line in nats-server's log (a WARNING here), and
# asyncio's SSL transport warns about nats-py's EOF handling: neither is an error.


def make_certs(out: Path) -> None:
    subprocess.run([SIOT_BIN, "cert", "--dir", str(out), "--host", "siot.test"], check=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tls")
    make_certs(out)
    return out


def tls_instance(data_dir: Path, certs: Path, *extra: str) -> SiotProcess:
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    return SiotProcess(data_dir=data_dir, extra_args=[*args, "--mqtt-port", str(free_port()), *extra])


def mqtt_port(proc: SiotProcess) -> int:
    return int(proc.extra_args[proc.extra_args.index("--mqtt-port") + 1])


def server_info(port: int) -> dict[str, object]:
    """The INFO line nats-server sends first on its client port, before any TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        line = sock.makefile("rb").readline().decode()
    assert line.startswith("INFO ")
    return json.loads(line[5:])


def mqtt_connects(port: int, ca: Path | None) -> bool:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"tls-probe-{ca is not None}")
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    done = threading.Event()
    accepted: list[bool] = []

    def on_connect(*args: object) -> None:
        accepted.append(not args[3].is_failure)  # type: ignore[attr-defined]
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: done.set()
    try:
        client.connect("127.0.0.1", port)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()
    return accepted == [True]


def served_fingerprint(port: int, ca: Path) -> str:
    """SHA-256 of the certificate the MQTT listener (TLS from the first byte) serves now."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def test_tls_with_the_generated_ca_and_plain_refused(tmp_path: Path, certs: Path) -> None:
    proc = tls_instance(tmp_path / "d", certs)
    await start(proc)
    try:
        info = server_info(proc.port)
        assert info["tls_required"] is True  # a plain client is refused at the first byte
        ca = certs / "ca.pem"
        url = f"tls://127.0.0.1:{proc.port}"
        async with await Client.connect(url, tls_ca=str(ca), reconnect_forever=False) as anonymous:
            root = await anonymous.load_root()  # no credentials yet: open, but only over TLS
            assert root
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await Client.connect(url, reconnect_forever=False, timeout_s=1)  # without the CA
        assert await asyncio.to_thread(mqtt_connects, mqtt_port(proc), ca)
        assert not await asyncio.to_thread(mqtt_connects, mqtt_port(proc), None)
        # the CLI reaches it through the admin credential of its data directory, TLS included
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIOT_")}
        result = await asyncio.to_thread(
            subprocess.run,
            [SIOT_BIN, "--log-level", "ERROR", "tree", "--data", str(proc.data_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"] == root
    finally:
        proc.stop()


async def test_plain_connections_beside_tls_when_allowed(tmp_path: Path, certs: Path) -> None:
    proc = tls_instance(tmp_path / "d", certs, "--tls-allow-plain")
    await start(proc)
    try:
        async with await Client.connect(proc.url, reconnect_forever=False) as plain:
            assert await plain.load_root()
        url = f"tls://127.0.0.1:{proc.port}"
        async with await Client.connect(url, tls_ca=str(certs / "ca.pem"), reconnect_forever=False) as secure:
            assert await secure.load_root()
    finally:
        proc.stop()


async def test_a_new_certificate_is_served_after_sighup(tmp_path: Path, certs: Path) -> None:
    own = tmp_path / "tls"
    await asyncio.to_thread(make_certs, own)
    proc = tls_instance(tmp_path / "d", own)
    await start(proc)
    try:
        port = mqtt_port(proc)
        before = served_fingerprint(port, own / "ca.pem")
        await asyncio.to_thread(make_certs, own)  # renewed, same CA
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)

        async def renewed() -> bool:
            return await asyncio.to_thread(served_fingerprint, port, own / "ca.pem") != before

        await until(renewed, 10)
        async with connected(proc) as client:  # connections still work, nothing restarted
            await client.send_points(client.root_id, [Point("after", 1)])
        assert "reloaded nats-server's configuration" in proc.log()
    finally:
        proc.stop()


async def test_client_certificates_required_with_tls_ca(tmp_path: Path, certs: Path) -> None:
    proc = tls_instance(tmp_path / "d", certs, "--tls-ca", str(certs / "ca.pem"))
    await start(proc)  # the daemon presents its certificate on its own connections
    try:
        url = f"tls://127.0.0.1:{proc.port}"
        ca = str(certs / "ca.pem")
        with pytest.raises(ConnectFailed):
            await Client.connect(url, tls_ca=ca, reconnect_forever=False, timeout_s=2)
        client = await Client.connect(
            url,
            tls_ca=ca,
            tls_cert=str(certs / "server.pem"),
            tls_key=str(certs / "server.key"),
            reconnect_forever=False,
        )
        assert await client.load_root()
        await client.close()
    finally:
        proc.stop()


async def test_an_edge_syncs_over_tls_with_its_credential(tmp_path: Path, certs: Path) -> None:
    cloud = tls_instance(tmp_path / "cloud", certs, "--require-credentials")
    await start(cloud)
    try:
        async with connected(cloud) as admin:
            reply = await admin.request("siot.cred.issue", encode({"node": "gw-9", "kind": "edge"}))
        upstream = f"tls://127.0.0.1:{cloud.port}"
        env = {"SIOT_UPSTREAM_USER": reply["user"], "SIOT_UPSTREAM_SECRET": reply["secret"]}
        edge = SiotProcess(
            data_dir=tmp_path / "edge",
            instance_id="gw-9",
            extra_args=["--upstream", upstream, "--upstream-tls-ca", str(certs / "ca.pem")],
            env=env,
        )
        await start(edge)
        try:
            async with connected(edge) as edge_client, connected(cloud) as admin:
                await edge_client.send_points("gw-9", [Point("temperature", 3.5)])

                async def arrived() -> bool:
                    try:
                        return (await admin.get_node("gw-9")).value("temperature") == 3.5
                    except RequestFailed:
                        return False

                await until(arrived, 30)
            # the secret came from the environment into a 0600 file, never into a point
            assert (tmp_path / "edge" / "upstream.cred").stat().st_mode & 0o777 == 0o600
        finally:
            edge.stop()
    finally:
        cloud.stop()


def https_status(port: int, ca: Path | None) -> int | str:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    scheme = "https" if ca else "http"
    try:
        url = f"{scheme}://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return int(answer.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


async def test_the_http_server_serves_https(tmp_path: Path, certs: Path) -> None:
    port = free_port()
    proc = tls_instance(tmp_path / "d", certs, "--http-port", str(port))
    await start(proc)
    try:
        assert await asyncio.to_thread(https_status, port, certs / "ca.pem") == 200
        assert await asyncio.to_thread(https_status, port, None) != 200  # plain HTTP: no answer
    finally:
        proc.stop()
