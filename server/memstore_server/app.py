"""Assembles one gRPC server: servicers, health checking, reflection, interceptors, TLS.

``create_server`` binds but does not start, so tests can bind port 0, read the
real port, and start it; signals and the process lifecycle live in ``cli``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import NamedTuple

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from memstore.v1 import sessions_pb2, users_pb2
from opentelemetry import trace
from playhouse.pool import PooledDatabase

from memstore_server import tracing
from memstore_server.auth import Authenticator, authentication, digest, read_keys_file
from memstore_server.config import Settings
from memstore_server.decoding import reject_undecodable, tolerant
from memstore_server.health import DatabaseHealth
from memstore_server.interceptors import Wrapper, WrappingInterceptor, guard_errors, observe
from memstore_server.models import database_proxy
from memstore_server.servicers.sessions import SessionServicer
from memstore_server.servicers.users import UserServicer
from memstore_server.store.sessions import SessionStore
from memstore_server.store.users import UserStore

logger = logging.getLogger(__name__)

USER_SERVICE = users_pb2.DESCRIPTOR.services_by_name["UserService"]
SESSION_SERVICE = sessions_pb2.DESCRIPTOR.services_by_name["SessionService"]
SERVICE_NAMES = (USER_SERVICE.full_name, SESSION_SERVICE.full_name)


def _serializer(message_class: type[Message]) -> Callable[[Message | bytes], bytes]:
    """Serializes a response message, or passes through one that a servicer already serialized."""
    serialize = message_class.SerializeToString

    def to_bytes(response: Message | bytes) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return to_bytes


def add_service(server: grpc.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer``'s methods for ``service``, as the generated add_*_to_server does,
    except that a handler may return its response already serialized (bytes)."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=request_class.FromString,
            response_serializer=_serializer(response_class),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class ListenError(RuntimeError):
    """The listen address could not be bound."""


class ServerHandle(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer
    # Not started by create_server: the process starts it beside the server.
    database_health: DatabaseHealth


def authenticator_for(settings: Settings) -> Authenticator:
    digests = [digest(key) for key in settings.api_keys]
    if settings.api_keys_file is not None:
        digests.extend(read_keys_file(settings.api_keys_file))
    return Authenticator(digests, settings.jwt_secret)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def new_grpc_server(
    settings: Settings, *, tracer_provider: trace.TracerProvider | None = None
) -> grpc.Server:
    """The gRPC server every memstore runs on: options, thread pool and interceptors, no services.

    Apart from create_server, the benchmark uses it to measure this same stack with
    a servicer that needs no database.
    """
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # One process per port unless several are asked for: a second server on a
        # taken port must fail, not silently share it.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # Accept the keepalive pings of memstore clients (every 60 s) on long streams.
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
        *settings.extra_grpc_options,
    ]
    authenticator = authenticator_for(settings)
    wrappers: list[Wrapper] = [observe, guard_errors]
    if authenticator.enabled:
        wrappers.append(authentication(authenticator))
    wrappers.append(reject_undecodable)  # innermost: see decoding.py
    interceptors: list[grpc.ServerInterceptor] = []  # type: ignore[type-arg]
    if tracer_provider is not None:  # outermost, so its span covers everything below
        interceptors.append(tracing.instrument(tracer_provider))
    interceptors.append(WrappingInterceptor(wrappers, deserializer=tolerant))
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options,
    )


def create_server(
    settings: Settings, db: PooledDatabase, *, tracer_provider: trace.TracerProvider | None = None
) -> ServerHandle:
    """Build and bind (not start) a server for ``settings`` on the migrated database ``db``.

    With a ``tracer_provider``, every RPC and the database calls beneath it are traced.
    """
    database_proxy.initialize(db)
    server = new_grpc_server(settings, tracer_provider=tracer_provider)
    add_service(
        server, USER_SERVICE, UserServicer(UserStore(db, max_message_bytes=settings.max_message_bytes))
    )
    add_service(server, SESSION_SERVICE, SessionServicer(SessionStore(db)))

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    database_health = DatabaseHealth(db, health_servicer, SERVICE_NAMES, settings.health_interval)

    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise ListenError(
            f"cannot listen on {settings.listen}: is the address in use, or not this host's?"
        ) from error
    logger.info(
        "bound %s (port %d, %s, auth %s)",
        settings.listen,
        port,
        "mutual TLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext",
        "on" if settings.api_keys or settings.api_keys_file or settings.jwt_secret else "off",
    )
    return ServerHandle(server, port, health_servicer, database_health)
