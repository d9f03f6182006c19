"""`siot export` / `siot import`: a subtree as a YAML file that can be edited and applied again.

The file is declarative: each node has its id, type, points (`type[.key]: value`), edge points
and children. Import makes the instance match the file — it creates missing nodes (with the ids
in the file, so a second import updates rather than duplicates) and writes only the points whose
value differs. Importing the same file twice therefore writes nothing the second time. Nodes and
points that are not in the file are left alone: import never deletes.

Times and origins are not exported: imported points are stamped when they are written.
"""

from __future__ import annotations

import uuid
from typing import Any

import click
import yaml

from siot import subjects
from siot.client import Client, NodeInfo, TreeNode
from siot.cmd.common import (
    ROOT_ALIAS,
    Target,
    client_options,
    deeply,
    live_parents,
    parent_edges,
    point_name,
    resolve,
    split_name,
)
from siot.points import NODE_TYPE, TOMBSTONE, Point

EDGE_STRUCTURE = frozenset((NODE_TYPE, TOMBSTONE))
# Nodes written without an id get one derived from their place in the file, so that importing a
# hand-written file twice is idempotent too.
ID_NAMESPACE = uuid.UUID("5f0d7a4e-2c43-4d7e-9a51-6f1d5b8c0e21")


def points_map(points: list[Point], *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {point_name(p): p.value for p in points if not p.deleted and p.type not in skip}


def export_node(tree: TreeNode) -> dict[str, Any]:
    """The subtree as the nested document `siot import` reads (built without recursion)."""

    def document(node: NodeInfo) -> dict[str, Any]:
        out: dict[str, Any] = {"id": node.id, "type": node.type, "points": points_map(node.points)}
        edge = points_map(node.edge_points, skip=EDGE_STRUCTURE)
        if edge:
            out["edgePoints"] = edge
        return out

    top = document(tree.node)
    stack = [(tree, top)]
    while stack:
        branch, out = stack.pop()
        if branch.children:
            out["children"] = [document(c.node) for c in branch.children]
            stack += zip(branch.children, out["children"], strict=True)
    return top


@click.command(name="export")
@click.argument("node", default=ROOT_ALIAS)
@client_options
def export_tree(node: str, target: Target) -> None:
    """Write the subtree at NODE (default: the whole instance) as YAML to stdout.

    Example usage:

    \b
        siot export > tree.yaml
        siot export 5c1e... > greenhouse.yaml
    """

    async def work(client: Client) -> TreeNode:
        return await client.tree(await resolve(client, node))

    document = export_node(target.run(work))
    click.echo(deeply(yaml.safe_dump, document, sort_keys=False, allow_unicode=True), nl=False)


def parse_points(raw: Any, where: str) -> list[Point]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise click.ClickException(f"{where}: points must be a map of type[.key]: value")
    points = []
    for name, value in raw.items():
        ptype, key = split_name(str(name))
        points.append(Point(type=ptype, key=key, value=value))
    return points


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type (1 and 1.0 and True are different points)."""
    return type(a) is type(b) and a == b


def differing(wanted: list[Point], current: list[Point]) -> list[Point]:
    """The wanted points whose stored value differs (or that are missing or deleted)."""
    stored = {(p.type, p.key): p for p in current}
    out = []
    for p in wanted:
        have = stored.get((p.type, p.key))
        if have is None or have.deleted or not same_value(have.value, p.value):
            out.append(p)
    return out


class Importer:
    """Applies a parsed YAML document to an instance; counts what it wrote."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.created = 0
        self.points_written = 0

    async def current(self, parent: str, node: str) -> NodeInfo | None:
        for info in await parent_edges(self.client, node, deleted=True):
            if info.parent == parent:
                return info
        return None

    async def apply(self, doc: Any, parent: str, where: str) -> None:
        """Apply `doc` under `parent`, then its children, parents before children (a work list,
        not recursion: a document may nest thousands deep)."""
        todo = [(doc, parent, where)]
        while todo:
            doc, parent, where = todo.pop()
            children, node_id = await self.apply_one(doc, parent, where)
            todo += [(child, node_id, f"{where}/{i}") for i, child in reversed(list(enumerate(children)))]

    async def apply_one(self, doc: Any, parent: str, where: str) -> tuple[list[Any], str]:
        """Make one node match `doc`; return its children documents and its id."""
        if not isinstance(doc, dict):
            raise click.ClickException(f"{where}: a node must be a map with type, points, children")
        node_type = doc.get("type")
        if not isinstance(node_type, str) or not node_type:
            raise click.ClickException(f"{where}: 'type' is missing")
        points = parse_points(doc.get("points"), where)
        edge_points = parse_points(doc.get("edgePoints"), f"{where} edgePoints")
        node_id = str(doc.get("id") or self.derived_id(parent, node_type, points, where))
        subjects.check_node_token(node_id)
        info = await self.current(parent, node_id)
        if info is None or info.deleted or info.type != node_type:
            await self.client.send_edge_points(
                node_id, parent, [Point(NODE_TYPE, node_type), Point(TOMBSTONE, 0)]
            )
            self.created += info is None
        await self.write(node_id, None, differing(points, info.points if info else []))
        await self.write(node_id, parent, differing(edge_points, info.edge_points if info else []))
        children = doc.get("children") or []
        if not isinstance(children, list):
            raise click.ClickException(f"{where}: children must be a list")
        return children, node_id

    async def write(self, node: str, parent: str | None, points: list[Point]) -> None:
        if not points:
            return
        if parent is None:
            await self.client.send_points(node, points)
        else:
            await self.client.send_edge_points(node, parent, points)
        self.points_written += len(points)

    @staticmethod
    def derived_id(parent: str, node_type: str, points: list[Point], where: str) -> str:
        description = next((p.value for p in points if p.type == "description"), None)
        return str(uuid.uuid5(ID_NAMESPACE, f"{parent}/{node_type}/{description or where}"))


@click.command(name="import")
@click.option(
    "--parent",
    envvar="SIOT_IMPORT_PARENT",
    default=None,
    help="Hang the file's top node under this node (default: where it already is, else the root).",
)
@click.argument("file", type=click.File("r"), default="-")
@client_options
def import_tree(parent: str | None, file: Any, target: Target) -> None:
    """Make the instance match a YAML file written by `siot export` (read from FILE or stdin).

    Missing nodes are created with the file's ids, differing points are written, nothing is
    deleted; importing the same file twice changes nothing. If the top node is this instance's
    root (an export of the whole instance), it is updated in place.

    Example usage:

    \b
        siot export > tree.yaml; $EDITOR tree.yaml; siot import < tree.yaml
        siot import --parent 5c1e... greenhouse.yaml
    """
    try:
        document = deeply(yaml.safe_load, file)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise click.ClickException("the file must hold one node (a map with type, points, children)")

    async def work(client: Client) -> Importer:
        importer = Importer(client)
        root = await client.load_root()
        top = document.get("id")
        if parent is not None:
            top_parent = await resolve(client, parent)
        elif top == root:
            top_parent = subjects.ROOT
        else:
            existing = await live_parents(client, str(top)) if top else []
            top_parent = existing[0] if existing else root
        await importer.apply(document, top_parent, "top")
        return importer

    importer = target.run(work)
    click.echo(
        f"imported: {importer.created} nodes created, {importer.points_written} points written",
        err=True,
    )


COMMANDS = [export_tree, import_tree]
