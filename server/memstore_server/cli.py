"""The ``memstore-server`` command: ``serve``, ``migrate`` and ``healthcheck``.

It parses the command line and hands over: the process lifecycle (database,
serving, signals) is lifecycle.py's, several processes are workers.py's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import grpc
import peewee
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memstore_server import __version__, lifecycle, logs, workers
from memstore_server.app import ListenError
from memstore_server.config import OPTIONS, ConfigError, add_arguments, check_address, settings_from_args
from memstore_server.embedded import EmbeddedPostgresMissing
from memstore_server.errors import ServiceError
from memstore_server.migrations import migrate

logger = logging.getLogger("memstore_server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memstore-server", description="memstore gRPC server")
    parser.add_argument("--version", action="version", version=f"memstore-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "apply pending migrations, then serve gRPC until SIGTERM, Ctrl-C or SIGHUP"),
        ("migrate", "apply pending schema migrations and exit"),
    ):
        add_arguments(commands.add_parser(name, help=help_text), os.environ)
    probe = commands.add_parser(
        "healthcheck",
        help="ask the server at --listen whether it is SERVING (exit 0) or not (exit 1)",
        description="Ask the gRPC health service of the server at --listen (in plaintext; "
        "a wildcard host is asked on 127.0.0.1) whether it is SERVING: exit 0, else exit 1.",
    )
    add_arguments(
        probe, os.environ, only=("listen",), helps={"listen": "address of the server to ask, HOST:PORT"}
    )
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)")
    args = parser.parse_args(argv)
    if args.command == "healthcheck":
        try:
            check_address(OPTIONS["listen"].names, args.listen)
        except ConfigError as error:
            probe.error(str(error))
        return healthcheck(args.listen, args.timeout)
    try:
        settings = settings_from_args(args)
    except ConfigError as error:
        parser.error(str(error))
    logs.configure(settings.log_level, settings.log_format)
    try:
        with lifecycle.database(settings) as (db, url):
            applied = migrate(db)
            logger.info("schema up to date (%d migration(s) applied now)", len(applied))
            if args.command == "serve" and settings.workers > 1:
                db.close_all()  # the supervisor holds no connection; each worker has its pool
                return workers.supervise(settings, url)
            if args.command == "serve":
                lifecycle.run(settings, db)
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
    target = f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            code = error.code().name
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                print(
                    f"not serving: nothing answered at {target} within {timeout:g}s ({code}); "
                    "is memstore-server running there? (--listen / MEMSTORE_LISTEN)",
                    file=sys.stderr,
                )
            else:
                print(f"not serving: {target} answered {code}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
