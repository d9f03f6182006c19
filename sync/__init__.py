"""Edge <-> cloud sync by log shipping (DESIGN §5, docs/sync.md).

The upstream side (`siot.sync.server.SyncServer`) runs in every instance; the edge side
(`siot.sync.link.UpstreamLink`) runs for each `sync` node under the instance root. Both are
started by the `sync` node client in `siot.sync.service`. Nothing is imported here, so the CLI's
sync commands load the wire protocol (`siot.sync.protocol`) without the daemon.
"""
