"""Edge <-> cloud sync by log shipping (DESIGN §5, docs/sync.md).

The upstream side (`SyncServer`) runs in every instance; the edge side (`UpstreamLink`) runs for
each `sync` node under the instance root. Both are started by the `sync` node client in
`siot.sync.service`.
"""

from siot.sync.link import LinkConfig, UpstreamLink
from siot.sync.server import SyncServer
from siot.sync.status import LinkState, PeerStatus, Role

__all__ = ["LinkConfig", "LinkState", "PeerStatus", "Role", "SyncServer", "UpstreamLink"]
