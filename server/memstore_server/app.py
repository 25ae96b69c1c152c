"""Assembles one grpc.aio server: servicers, health checking, reflection, wrappers, TLS.

``create_server`` binds but does not start, so tests can bind port 0, read the
real port, and start it; it must run on the event loop that will serve. Signals
and the process lifecycle live in lifecycle.py.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from memstore.v1 import sessions_pb2, users_pb2
from opentelemetry import trace
from playhouse.pool import PooledDatabase

from memstore_server import message_limit, tracing
from memstore_server.auth import Authenticator, JwtRules, authentication, digest, read_keys_file
from memstore_server.blocking import Blocking
from memstore_server.boundary import guard_errors
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.decoding import reject_undecodable, tolerant
from memstore_server.exporting import Export, read_ahead_for
from memstore_server.feed import ChangeFeed
from memstore_server.handlers import HandlerTable, Wrapper
from memstore_server.health import DatabaseHealth
from memstore_server.models import database_proxy
from memstore_server.observe import observe
from memstore_server.reflection_pool import DocumentedPool
from memstore_server.replica import Reads, Replica
from memstore_server.servicers.sessions import SessionServicer
from memstore_server.servicers.users import UserServicer
from memstore_server.store.changes import ChangeStore
from memstore_server.store.exports import UserExports
from memstore_server.store.sessions import SessionStore
from memstore_server.store.users import UserStore
from memstore_server.stream_memory import StreamMemory
from memstore_server.streams import StreamLimits
from memstore_server.watching import Watch

logger = logging.getLogger(__name__)

USER_SERVICE = users_pb2.DESCRIPTOR.services_by_name["UserService"]
SESSION_SERVICE = sessions_pb2.DESCRIPTOR.services_by_name["SessionService"]
SERVICE_NAMES = (USER_SERVICE.full_name, SESSION_SERVICE.full_name)


class ListenError(RuntimeError):
    """The listen address could not be bound."""


class ServerHandle(NamedTuple):
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    # Not started by create_server: the process starts it beside the server.
    database_health: DatabaseHealth
    # The threads that run database calls; shut down after the server stops.
    blocking: Blocking
    streams: StreamLimits
    # Started beside the server (its pruner runs from then on); stopped before the threads.
    feed: ChangeFeed


def authenticator_for(settings: Settings) -> Authenticator:
    digests = [digest(key) for key in settings.api_keys]
    if settings.api_keys_file is not None:
        digests.extend(read_keys_file(settings.api_keys_file))
    rules = None
    if settings.jwt_secret is not None:
        rules = JwtRules(
            settings.jwt_secret,
            allow_no_exp=settings.jwt_allow_no_exp,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    return Authenticator(digests, rules)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def grpc_options(settings: Settings) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # One process per port unless several are asked for: a second server on a
        # taken port must fail, not silently share it.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # Accept the keepalive pings of memstore clients (every 60 s) on long streams.
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
        *settings.extra_grpc_options,
    ]


def read_replica(settings: Settings) -> Replica | None:
    """The read replica of ``settings`` (its pool connects lazily), or None without one."""
    if settings.read_database_url is None:
        return None
    pool = open_database(
        settings.read_database_url,
        pool_size=settings.read_pool_size,
        pool_timeout=settings.db_pool_timeout,
        prepared_statements=settings.prepared_statements,
        role="replica",
    )
    return Replica(pool, max_lag=settings.max_replica_lag, interval=settings.health_interval)


def create_server(
    settings: Settings, db: PooledDatabase, *, tracer_provider: trace.TracerProvider | None = None
) -> ServerHandle:
    """Build and bind (not start) a server for ``settings`` on the migrated database ``db``.

    With ``settings.read_database_url``, a pool of the read replica is opened here too
    (closed when the database health stops). With a ``tracer_provider``, every RPC and
    the database calls beneath it are traced.
    """
    database_proxy.initialize(db)
    replica = read_replica(settings)
    reads = Reads(db, replica)
    # As many threads as connections in both pools, so a thread never waits for one.
    threads = settings.db_pool_size + (settings.read_pool_size if replica is not None else 0)
    # Streams let in at once: as many as may read at once (Blocking.bulk).
    stream_memory = StreamMemory(settings.stream_memory, admissions=max(1, threads // 2))
    blocking = Blocking(threads=threads, queue_timeout=settings.db_pool_timeout, stream_memory=stream_memory)
    table = HandlerTable()
    # The change feed reads the primary: snapshots and transaction ids are the primary's.
    feed = ChangeFeed(
        ChangeStore(db), blocking, heartbeat=settings.watch_heartbeat, retention=settings.change_retention
    )
    watch = Watch(
        feed,
        blocking,
        max_message_bytes=settings.max_message_bytes,
        listings=max(1, settings.db_pool_size // 4),
    )
    table.add_service(
        USER_SERVICE,
        UserServicer(
            UserStore(db, reads, on_commit=feed.announcer.committed),
            blocking,
            max_message_bytes=settings.max_message_bytes,
            watch=watch,
            export=Export(
                UserExports(reads),
                blocking,
                max_message_bytes=settings.max_message_bytes,
                read_ahead=read_ahead_for(settings.db_pool_size),
            ),
        ),
    )
    table.add_service(
        SESSION_SERVICE,
        SessionServicer(
            SessionStore(db, reads, on_commit=feed.announcer.committed),
            blocking,
            max_message_bytes=settings.max_message_bytes,
        ),
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, table)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), pool=DocumentedPool()
        ),
        table,
    )

    streams = StreamLimits(settings.max_concurrent_streams, settings.stream_stall_timeout, stream_memory)
    authenticator = authenticator_for(settings)
    # A span, when traced, encloses everything else, so the access log and errors happen inside it.
    wrappers: list[Wrapper] = [] if tracer_provider is None else [tracing.instrument(tracer_provider)]
    wrappers += [observe, guard_errors]
    if authenticator.enabled:
        wrappers.append(authentication(authenticator))
    # Innermost, so a streamed message too large fails the call rather than looking like its end.
    wrappers += [reject_undecodable, streams.wrapper(), message_limit.within(settings.max_message_bytes)]
    server = grpc.aio.server(options=grpc_options(settings))
    table.register(server, wrappers, deserializer=tolerant)

    # Publishes every service's status once started: SERVING while the database answers.
    database_health = DatabaseHealth(
        db, health_servicer, SERVICE_NAMES, settings.health_interval, replica=replica
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
        authenticator.mode,
    )
    return ServerHandle(server, port, health_servicer, database_health, blocking, streams, feed)
