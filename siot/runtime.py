"""The node-client runtime: what the daemon hands each of its node clients, and what a node
client is.

A node client is an async context manager factory `client(ctx)`: entered in start order once the
store, the write path and the APIs are up, left in reverse order before they stop. It finds the
nodes of its type(s) in `ctx.store.tree`, follows their changes through `ctx.client.watch` or a
`siot.nodes.manager.NodeManager` (one runner per node, typed config from
`siot.nodes.config.decode_config`), reads and writes through `ctx.client` (in process, DESIGN §1)
with `origin` = the writing node's id. The daemon's node clients are listed, in start order, in
siot/node_clients.py; adding a node type is adding its factory there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS

from siot.api import Api
from siot.broker import Broker
from siot.bus import ChangeBus
from siot.local import LocalClient
from siot.store import Store
from siot.write_path import WritePath

if TYPE_CHECKING:
    import ssl

    from siot.app import ServeConfig
    from siot.credentials import CredentialService
    from siot.credfile import Credential


@dataclass(slots=True)
class AppContext:
    """What a node client gets: the config, the store (for reads and its tree), the in-process
    client (every write goes through the write path), the write path itself (to hook validators
    onto it), the NATS connection for traffic with the outside (raw device messages, sync, replies
    to devices), and the NATS API (to add counters to `siot.stats`)."""

    config: ServeConfig
    store: Store
    write_path: WritePath
    bus: ChangeBus
    client: LocalClient
    nc: NATS
    broker_url: str
    api: Api
    # Roots of other instances' subtrees replicated here (edges synced up to this instance).
    downstream_roots: set[str] = field(default_factory=set)
    # Device and edge credentials (siot/credentials.py); None in a bare test context.
    credentials: CredentialService | None = None
    # How the daemon itself reaches its own broker (the admin credential, the TLS context), for
    # connections besides `nc` (the MQTT listener); None: open / plain.
    admin: Credential | None = None
    own_tls: ssl.SSLContext | None = None
    # The embedded nats-server (None with --nats-url): its state and restarts are on /metrics.
    broker: Broker | None = None

    @property
    def instance_id(self) -> str:
        return self.store.instance_id

    def manages(self, node: str) -> bool:
        """Whether this instance's node clients act on `node`. Not for a node inside an edge's
        replicated subtree: the edge runs its own rules, ingest and archive, and running them in
        the cloud as well would fire every action twice."""
        roots = self.downstream_roots
        return not roots or (node not in roots and roots.isdisjoint(self.store.tree.ancestors(node)))


# A node client: entered when the daemon has started, left before it stops.
NodeClient = Callable[[AppContext], AbstractAsyncContextManager[Any]]
