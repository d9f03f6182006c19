"""What every client command shares: connection options, `--json`, value parsing and output.

Client commands talk to a running instance over NATS only (never to its SQLite file), so they
work the same against a local daemon, a remote one, or a cloud instance.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click

from siot import credfile, subjects
from siot.client import DEFAULT_URL, Client, NodeInfo
from siot.codec import parse_rfc3339_ns
from siot.errors import RequestFailed, SiotError
from siot.points import DEFAULT_KEY, Point, check_token

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT_S = 10.0
ROOT_ALIAS = "root"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)$")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86_400 * 10**9,
    "w": 7 * 86_400 * 10**9,
}


async def _quiet_error(exc: Exception) -> None:
    """Connection errors surface as the exception of the command; nats-py need not log them too."""


@dataclass(slots=True, frozen=True)
class Target:
    """Where a client command connects, from --url/--token/--timeout/--credential/--tls-*
    (or SIOT_URL, ...); `credential` None: anonymous or the token."""

    url: str
    token: str
    timeout_s: float
    credential: credfile.Credential | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def run(self, work: Callable[[Client], Awaitable[T]], *, reconnect: bool = False) -> T:
        """Connect, run `work(client)` and close; siot and connection errors become one-line
        `click.ClickException`s. `reconnect` (for long-running commands) reconnects forever."""

        async def main() -> T:
            client = await Client.connect(
                self.url,
                name="siot-cli",
                token=self.token or None,
                credential=self.credential,
                tls_ca=self.tls_ca,
                tls_cert=self.tls_cert,
                tls_key=self.tls_key,
                timeout_s=self.timeout_s,
                reconnect_forever=reconnect,  # long-running commands ride out instance restarts
                allow_reconnect=reconnect,
                error_cb=_quiet_error,
            )
            try:
                return await work(client)
            finally:
                await client.close()

        try:
            return asyncio.run(main())
        except SiotError as exc:
            raise click.ClickException(str(exc)) from exc


def make_target(
    url: str | None,
    token: str,
    timeout_s: float,
    *,
    data_dir: str | None = None,
    credential_file: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Target:
    """Who to be towards which instance, in this order: a credential file; SIOT_USER and
    SIOT_SECRET (a secret is never an argument: `ps` would show it); the token; else the admin
    credential `siot serve --data DIR` keeps, when the URL is this machine (the file's URL and
    TLS certificate are used when none is given)."""
    credential = None
    try:
        if credential_file:
            credential = credfile.load(credential_file)
        elif os.environ.get("SIOT_USER") and os.environ.get("SIOT_SECRET"):
            credential = credfile.Credential(os.environ["SIOT_USER"], os.environ["SIOT_SECRET"])
        elif not token:
            admin = credfile.local_admin(data_dir, url or DEFAULT_URL)
            if admin is not None:
                credential = admin
                url = url or admin.url or None
                tls_ca = tls_ca or admin.tls_ca or None
                tls_cert = tls_cert or admin.tls_cert or None
                tls_key = tls_key or admin.tls_key or None
    except SiotError as exc:
        raise click.ClickException(str(exc)) from exc
    return Target(
        url=url or DEFAULT_URL,
        token=token,
        timeout_s=timeout_s,
        credential=credential,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def client_options(fn: F) -> F:
    """Add --url, --token, --timeout, --data, --credential and --tls-*; the command receives
    them as one `target: Target`."""

    @click.option(
        "--url",
        envvar="SIOT_URL",
        default=None,
        help=f"NATS URL of the siot instance (nats:// or tls://). Default: the one the admin "
        f"credential of --data names, else {DEFAULT_URL}.",
    )
    @click.option(
        "--data",
        "data_dir",
        envvar="SIOT_DATA",
        default="./data",
        show_default=True,
        help="Data directory of a local `siot serve`: its admin credential is used for a local URL.",
    )
    @click.option(
        "--credential",
        "credential_file",
        envvar="SIOT_CREDENTIAL",
        default=None,
        type=click.Path(dir_okay=False),
        help='JSON file {"user", "secret"} to log in with (e.g. a device credential); or set '
        "SIOT_USER and SIOT_SECRET.",
    )
    @click.option("--tls-ca", envvar="SIOT_TLS_CA", default=None, help="CA (or server certificate) to trust.")
    @click.option("--tls-cert", envvar="SIOT_TLS_CERT", default=None, help="Client certificate, if asked.")
    @click.option("--tls-key", envvar="SIOT_TLS_KEY", default=None, help="Key of --tls-cert.")
    @click.option(
        "--token", envvar="SIOT_AUTH_TOKEN", default="", help="NATS auth token, if the instance needs one."
    )
    @click.option(
        "--timeout",
        "timeout_s",
        envvar="SIOT_TIMEOUT",
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        type=float,
        help="Seconds to wait for a connection or a reply.",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        url: str | None,
        token: str,
        timeout_s: float,
        data_dir: str,
        credential_file: str | None,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        **kwargs: Any,
    ) -> Any:
        target = make_target(
            url,
            token,
            timeout_s,
            data_dir=data_dir,
            credential_file=credential_file,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
        return fn(*args, target=target, **kwargs)

    return wrapper  # type: ignore[return-value]


json_option = click.option(
    "json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print JSON (for scripts) instead of text."
)


async def resolve(client: Client, node: str) -> str:
    """`root` names the instance's root node; anything else is taken as a node id."""
    if node == ROOT_ALIAS:
        return await client.load_root()
    return subjects.check_node_token(node)


async def parent_edges(client: Client, node: str, *, deleted: bool = False) -> list[NodeInfo]:
    """`node` as seen under each of its parents; empty when the instance does not know it."""
    try:
        return await client.nodes(subjects.ALL, node, deleted=deleted)
    except RequestFailed as exc:
        if str(exc).startswith("unknown node"):
            return []
        raise


async def live_parents(client: Client, node: str) -> list[str]:
    """Parents of `node` over undeleted edges."""
    return [n.parent for n in await parent_edges(client, node)]


async def sole_parent(client: Client, node: str, option: str) -> str:
    """The one live parent of `node`, or a user error asking for `option` when there are several."""
    parents = await live_parents(client, node)
    if not parents:
        raise click.ClickException(f"node '{node}' has no live parent")
    if len(parents) > 1:
        raise click.ClickException(f"node '{node}' has several parents ({', '.join(parents)}); give {option}")
    return parents[0]


# ---- values and assignments ----


def parse_value(text: str) -> Any:
    """3 -> int, 3.5 -> float, true/false -> bool, "quoted" -> the string inside, else the string."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def split_name(name: str) -> tuple[str, str]:
    """`type[.key]` -> (type, key); raises `click.BadParameter` for illegal tokens."""
    ptype, _, key = name.partition(".")
    try:
        check_token(ptype, field="type", allow_empty=False)
        check_token(key, field="key", allow_empty=True)
    except SiotError as exc:
        raise click.ClickException(f"{name!r}: {exc}") from exc
    return ptype, key or DEFAULT_KEY


def parse_assignments(assignments: tuple[str, ...], *, origin: str = "") -> list[Point]:
    """`type[.key]=value` arguments -> points stamped by the store (time 0)."""
    points = []
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.ClickException(f"{item!r} is not type[.key]=value")
        ptype, key = split_name(name)
        points.append(Point(type=ptype, key=key, value=parse_value(raw), origin=origin))
    return points


def point_name(p: Point) -> str:
    return p.type if p.key == DEFAULT_KEY else f"{p.type}.{p.key}"


# ---- times ----


def parse_time_ns(text: str, *, now_ns: int | None = None) -> int:
    """A duration ago (`90s`, `15m`, `1h`, `2d`), `now`, or an RFC 3339 time -> ns since the epoch."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if text == "now":
        return now_ns
    match = _DURATION.match(text)
    if match:
        return now_ns - int(float(match.group(1)) * _UNIT_NS[match.group(2)])
    try:
        return parse_rfc3339_ns(text)
    except SiotError as exc:
        raise click.ClickException(f"{text!r} is neither a duration like 1h nor an RFC 3339 time") from exc


def format_time(time_ns: int) -> str:
    """Local time with milliseconds, e.g. 2024-05-01 12:00:03.251."""
    return datetime.fromtimestamp(time_ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# ---- output ----


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return json.dumps(value, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# JSON and YAML (de)serialisers recurse once or more per level of nesting, and an exported tree
# nests two levels per node level: Python's default limit (1,000 frames) broke `siot export` at
# ~300 levels. Documents are (de)serialised on a thread with a stack big enough for this many.
DEEP_RECURSION_LIMIT = 200_000
DEEP_STACK_BYTES = 512 * 1024 * 1024  # virtual: pages are only touched as deep as the document


def deeply(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on a thread whose stack and recursion limit fit a document nested thousands deep."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(max(old_limit, DEEP_RECURSION_LIMIT))
    threading.stack_size(DEEP_STACK_BYTES)
    try:
        worker = threading.Thread(target=run, name="siot deep document")
        worker.start()
    finally:
        threading.stack_size(old_stack)
    worker.join()
    sys.setrecursionlimit(old_limit)
    if error:
        raise error[0]
    return result[0]


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """JSON for --json output; bytes values become base64 strings."""
    return deeply(json.dumps, obj, indent=indent, default=_json_default)


def point_json(p: Point) -> dict[str, Any]:
    return p.to_wire()


def node_json(node: NodeInfo) -> dict[str, Any]:
    return {
        "id": node.id,
        "type": node.type,
        "parent": node.parent,
        "points": [point_json(p) for p in node.points],
        "edgePoints": [point_json(p) for p in node.edge_points],
    }


def node_label(node: NodeInfo) -> str:
    """`type "description" id` — how a node is named in text output."""
    description = f' "{node.description}"' if node.description else ""
    return f"{node.type}{description} {node.id}"
