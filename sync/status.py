"""What `siot sync status` shows: one record per peer, kept up to date by the link (edge side)
or the server (upstream side), and served on `siot.sync.status` by the sync service."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class LinkState(StrEnum):
    CONNECTING = "connecting"  # no connection to the peer yet
    CONNECTED = "connected"  # attached and syncing
    DISCONNECTED = "disconnected"  # was connected; nats-py is reconnecting
    DETACHED = "detached"  # the upstream deleted this edge from its tree; waiting to be re-added
    DISABLED = "disabled"  # the sync node says disabled
    CONFLICT = "conflict"  # the upstream serves another instance under our id; retrying


class Role(StrEnum):
    UPSTREAM = "upstream"  # the peer is our upstream (we are the edge)
    DOWNSTREAM = "downstream"  # the peer is an edge of ours


@dataclass(slots=True)
class PeerStatus:
    peer: str
    role: Role
    state: LinkState = LinkState.CONNECTING
    uri: str = ""
    node: str = ""  # the sync node that configures this link (edge side)
    out_cursor: int = 0  # our log, acknowledged by the peer
    in_cursor: int = 0  # the peer's log, applied here
    shipped: int = 0  # rows sent since start
    received: int = 0  # rows applied since start
    last_error: str = ""
    last_error_ns: int = 0
    last_sync_ns: int = 0  # last time a sync round completed or a window was acknowledged
    last_seen_ns: int = 0
    digest: str = ""
    digest_ok: bool | None = None
    digest_ns: int = 0
    repairs: int = 0
    conflicts: int = 0  # upstream side: requests refused from another instance claiming this id
    last_conflict: str = ""
    last_conflict_ns: int = 0

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_ns = time.time_ns()

    def conflict(self, message: str) -> None:
        self.conflicts += 1
        self.last_conflict = message
        self.last_conflict_ns = time.time_ns()
        self.error(message)

    def synced(self) -> None:
        self.last_sync_ns = self.last_seen_ns = time.time_ns()

    def lag_wire(self, last_seq: int, now_ns: int) -> dict[str, Any]:
        """The record as `siot.stats` (`syncPeers`) and /metrics show it, computed without a
        query: `lagRows` counts our log entries after what the peer acknowledged (an upper
        bound, as the backlog of `siot sync status`: entries the peer does not need count until
        its next round scans past them); `lagSeconds` is 0 when nothing is waiting, else the
        time since the last completed round or acknowledged window (0 if there was none). A link
        that has not met its upstream yet (disabled, never connected) has no cursor: lag 0."""
        lag_rows = max(last_seq - self.out_cursor, 0) if self.peer else 0
        lag_s = (now_ns - self.last_sync_ns) / 1e9 if lag_rows and self.last_sync_ns else 0.0
        return {
            "peer": self.peer,
            "role": str(self.role),
            "node": self.node,
            "state": str(self.state),
            "lagRows": lag_rows,
            "lagSeconds": round(max(lag_s, 0.0), 3),
            "shipped": self.shipped,
            "received": self.received,
        }

    def to_wire(self, backlog: int) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "role": str(self.role),
            "state": str(self.state),
            "uri": self.uri,
            "node": self.node,
            "outCursor": self.out_cursor,
            "inCursor": self.in_cursor,
            "backlog": backlog,
            "shipped": self.shipped,
            "received": self.received,
            "lastError": self.last_error,
            "lastErrorTime": self.last_error_ns,
            "lastSyncTime": self.last_sync_ns,
            "lastSeenTime": self.last_seen_ns,
            "digest": self.digest,
            "digestOk": self.digest_ok,
            "digestTime": self.digest_ns,
            "repairs": self.repairs,
            "conflicts": self.conflicts,
            "lastConflict": self.last_conflict,
            "lastConflictTime": self.last_conflict_ns,
        }
