"""Client commands that read and edit the node tree: tree, get, set, add, rm, mv, stats."""

from __future__ import annotations

from typing import Any

import click

from siot.client import Client, NodeInfo, TreeNode
from siot.cmd.common import (
    ROOT_ALIAS,
    Target,
    client_options,
    dumps,
    format_time,
    format_value,
    json_option,
    node_json,
    node_label,
    parent_edges,
    parse_assignments,
    point_name,
    resolve,
    sole_parent,
)
from siot.points import Point


def tree_json(tree: TreeNode) -> dict[str, Any]:
    """The subtree as nested JSON-ready maps (built without recursion)."""
    top = {**node_json(tree.node), "children": []}
    stack = [(tree, top)]
    while stack:
        branch, out = stack.pop()
        out["children"] = [{**node_json(c.node), "children": []} for c in branch.children]
        stack += zip(branch.children, out["children"], strict=True)
    return top


def tree_lines(tree: TreeNode) -> list[str]:
    """The subtree drawn with box characters, one node per line (without recursion: a tree may
    be thousands deep)."""
    lines = []
    stack: list[tuple[TreeNode, str, str]] = [(tree, "", "")]  # node, prefix, branch
    while stack:
        node, prefix, branch = stack.pop()
        deleted = " (deleted)" if node.node.deleted else ""
        lines.append(f"{prefix}{branch}{node_label(node.node)}{deleted}")
        child_prefix = prefix + {"": "", "└── ": "    ", "├── ": "│   "}[branch]
        last = len(node.children) - 1
        stack += [
            (child, child_prefix, "└── " if i == last else "├── ")
            for i, child in reversed(list(enumerate(node.children)))
        ]
    return lines


@click.command()
@click.argument("node", default=ROOT_ALIAS)
@click.option("--deleted", is_flag=True, help="Also show deleted nodes.")
@json_option
@client_options
def tree(node: str, deleted: bool, json_: bool, target: Target) -> None:
    """Show the node tree under NODE (default: the instance root).

    Each node is printed once (a node under several parents shows under the first).

    Example usage:

    \b
        siot tree
        siot tree 5c1e... --json
    """

    async def work(client: Client) -> TreeNode:
        return await client.tree(await resolve(client, node), deleted=deleted)

    result = target.run(work)
    click.echo(dumps(tree_json(result)) if json_ else "\n".join(tree_lines(result)))


def point_rows(points: list[Point]) -> list[str]:
    width = max((len(point_name(p)) for p in points), default=0)
    return [
        f"  {point_name(p):<{width}}  {format_value(p.value)}"
        f"  ({format_time(p.time)}{', origin ' + p.origin if p.origin else ''})"
        for p in points
        if not p.deleted
    ]


@click.command()
@click.argument("node")
@json_option
@client_options
def get(node: str, json_: bool, target: Target) -> None:
    """Show NODE: its type, parents, points and edge points.

    Example usage:

    \b
        siot get root
        siot get 5c1e... --json
    """

    async def work(client: Client) -> list[NodeInfo]:
        found = await parent_edges(client, await resolve(client, node), deleted=True)
        if not found:
            raise click.ClickException(f"unknown node '{node}'")
        return sorted(found, key=lambda n: n.deleted)

    edges = target.run(work)
    if json_:
        click.echo(dumps({**node_json(edges[0]), "edges": [node_json(e) for e in edges]}))
        return
    first = edges[0]
    click.echo(node_label(first))
    click.echo("points:")
    click.echo("\n".join(point_rows(first.points)) or "  (none)")
    for edge in edges:
        state = " (deleted)" if edge.deleted else ""
        click.echo(f"edge from {edge.parent}{state}:")
        click.echo("\n".join(point_rows(edge.edge_points)) or "  (none)")


origin_option = click.option(
    "--origin",
    envvar="SIOT_ORIGIN",
    default="",
    help="Origin of the points (the writer's node id; empty = the node's own device).",
)


@click.command(name="set")
@click.argument("node")
@click.argument("assignments", nargs=-1, required=True, metavar="TYPE[.KEY]=VALUE...")
@origin_option
@click.option("--edge", "edge_parent", default=None, help="Write edge points of the edge PARENT -> NODE.")
@client_options
def set_points(
    node: str, assignments: tuple[str, ...], origin: str, edge_parent: str | None, target: Target
) -> None:
    """Write points to NODE and wait until they are committed.

    Values are typed: 3 is an int, 3.5 a float, true/false a bool, anything else a string
    ("3" in double quotes forces a string). The key defaults to 0.

    Example usage:

    \b
        siot set 5c1e... temperature=21.5 name=boiler enabled=true
        siot set 5c1e... channel.2=7 --origin rule-1
        siot set 5c1e... --edge 77ab... tombstone=0
    """
    points = parse_assignments(assignments, origin=origin)

    async def work(client: Client) -> None:
        node_id = await resolve(client, node)
        if edge_parent is None:
            await client.send_points(node_id, points)
        else:
            await client.send_edge_points(node_id, await resolve(client, edge_parent), points)

    target.run(work)


@click.command()
@click.argument("parent")
@click.argument("node_type", metavar="TYPE")
@click.argument("assignments", nargs=-1, metavar="TYPE[.KEY]=VALUE...")
@click.option("--id", "node_id", default=None, help="Id of the new node (default: a new UUID).")
@origin_option
@client_options
def add(
    parent: str,
    node_type: str,
    assignments: tuple[str, ...],
    node_id: str | None,
    origin: str,
    target: Target,
) -> None:
    """Create a node of TYPE under PARENT, with optional points; print its id.

    Example usage:

    \b
        siot add root device description="soil sensor 3"
        NODE=$(siot add root variable description=setpoint value=21)
    """
    points = parse_assignments(assignments, origin=origin)

    async def work(client: Client) -> str:
        return await client.create_node(await resolve(client, parent), node_type, points, node_id=node_id)

    click.echo(target.run(work))


@click.command()
@click.argument("node")
@click.option("--parent", default=None, help="Parent whose edge is deleted (needed when NODE has several).")
@client_options
def rm(node: str, parent: str | None, target: Target) -> None:
    """Delete NODE from under its parent (a tombstone on the edge; `siot set NODE --edge P
    tombstone=0` brings it back).

    Example usage:

    \b
        siot rm 5c1e...
        siot rm 5c1e... --parent 77ab...
    """

    async def work(client: Client) -> None:
        node_id = await resolve(client, node)
        parent_id = (
            await resolve(client, parent) if parent else await sole_parent(client, node_id, "--parent")
        )
        await client.delete_node(node_id, parent_id)

    target.run(work)


@click.command()
@click.argument("node")
@click.option("--from", "old_parent", default=None, help="Current parent (needed when NODE has several).")
@click.option("--to", "new_parent", required=True, help="New parent.")
@client_options
def mv(node: str, old_parent: str | None, new_parent: str, target: Target) -> None:
    """Move NODE to a new parent (the new edge is made before the old one is deleted).

    Example usage:

    \b
        siot mv 5c1e... --to 77ab...
    """

    async def work(client: Client) -> None:
        node_id = await resolve(client, node)
        old = (
            await resolve(client, old_parent) if old_parent else await sole_parent(client, node_id, "--from")
        )
        await client.move_node(node_id, old, await resolve(client, new_parent))

    target.run(work)


@click.command()
@json_option
@client_options
def stats(json_: bool, target: Target) -> None:
    """Show the instance's counters: points accepted, log position, nodes, errors per node.

    Example usage:

    \b
        siot stats
        siot stats --json | jq .errors
    """
    reply = target.run(lambda client: client.stats())
    reply.pop("ok", None)
    if json_:
        click.echo(dumps(reply))
        return
    click.echo(f"instance         {reply.get('instance')}")
    click.echo(f"nodes            {reply.get('nodes')}")
    click.echo(f"accepted points  {reply.get('acceptedPoints')}")
    click.echo(f"log sequence     {reply.get('lastSeq')}")
    commits, writes = reply.get("commits") or 0, reply.get("committedWrites") or 0
    per_commit = f" ({writes / commits:.1f} writes each)" if commits else ""
    click.echo(f"commits          {commits}{per_commit}")
    errors: dict[str, int] = reply.get("errors") or {}
    click.echo(f"errors           {sum(errors.values())}")
    for node, count in sorted(errors.items(), key=lambda item: -item[1]):
        click.echo(f"  {node or '(no node)'}  {count}")
    for node, export in sorted((reply.get("export") or {}).items()):
        click.echo(
            f"db export {node}  {export['state']}, {export['exportedLines']} lines written, behind by "
            f"{export['lagRows']} log entries / {export['lagSeconds']:.0f} s"
        )


COMMANDS = [tree, get, set_points, add, rm, mv, stats]
