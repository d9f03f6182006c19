"""Client commands over time: `siot monitor` (live committed changes) and `siot history` (the log)."""

from __future__ import annotations

import sys
from typing import Any

import click

from siot.client import Change, Client
from siot.cmd.common import (
    ROOT_ALIAS,
    Target,
    client_options,
    dumps,
    format_time,
    format_value,
    json_option,
    parse_time_ns,
    point_json,
    point_name,
    resolve,
    split_name,
)
from siot.errors import SiotError
from siot.points import Point


class Describer:
    """Names nodes by their description, asking the instance once per node and keeping the answer
    current from the description points that stream past."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._names: dict[str, str] = {}

    def saw(self, change: Change) -> None:
        if change.parent is None:
            for p in change.points:
                if p.type == "description" and not p.deleted:
                    self._names[change.node] = str(p.value)

    async def name(self, node: str) -> str:
        if node not in self._names:
            try:
                self._names[node] = (await self._client.get_node(node)).description or node
            except SiotError:
                self._names[node] = node
        return self._names[node]


def change_record(change: Change, p: Point, name: str) -> dict[str, Any]:
    record = {"node": change.node, "name": name, **point_json(p)}
    if change.parent is not None:
        record["parent"] = change.parent
    return record


def change_line(change: Change, p: Point, name: str) -> str:
    edge = f" (edge from {change.parent})" if change.parent is not None else ""
    origin = f"  origin={p.origin}" if p.origin else ""
    deleted = "  (deleted)" if p.deleted else ""
    return f"{format_time(p.time)}  {name}{edge}  {point_name(p)}={format_value(p.value)}{origin}{deleted}"


@click.command()
@click.argument("node", default=ROOT_ALIAS)
@click.option("nl", "--nl", envvar="SIOT_NL", is_flag=True, help="Print one JSON object per line.")
@click.option("--count", type=int, default=0, help="Stop after this many points (0 = run until Ctrl-C).")
@client_options
def monitor(node: str, nl: bool, count: int, target: Target) -> None:
    """Stream the changes committed at and under NODE (default: everything), one point a line:
    time, node description (or id), type.key=value, origin.

    A line "monitoring ..." on stderr says when the subscription is live.

    Example usage:

    \b
        siot monitor
        siot monitor 5c1e... --nl | jq .value
    """

    async def work(client: Client) -> None:
        node_id = await resolve(client, node)
        describer = Describer(client)
        seen = 0
        async with client.changes(node_id) as changes:
            click.echo(f"monitoring {node_id} (Ctrl-C to stop)", err=True)
            async for change in changes:
                describer.saw(change)
                name = await describer.name(change.node)
                for p in change.points:
                    line = (
                        dumps(change_record(change, p, name), indent=None)
                        if nl
                        else change_line(change, p, name)
                    )
                    click.echo(line)
                    seen += 1
                    if seen == count:
                        return
                sys.stdout.flush()

    try:
        target.run(work, reconnect=True)
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("node")
@click.argument("name", metavar="TYPE[.KEY]")
@click.option(
    "--since", default="1h", show_default=True, help="Start: a duration ago (90s, 15m, 2d) or RFC 3339."
)
@click.option(
    "--until", default="now", show_default=True, help="End (exclusive): a duration ago or RFC 3339."
)
@click.option("--limit", type=int, default=10_000, show_default=True, help="At most this many values.")
@json_option
@client_options
def history(node: str, name: str, since: str, until: str, limit: int, json_: bool, target: Target) -> None:
    """Show the logged values of NODE's point TYPE (every key unless .KEY is given), oldest first.

    Example usage:

    \b
        siot history 5c1e... temperature --since 24h
        siot history 5c1e... channel.2 --since 2024-05-01T00:00:00Z --json
    """
    ptype, key = split_name(name)
    start_ns, end_ns = parse_time_ns(since), parse_time_ns(until)

    async def work(client: Client) -> list[Point]:
        return await client.history(
            await resolve(client, node),
            ptype,
            key if "." in name else None,
            start_ns=start_ns,
            end_ns=end_ns,
            limit=limit,
        )

    points = target.run(work)
    if json_:
        click.echo(dumps([point_json(p) for p in points]))
        return
    for p in points:
        origin = f"  origin={p.origin}" if p.origin else ""
        click.echo(f"{format_time(p.time)}  {point_name(p)}={format_value(p.value)}{origin}")


COMMANDS = [monitor, history]
