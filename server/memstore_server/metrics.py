"""Prometheus metrics: the standard gRPC server series, the pool, users streamed, build info.

The gRPC series carry the names and labels of go-grpc-prometheus
(grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds,
grpc_server_msg_received_total, grpc_server_msg_sent_total), which the usual
gRPC dashboards chart. They are recorded by interceptors.CallObserverInterceptor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from playhouse.pool import PooledDatabase
from prometheus_client import REGISTRY, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from memstore_server import __version__

logger = logging.getLogger(__name__)

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _RPC_LABELS)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status.",
    (*_RPC_LABELS, "grpc_code"),
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, streams included.",
    _RPC_LABELS,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
MSG_RECEIVED = Counter("grpc_server_msg_received_total", "Request messages received.", _RPC_LABELS)
MSG_SENT = Counter("grpc_server_msg_sent_total", "Response messages sent.", _RPC_LABELS)
USERS_STREAMED = Counter("memstore_users_streamed_total", "Users sent by ListUsersChunked.")
POOL_WAIT_SECONDS = Histogram(
    "memstore_db_pool_wait_seconds",
    "Time an RPC waited for a pooled database connection.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
BUILD = Info("memstore_build", "The running memstore.")
BUILD.info({"version": __version__})


class PoolCollector(Collector):
    """Connections of a pool, by state, read when scraped."""

    def __init__(self, pool: PooledDatabase) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "memstore_db_pool_connections", "Pooled database connections by state.", labels=["state"]
        )
        # Peewee keeps these as plain containers; len() of each is a consistent-enough snapshot.
        family.add_metric(["in_use"], len(self._pool._in_use))
        family.add_metric(["idle"], len(self._pool._connections))
        yield family
        limit = GaugeMetricFamily("memstore_db_pool_max_connections", "Size limit of the pool.")
        limit.add_metric([], self._pool._max_connections or 0)
        yield limit


def watch_pool(pool: PooledDatabase) -> PoolCollector:
    collector = PoolCollector(pool)
    REGISTRY.register(collector)
    return collector


def unwatch_pool(collector: PoolCollector) -> None:
    REGISTRY.unregister(collector)


def serve_metrics(listen: str) -> WSGIServer:
    """Serve /metrics over HTTP on ``listen`` (HOST:PORT) from a daemon thread."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"))
    logger.info("metrics on http://%s/metrics", listen)
    return server
