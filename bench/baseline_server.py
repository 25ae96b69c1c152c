"""The benchmark's baseline: a bare grpc.aio server answering GetUser with one constant response.

It is the ceiling a Python gRPC server reaches on this machine: no database, no
access log, no interceptors, no request parsing, only grpc.aio handing a constant
serialized GetUserResponse back (bytes in, bytes out). memstore's GetUser figures
are ratios against it, so they say what memstore's own work costs, whatever the
machine. It imports nothing of memstore's server, so it stays the same baseline
while the server changes; it has a health service so the bench can wait for it.

    .venv/bin/python bench/baseline_server.py --listen 127.0.0.1:50052
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2_grpc

# health.aio at run time; its stubs know only the module's sync half.
from grpc_health.v1._async import HealthServicer
from memstore.v1 import users_pb2

USER_SERVICE = "memstore.v1.UserService"
# Microseconds since the epoch of every sample user's timestamps (late 2025).
_CREATED_MICROS = 1_764_000_000_000_000


def sample_user(number: int) -> users_pb2.User:
    """User ``number`` as the benchmarks fill the table: the same fields and a small metadata object."""
    user = users_pb2.User(
        id=number,
        uuid=f"0b5e2a8e-6a4d-4a1c-9d7e-{number:012x}",
        user_id=f"user-{number}",
        email=f"user{number}@example.com",
        first_name=f"First{number}",
        last_name=f"Last{number}",
        session_count=0,
    )
    user.metadata.update({"plan": ("free", "pro", "team")[number % 3], "n": number, "tags": ["a", "b"]})
    user.created_at.FromMicroseconds(_CREATED_MICROS)
    user.updated_at.FromMicroseconds(_CREATED_MICROS)
    return user


RESPONSE = users_pb2.GetUserResponse(user=sample_user(1)).SerializeToString(deterministic=True)


async def get_user(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """The constant response, whatever was asked: the request is not even parsed."""
    return RESPONSE


def handlers() -> grpc.GenericRpcHandler[Any, Any]:
    """GetUser with no serializers at all, so grpc.aio passes bytes through both ways."""
    return grpc.method_handlers_generic_handler(
        USER_SERVICE, {"GetUser": grpc.unary_unary_rpc_method_handler(get_user)}
    )


def bare_server(
    listen: str, handler: grpc.GenericRpcHandler[Any, Any], *, share_port: bool = False
) -> grpc.aio.Server:
    """A grpc.aio server on ``listen`` with ``handler`` and a health service, not started.

    Port reuse is off unless ``share_port``, so a second server cannot silently share a
    port a first one holds; with it, several processes share the port (SO_REUSEPORT) as
    memstore's --workers do, which measures what two processes can do on this machine.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if share_port else 0)])
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)  # SERVING for ""
    server.add_insecure_port(listen)
    return server


async def until_signalled() -> None:
    """Return on SIGTERM (how the bench stops its servers) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(listen: str, *, share_port: bool = False) -> None:
    """Serve on ``listen`` until signalled, then stop within a second."""
    server = bare_server(listen, handlers(), share_port=share_port)
    await server.start()
    await until_signalled()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    parser.add_argument(
        "--share-port", action="store_true", help="let other processes serve the same port (SO_REUSEPORT)"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.listen, share_port=args.share_port))


if __name__ == "__main__":
    main()
