"""The `siot` command line. Each command group lives in its own module and is added here.

Every option can also come from a SIOT_* environment variable (a flag beats the variable, which
beats the default). User errors print one line on stderr and exit 1.
"""

from __future__ import annotations

import logging

import click

from siot.cmd.bench import bench
from siot.cmd.bench_floods import bench_floods
from siot.cmd.bench_mqtt import bench_mqtt
from siot.cmd.bench_rules import bench_rules
from siot.cmd.bench_sync import bench_sync
from siot.cmd.chaos import chaos
from siot.cmd.export_import import COMMANDS as EXPORT_IMPORT_COMMANDS
from siot.cmd.serve import serve
from siot.cmd.sim import sim
from siot.cmd.sync_cmds import sync
from siot.cmd.tree_cmds import COMMANDS as TREE_COMMANDS
from siot.cmd.watch_cmds import COMMANDS as WATCH_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "SIOT"})
@click.option(
    "--log-level",
    envvar="SIOT_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging verbosity.",
)
@click.version_option(package_name="siot-daemon")
def cli(log_level: str) -> None:
    """siot: a self-hosted IoT node daemon.

    A tree of nodes and points stored in SQLite, moved over NATS, synced edge <-> cloud, with
    rules that react as points change.

    Example usage:

    \b
        siot serve --data ./data            # run an instance with its own nats-server
        siot tree                           # show the node tree of a running instance
        siot set NODE temperature=21.5      # write a point
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


cli.add_command(serve)
cli.add_command(sync)
cli.add_command(sim)
cli.add_command(bench)
bench.add_command(bench_floods)
bench.add_command(bench_mqtt)
bench.add_command(bench_rules)
bench.add_command(bench_sync)
cli.add_command(chaos)
for command in [*TREE_COMMANDS, *WATCH_COMMANDS, *EXPORT_IMPORT_COMMANDS]:
    cli.add_command(command)


if __name__ == "__main__":  # `python -m siot.cmd.main`: how `siot bench` starts its own instance
    cli()
