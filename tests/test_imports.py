"""What a device, a script or the CLI loads: the client library and the client commands must not
pull in SQLite, the store, the daemon, the benchmarks or the simulator (each a fresh interpreter,
so nothing another test imported counts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# aiohttp is not in the list: nats-py's transport module imports it whenever it is installed.
HEAVY = (
    "sqlite3",
    "aiosqlite",
    "prometheus_client",
    "siot.store",
    "siot.app",
    "siot.cmd.bench",
    "siot.cmd.sim",
    "siot.cmd.chaos",
)


def modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import siot.client",
        "from siot import Client, Point",
        "from siot.cmd.main import cli",
        "from siot.cmd.main import cli; from click.testing import CliRunner; "
        "CliRunner().invoke(cli, ['--help'])",
    ],
)
def test_the_client_side_loads_no_daemon_code(code: str) -> None:
    loaded = modules_after(code)
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    assert "siot.points" in loaded  # the check itself sees siot's modules


def test_the_daemon_commands_load_on_use() -> None:
    loaded = modules_after(
        "from siot.cmd.main import cli; from click.testing import CliRunner; "
        "assert CliRunner().invoke(cli, ['serve', '--help']).exit_code == 0"
    )
    assert {"siot.app", "siot.store"} <= loaded
