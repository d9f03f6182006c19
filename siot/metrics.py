"""Prometheus metrics of a running daemon (`GET /metrics`, DESIGN §9), in the text format, with
prometheus-client.

Why a custom collector and no counters of prometheus-client's own: the daemon already counts
everything once, for `siot.stats` (siot/api.py `Api.stats`: the store, the write path, and the
sources node clients add: `ingest`, `syncPeers`, `rules`, `export`). The collector reads that
same snapshot at each scrape, so /metrics and `siot stats` always agree, and the hot path pays
nothing for Prometheus. What `siot.stats` does not hold is read here from its owner: the WAL's
size, the embedded nats-server's state, the process's CPU and memory (prometheus-client's
process collector: `process_cpu_seconds_total`, `process_resident_memory_bytes`, ...).

Names follow Prometheus's conventions: `siot_` prefix, base units (`_bytes`, `_seconds`),
counters end in `_total`. Labels carry ids and fixed words (a reason, a state, a role), never a
point's value nor a secret; docs/metrics.md lists every metric.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from siot.runtime import AppContext
from siot.sync.status import LinkState

# What `generate_latest` writes: the classic text format, understood by every Prometheus 2.x
# (prometheus-client's own CONTENT_TYPE_LATEST names a newer version in recent releases).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUSY_REASON = "store_busy"  # refused with a reply (or an exception in process): the queue was full
BUSY_DROPPED_REASON = "store_busy_dropped"  # dropped without a word: no reply subject


def registry(ctx: AppContext) -> CollectorRegistry:
    """A registry with the daemon's collector and the process's, for one daemon."""
    result = CollectorRegistry(auto_describe=False)
    result.register(SiotCollector(ctx))
    ProcessCollector(registry=result)
    return result


def render(metrics: CollectorRegistry) -> bytes:
    """The text format (version 0.0.4) of every metric, collected now."""
    return generate_latest(metrics)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class SiotCollector(Collector):
    """Renders `Api.stats()` and a few live figures as metric families at each scrape."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        stats = self.ctx.api.stats()
        yield InfoMetricFamily(
            "siot_instance", "This instance (its root node id).", value={"id": stats["instance"]}
        )
        yield _gauge("siot_ready", "1 once every node client has started.", int(bool(stats["ready"])))
        yield from self._write_path(stats)
        yield from self._store()
        yield from self._broker()
        yield from _ingest(stats.get("ingest"))
        yield from _sync(stats.get("syncPeers"), stats.get("syncErrors"))
        yield from _rules(stats.get("rules"))
        yield from _export(stats.get("export"))

    def _write_path(self, stats: dict[str, Any]) -> Iterable[Metric]:
        yield _counter(
            "siot_points_accepted",
            "Points committed that changed a current value (siot stats acceptedPoints).",
            stats["acceptedPoints"],
        )
        rejected = CounterMetricFamily(
            "siot_rejected_requests",
            "Writes and requests refused, by reason: the error's kind (siot stats rejectedByReason, "
            "busyRefused, busyDropped).",
            labels=["reason"],
        )
        for reason, count in sorted(stats["rejectedByReason"].items()):
            rejected.add_metric([reason], count)
        rejected.add_metric([BUSY_REASON], stats["busyRefused"])
        rejected.add_metric([BUSY_DROPPED_REASON], stats["busyDropped"])
        yield rejected
        yield _counter("siot_commits", "SQLite transactions that committed writes.", stats["commits"])
        yield _counter(
            "siot_committed_writes",
            "Writes those transactions carried (per commit: the group size).",
            stats["committedWrites"],
        )
        yield _gauge("siot_commit_queue_points", "Points waiting for the next commit.", stats["queuedPoints"])
        yield _gauge("siot_log_last_seq", "Sequence number of the newest point log entry.", stats["lastSeq"])
        yield _gauge("siot_nodes", "Nodes in the tree (deleted ones included).", stats["nodes"])

    def _store(self) -> Iterable[Metric]:
        path = self.ctx.store.config.path
        yield _gauge("siot_db_bytes", "Size of the SQLite database file.", _size(path))
        yield _gauge("siot_wal_bytes", "Size of the SQLite write-ahead log.", _size(path + "-wal"))

    def _broker(self) -> Iterable[Metric]:
        yield _gauge(
            "siot_nats_connected",
            "1 while the daemon's own NATS connection is up.",
            int(self.ctx.nc.is_connected),
        )
        broker = self.ctx.broker
        if broker is not None:  # with --nats-url there is no embedded nats-server
            yield _gauge(
                "siot_nats_server_up", "1 while the embedded nats-server runs and is ready.", int(broker.up)
            )
            yield _counter(
                "siot_nats_server_restarts",
                "Times the embedded nats-server exited unexpectedly and was restarted.",
                broker.restarts,
            )


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _ingest(stats: dict[str, int] | None) -> Iterable[Metric]:
    if stats is None:
        return
    yield _counter("siot_ingest_messages", "Device messages the ingest nodes received.", stats["received"])
    yield _counter(
        "siot_ingest_refused_messages",
        "Device messages refused (bad input, deleted device, device limit, data model).",
        stats["refused"],
    )


def _sync(peers: list[dict[str, Any]] | None, errors: dict[str, int] | None) -> Iterable[Metric]:
    if peers is None:
        return
    labels = ["peer", "role", "node"]
    lag_rows = GaugeMetricFamily(
        "siot_sync_peer_lag_rows",
        "Log entries the peer has not acknowledged (an upper bound: entries it does not need count "
        "until its next round).",
        labels=labels,
    )
    lag_s = GaugeMetricFamily(
        "siot_sync_peer_lag_seconds",
        "0 when the peer is caught up, else seconds since its last completed round.",
        labels=labels,
    )
    shipped = CounterMetricFamily("siot_sync_peer_shipped_rows", "Log rows sent to the peer.", labels=labels)
    received = CounterMetricFamily(
        "siot_sync_peer_received_rows", "Log rows applied from the peer.", labels=labels
    )
    state = GaugeMetricFamily(
        "siot_sync_peer_state",
        "1 for the peer's connection state, 0 for the others.",
        labels=[*labels, "state"],
    )
    for peer in peers:
        values = [peer["peer"], peer["role"], peer["node"]]
        lag_rows.add_metric(values, peer["lagRows"])
        lag_s.add_metric(values, peer["lagSeconds"])
        shipped.add_metric(values, peer["shipped"])
        received.add_metric(values, peer["received"])
        for name in LinkState:
            state.add_metric([*values, str(name)], int(peer["state"] == name))
    yield from (lag_rows, lag_s, shipped, received, state)
    yield _counter(
        "siot_sync_refused_requests",
        "Sync requests from edges refused here (siot stats syncErrors, summed over edges).",
        sum((errors or {}).values()),
    )


def _rules(stats: dict[str, int] | None) -> Iterable[Metric]:
    if stats is None:
        return
    yield _gauge("siot_rules_loaded", "Rules loaded and running.", stats["loaded"])
    yield _counter("siot_rule_evaluations", "Evaluations of loaded rules.", stats["evaluations"])
    yield _counter(
        "siot_rule_actions", "Actions started (setValue written, notification sent off).", stats["actionsRun"]
    )
    yield _counter(
        "siot_rule_dropped_changes",
        "Changes the rules engine dropped because it fell behind.",
        stats["droppedChanges"],
    )
    yield _counter(
        "siot_notifications_sent", "Notification deliveries that succeeded.", stats["notificationsSent"]
    )
    yield _counter(
        "siot_notifications_failed",
        "Notification deliveries that failed after their retries, and notifications with no service.",
        stats["notificationsFailed"],
    )


def _export(stats: dict[str, dict[str, Any]] | None) -> Iterable[Metric]:
    if stats is None:
        return
    labels = ["node"]
    families = {
        "lagRows": GaugeMetricFamily(
            "siot_export_lag_rows",
            "Log entries after the exporter's cursor (an upper bound of lines still to write).",
            labels=labels,
        ),
        "lagSeconds": GaugeMetricFamily(
            "siot_export_lag_seconds",
            "0 when the exporter is caught up, else seconds since it last was.",
            labels=labels,
        ),
        "exportedLines": CounterMetricFamily(
            "siot_export_lines", "Lines the database acknowledged.", labels=labels
        ),
        "rejectedRequests": CounterMetricFamily(
            "siot_export_rejected_requests",
            "Requests with lines the database refused as bad (400/422).",
            labels=labels,
        ),
        "failedRequests": CounterMetricFamily(
            "siot_export_failed_requests",
            "Requests that wrote nothing (database down, credentials): retried.",
            labels=labels,
        ),
    }
    up = GaugeMetricFamily(
        "siot_export_up", "1 while the database takes the exporter's writes.", labels=labels
    )
    for node, status in stats.items():
        for name, family in families.items():
            family.add_metric([node], status[name])
        up.add_metric([node], int(status["state"] == "ok"))
    yield from families.values()
    yield up


__all__ = [
    "BUSY_DROPPED_REASON",
    "BUSY_REASON",
    "CONTENT_TYPE",
    "CollectorRegistry",
    "SiotCollector",
    "registry",
    "render",
]
