"""The `siot` command line. Each command group lives in its own module and is added here.

Every option can also come from a SIOT_* environment variable (a flag beats the variable, which
beats the default). User errors print one line on stderr and exit 1.
"""

from __future__ import annotations

import logging

import click

from siot.cmd.cred_cmds import COMMANDS as CRED_COMMANDS
from siot.cmd.export_import import COMMANDS as EXPORT_IMPORT_COMMANDS
from siot.cmd.lazy import LazyCommand, LazyGroup
from siot.cmd.sync_cmds import sync
from siot.cmd.tree_cmds import COMMANDS as TREE_COMMANDS
from siot.cmd.watch_cmds import COMMANDS as WATCH_COMMANDS

# Imported when they run: the daemon (SQLite, the store), the benchmarks, the simulator and the
# fault scenarios are not what `siot --help` or `siot tree` need.
LAZY_COMMANDS = {
    "serve": LazyCommand("siot.cmd.serve:serve", "Run a siot instance until SIGINT/SIGTERM."),
    "bench": LazyCommand(
        "siot.cmd.benches:bench", "Measure a siot instance against the raw limits of this machine."
    ),
    "sim": LazyCommand("siot.cmd.sim:sim", "Simulate devices publishing data, then print what was sent..."),
    "chaos": LazyCommand(
        "siot.cmd.chaos:chaos", "Run fault scenarios against real `siot serve` processes and..."
    ),
    # argon2 (through siot.users) is the daemon's, not what other client commands need
    "user": LazyCommand("siot.cmd.user_cmds:user", "Manage users: the accounts of the HTTP API..."),
}


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "SIOT"},
)
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


cli.add_command(sync)
for command in [*TREE_COMMANDS, *WATCH_COMMANDS, *EXPORT_IMPORT_COMMANDS, *CRED_COMMANDS]:
    cli.add_command(command)


if __name__ == "__main__":  # `python -m siot.cmd.main`: how `siot bench` starts its own instance
    cli()
