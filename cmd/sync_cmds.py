"""`siot sync status`: per-peer sync state of a running instance, asked over NATS."""

from __future__ import annotations

from typing import Any

import click

from siot.client import Client
from siot.cmd.common import Target, client_options, dumps, format_time, json_option
from siot.codec import encode
from siot.sync import protocol


@click.group()
def sync() -> None:
    """Edge <-> cloud sync of a running instance.

    Example usage:

    \b
        siot sync status                              # this instance's upstream and edges
        siot sync status --url nats://cloud:4222 --json
    """


def _when(time_ns: int) -> str:
    return format_time(time_ns) if time_ns else "never"


def peer_lines(peer: dict[str, Any]) -> list[str]:
    """Text for one peer: a headline, then cursors, backlog, digest and the last error."""
    role = "upstream" if peer["role"] == "upstream" else "edge"
    where = f" at {peer['uri']}" if peer.get("uri") else ""
    lines = [f"{role} {peer['peer'] or '?'}{where}: {peer['state']}"]
    lines.append(
        f"  our log acknowledged to seq {peer['outCursor']}, backlog {peer['backlog']}; "
        f"their log applied to seq {peer['inCursor']}"
    )
    lines.append(f"  sent {peer['shipped']}, received {peer['received']} rows since start")
    lines.append(f"  last sync {_when(peer['lastSyncTime'])}, last heard {_when(peer['lastSeenTime'])}")
    if peer.get("digestTime"):
        verdict = "match" if peer["digestOk"] else "MISMATCH"
        lines.append(
            f"  digest {peer['digest']} {verdict} at {_when(peer['digestTime'])}, repairs {peer['repairs']}"
        )
    if peer.get("conflicts"):
        lines.append(
            f"  CONFLICT: refused {peer['conflicts']} requests from another instance claiming this id, "
            f"last at {_when(peer['lastConflictTime'])}"
        )
    if peer.get("lastError"):
        lines.append(f"  last error ({_when(peer['lastErrorTime'])}): {peer['lastError']}")
    return lines


@sync.command()
@client_options
@json_option
def status(target: Target, json_: bool) -> None:
    """Show each sync peer: connected or not, cursors, backlog, last error, last sync time.

    On an edge this lists its upstream; on a cloud instance, every edge attached to it (every
    downstream root, connected now or not, with when it was last heard from), and any id whose
    requests were refused since start. The state `conflict` means that another instance with the
    same id is syncing with that upstream. The backlog on a cloud is an upper bound (log
    entries after the edge's cursor, before filtering to the edge's subtree).

    Example usage:

    \b
        siot sync status
        siot sync status --json | jq '.peers[] | {peer, state, backlog}'
    """

    async def work(client: Client) -> dict[str, Any]:
        return await client.request(protocol.STATUS, encode({}))

    reply = target.run(work)
    if json_:
        click.echo(dumps({k: v for k, v in reply.items() if k != "ok"}))
        return
    click.echo(f"instance {reply['instance']}, log at seq {reply['lastSeq']}")
    if not reply["peers"]:
        click.echo("no sync peers (start with --upstream, or add a sync node under the root)")
    for peer in reply["peers"]:
        click.echo("\n".join(peer_lines(peer)))
