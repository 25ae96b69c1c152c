"""Assembles one gRPC server: servicers, health checking, reflection and interceptors.

``create_server`` binds but does not start, so tests can bind port 0, read the
real port, and start it; signals and the process lifecycle live in ``cli``.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import NamedTuple

import grpc
import peewee
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from memstore_server.config import Settings
from memstore_server.interceptors import AccessLogInterceptor, ErrorInterceptor
from memstore_server.models import database_proxy
from memstore_server.servicers.sessions import SessionServicer
from memstore_server.servicers.users import UserServicer
from memstore_server.store.sessions import SessionStore
from memstore_server.store.users import UserStore

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
)


class ListenError(RuntimeError):
    """The listen address could not be bound."""


class ServerHandle(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer


def create_server(settings: Settings, db: peewee.Database) -> ServerHandle:
    """Build and bind (not start) a server for ``settings`` on the migrated database ``db``."""
    database_proxy.initialize(db)
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        # One process per port unless several are asked for: a second server on a
        # taken port must fail, not silently share it.
        ("grpc.so_reuseport", 0),
        *settings.extra_grpc_options,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=[AccessLogInterceptor(), ErrorInterceptor()],
        options=options,
    )
    users_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(UserStore(db)), server)
    sessions_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(SessionStore(db)), server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise ListenError(
            f"cannot listen on {settings.listen}: is the address in use, or not this host's?"
        ) from error
    logger.info("bound %s (port %d)", settings.listen, port)
    return ServerHandle(server, port, health_servicer)
