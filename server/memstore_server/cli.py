"""The ``memstore-server`` command: ``serve`` and ``migrate``.

Owns the process lifecycle: logging, the database (embedded or given), signals,
and the two-stage exit (the first SIGTERM/Ctrl-C drains within the grace period,
a second one stops at once).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

import grpc
import peewee
from grpc_health.v1 import health_pb2, health_pb2_grpc
from playhouse.pool import PooledDatabase

from memstore_server import __version__, logs, metrics, tracing, workers
from memstore_server.app import ListenError, create_server
from memstore_server.config import ConfigError, Settings, add_arguments, settings_from_args
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres, EmbeddedPostgresMissing
from memstore_server.errors import ServiceError
from memstore_server.migrations import migrate

logger = logging.getLogger("memstore_server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memstore-server", description="memstore gRPC server")
    parser.add_argument("--version", action="version", version=f"memstore-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "apply pending migrations, then serve gRPC until SIGTERM or Ctrl-C"),
        ("migrate", "apply pending schema migrations and exit"),
        ("healthcheck", "ask the server at --listen whether it is SERVING (exit 0) or not (exit 1)"),
    ):
        add_arguments(commands.add_parser(name, help=help_text), os.environ)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as error:
        parser.error(str(error))
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "healthcheck":
        return healthcheck(settings.listen)
    try:
        with database(settings) as (db, url):
            applied = migrate(db)
            logger.info("schema up to date (%d migration(s) applied now)", len(applied))
            if args.command == "serve" and settings.workers > 1:
                db.close_all()  # the supervisor holds no connection; each worker has its pool
                return workers.supervise(settings, url)
            if args.command == "serve":
                serve(settings, db)
    except (EmbeddedPostgresMissing, ServiceError, ListenError) as error:
        logger.error("%s", error)
        return 1
    except peewee.OperationalError as error:
        logger.error("cannot reach the database: %s", " ".join(str(error).split()))
        return 1
    return 0


def healthcheck(listen: str, timeout: float = 3.0) -> int:
    """0 when the server at ``listen`` reports SERVING over the gRPC health service, else 1.

    For container health checks and exec probes: a wildcard listen address is
    checked on the loopback interface.
    """
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            print(f"not serving: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[tuple[PooledDatabase, str]]:
    """The pooled database of ``settings`` and its URL, starting the embedded one when no URL is given."""
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
        logger.info("embedded PostgreSQL running under %s", settings.data_dir)
    db = open_database(url, pool_size=settings.db_pool_size, pool_timeout=settings.db_pool_timeout)
    try:
        yield db, url
    finally:
        db.close_all()
        if embedded is not None:
            embedded.stop()


def serve(settings: Settings, db: PooledDatabase, *, serve_metrics: bool = True) -> None:
    """Serve until a signal asks to stop, then drain in-flight RPCs and return.

    ``serve_metrics`` is False in a worker process: the supervisor serves the metrics of all.
    """
    tracer_provider = tracing.otlp_tracer_provider() if tracing.wanted(os.environ) else None
    server, port, health, database_health = create_server(settings, db, tracer_provider=tracer_provider)
    metrics_server = None
    if settings.metrics_listen is not None and serve_metrics:
        metrics_server = metrics.serve_metrics(settings.metrics_listen)
    server.start()
    database_health.start()
    if tracer_provider is not None:
        logger.info("tracing: exporting spans over OTLP")
    host = settings.listen.rpartition(":")[0]
    logger.info("memstore %s serving on %s:%d", __version__, host, port)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            logger.warning("second %s: stopping now", signal.Signals(signum).name)
            server.stop(0)
            return
        stopping.set()
        logger.info(
            "%s: refusing new calls, giving in-flight ones %.0fs",
            signal.Signals(signum).name,
            settings.grace_period,
        )
        health.enter_graceful_shutdown()  # NOT_SERVING from now on, whatever the database says
        server.stop(settings.grace_period)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.wait_for_termination()
    finally:
        database_health.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        if tracer_provider is not None:
            tracer_provider.shutdown()  # flushes the spans still buffered
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
