"""The node clients `siot serve` runs, in start order (they stop in reverse). One list, in one
place: a node type is added here, not registered by an import's side effect (siot/runtime.py
says what a node client is)."""

from __future__ import annotations

from siot.nodes.archive import archive_client
from siot.nodes.export import export_client
from siot.nodes.ingest import ingest_client
from siot.nodes.models import model_client
from siot.nodes.rules.manager import rules_client
from siot.runtime import NodeClient
from siot.sync.service import sync_service as sync_client
from siot.users import users_client

NODE_CLIENTS: tuple[NodeClient, ...] = (
    sync_client,  # first: it tells the others which subtrees belong to edges (ctx.manages)
    users_client,  # creates the first admin on a start without users
    model_client,  # before ingest: the data-model validator is in place before the first reading
    ingest_client,
    archive_client,
    export_client,  # reads the point log from its cursor: nothing written before it starts is missed
    rules_client,  # last: rules act on what the others run
)
