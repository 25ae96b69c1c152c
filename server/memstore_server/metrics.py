"""Prometheus metrics: the standard gRPC server series, the pools, the replica, users streamed, build info.

The gRPC series carry the names and labels of go-grpc-prometheus
(grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds,
grpc_server_msg_received_total, grpc_server_msg_sent_total), which the usual
gRPC dashboards chart. They are recorded by observe.py (and streams.py for stream messages).

With several worker processes, prometheus-client's multiprocess mode (chosen by
PROMETHEUS_MULTIPROC_DIR, which the supervisor sets before starting the workers)
keeps every worker's values in shared files, and the supervisor serves their sum;
so gauges here say how to combine across processes, and nothing uses the Info
type, which that mode lacks.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from playhouse.pool import PooledDatabase
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

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
OPEN_STREAMS = Gauge(
    "memstore_open_streams",
    "Response streams open now (bounded by --max-concurrent-streams per process).",
    multiprocess_mode="livesum",
)
STREAM_HELD_BYTES = Gauge(
    "memstore_stream_held_bytes",
    "Bytes response streams have read and gRPC has not yet taken (bounded by --stream-memory per process).",
    multiprocess_mode="livesum",
)
STREAM_MEMORY_WAITS = Counter(
    "memstore_stream_memory_waits_total",
    "Streams that waited for room under --stream-memory before their first read.",
)
USERS_STREAMED = Counter("memstore_users_streamed_total", "Users sent by ListUsersChunked and ExportUsers.")
POOL_WAIT_SECONDS = Histogram(
    "memstore_db_pool_wait_seconds",
    "Time a database call waited for a free database thread (and so connection).",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
POOL_CONNECTIONS = Gauge(
    "memstore_db_pool_connections",
    "Pooled database connections by pool (primary, replica) and state, summed over worker processes.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "memstore_db_pool_max_connections",
    "Size limit of the pools, by pool (primary, replica), summed over worker processes.",
    ["pool"],
    multiprocess_mode="livesum",
)
REPLICA_AVAILABLE = Gauge(
    "memstore_db_replica_available",
    "1 while bulk reads go to the read replica (--read-database-url), 0 while they go to the primary; "
    "the lowest of the worker processes.",
    multiprocess_mode="livemin",
)
REPLICA_LAG_SECONDS = Gauge(
    "memstore_db_replica_lag_seconds",
    "How far the read replica is behind (0 when it has replayed all it received); NaN when it cannot "
    "be told (unreachable); the highest of the worker processes.",
    multiprocess_mode="livemax",
)
BUILD_INFO = Gauge(
    "memstore_build_info", "The running memstore; always 1.", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__).set(1)


def observe_pool(pool: PooledDatabase) -> None:
    """Publish the pool's state; called as connections are checked out and returned."""
    role = getattr(pool, "role", "primary")  # database.Pool says which it is
    # Peewee keeps these as plain containers; len() of each is a consistent-enough snapshot.
    POOL_CONNECTIONS.labels(role, "in_use").set(len(pool._in_use))
    POOL_CONNECTIONS.labels(role, "idle").set(len(pool._connections))
    POOL_MAX.labels(role).set(pool._max_connections or 0)


def registry_for_workers() -> CollectorRegistry:
    """A registry that sums what every worker process recorded (multiprocess mode)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges from the sums."""
    multiprocess.mark_process_dead(pid)


def serve_metrics(listen: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve /metrics over HTTP on ``listen`` (HOST:PORT) from a daemon thread."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    logger.info("metrics on http://%s/metrics", listen)
    return server
