"""`siot user add|passwd|list|rm`: manage the `user` nodes of a running instance (docs/users.md).

Like every client command these talk to the daemon over NATS. A password is read from a hidden
prompt or, for scripts, one line of stdin (`--password-stdin`), never from an argument (which
`ps` would show), and sent as a `password` point: the daemon stores only its hash.
"""

from __future__ import annotations

from typing import Any

import click

from siot.client import Client, NodeInfo
from siot.cmd.common import ROOT_ALIAS, Target, client_options, dumps, json_option, parent_edges, resolve
from siot.points import Point
from siot.users import EMAIL, FIRST_NAME, LAST_NAME, PASSWORD, ROLE, ROLES, USER_TYPE

password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin instead of prompting.",
)


def read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return password


async def all_users(client: Client) -> list[NodeInfo]:
    """Every live user node under the instance root, each once, by id."""
    tree = await client.tree(await client.load_root())
    found: dict[str, NodeInfo] = {}
    stack = [tree]
    while stack:
        branch = stack.pop()
        if branch.node.type == USER_TYPE:
            found[branch.node.id] = branch.node
        stack += branch.children
    return [found[node] for node in sorted(found)]


def email_of(user: NodeInfo) -> str:
    value = user.value(EMAIL, default="")
    return value if isinstance(value, str) else ""


async def find_user(client: Client, name: str) -> NodeInfo:
    """The user named by email (case-insensitive) or node id; a user error when there is none or
    the email is not unique."""
    users = await all_users(client)
    matches = [u for u in users if email_of(u).casefold() == name.strip().casefold()] or [
        u for u in users if u.id == name
    ]
    if not matches:
        raise click.ClickException(f"no user with the email or id {name!r}")
    if len(matches) > 1:
        ids = ", ".join(u.id for u in matches)
        raise click.ClickException(f"several users have the email {name!r} ({ids}): name one by its id")
    return matches[0]


@click.group()
def user() -> None:
    """Manage users: the accounts of the HTTP API (docs/users.md).

    Example usage:

    \b
        siot user add ada@example.com --role admin
        echo "$PW" | siot user passwd ada@example.com --password-stdin
        siot user list
        siot user rm ada@example.com
    """


@user.command()
@click.argument("email")
@click.option(
    "--role", type=click.Choice(ROLES), default="view", show_default=True, help="What the user may do."
)
@click.option(
    "--parent",
    default=ROOT_ALIAS,
    show_default=True,
    help="The node the user hangs under: its scope is that node and everything below it.",
)
@click.option("--first-name", default="", help="First name.")
@click.option("--last-name", default="", help="Last name.")
@password_stdin_option
@client_options
def add(
    email: str,
    role: str,
    parent: str,
    first_name: str,
    last_name: str,
    password_stdin: bool,
    target: Target,
) -> None:
    """Add a user with EMAIL (its login name); prints the new user's node id."""
    if not email.strip():
        raise click.ClickException("the email is empty")
    password = read_password(password_stdin)

    async def work(client: Client) -> str:
        if any(email_of(u).casefold() == email.strip().casefold() for u in await all_users(client)):
            raise click.ClickException(f"a user with the email {email!r} exists already")
        fields = {EMAIL: email.strip(), ROLE: role, FIRST_NAME: first_name, LAST_NAME: last_name}
        points = [Point(ptype, value) for ptype, value in fields.items() if value]
        return await client.create_node(
            await resolve(client, parent), USER_TYPE, [*points, Point(PASSWORD, password)]
        )

    click.echo(target.run(work))


@user.command()
@click.argument("name", metavar="USER")
@password_stdin_option
@client_options
def passwd(name: str, password_stdin: bool, target: Target) -> None:
    """Set the password of USER (an email or a node id)."""
    password = read_password(password_stdin)

    async def work(client: Client) -> None:
        found = await find_user(client, name)
        await client.send_points(found.id, [Point(PASSWORD, password)])

    target.run(work)
    click.echo(f"password of {name} changed", err=True)


@user.command(name="list")
@json_option
@client_options
def list_users(json_: bool, target: Target) -> None:
    """List the users: email, role, name, id and the node(s) each hangs under."""

    async def work(client: Client) -> list[dict[str, Any]]:
        rows = []
        for found in await all_users(client):
            parents = sorted(n.parent for n in await parent_edges(client, found.id))
            rows.append(
                {
                    "id": found.id,
                    "email": email_of(found),
                    "role": found.value(ROLE, default=""),
                    "firstName": found.value(FIRST_NAME, default=""),
                    "lastName": found.value(LAST_NAME, default=""),
                    "parents": parents,
                }
            )
        return rows

    rows = target.run(work)
    if json_:
        click.echo(dumps(rows))
        return
    for row in rows:
        name = " ".join(n for n in (row["firstName"], row["lastName"]) if n)
        click.echo(
            f"{row['email']}\t{row['role']}\t{name or '-'}\t{row['id']}\tunder {', '.join(row['parents'])}"
        )


@user.command()
@click.argument("name", metavar="USER")
@click.option("--parent", default=None, help="Remove the user from this parent only (default: from all).")
@client_options
def rm(name: str, parent: str | None, target: Target) -> None:
    """Delete USER (an email or a node id): its edges get a tombstone, so it can no longer log in."""

    async def work(client: Client) -> list[str]:
        found = await find_user(client, name)
        parents = [n.parent for n in await parent_edges(client, found.id)]
        if parent is not None:
            wanted = await resolve(client, parent)
            if wanted not in parents:
                raise click.ClickException(f"user {name!r} is not under {parent!r}")
            parents = [wanted]
        for edge_parent in parents:
            await client.delete_node(found.id, edge_parent)
        return parents

    removed = target.run(work)
    click.echo(f"removed {name} from {', '.join(removed)}", err=True)
