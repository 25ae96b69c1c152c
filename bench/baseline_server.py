"""The benchmark's baseline server: memstore's own gRPC stack answering GetUser with a constant.

Same options, thread pool and interceptors as ``memstore-server serve`` (through
app.new_grpc_server) and the same logging, but a servicer that touches no database,
so GetUser throughput against it is the ceiling the stack itself allows.
"""

from __future__ import annotations

import argparse
import signal
import threading

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server import logs, wire
from memstore_server.app import USER_SERVICE, add_service, new_grpc_server
from memstore_server.config import Settings

# A user much like the benchmark's: the same fields, a small metadata object.
_USER = users_pb2.User(
    user_id="user-1",
    email="user1@example.com",
    first_name="First1",
    last_name="Last1",
    uuid="0b5e2a8e-6a4d-4a1c-9d7e-2f1f0c8b9a10",
    id=1,
    session_count=0,
)
_USER.metadata.update({"plan": "pro", "n": 1, "tags": ["a", "b"]})
_USER.created_at.FromMicroseconds(1_764_000_000_000_000)
_USER.updated_at.FromMicroseconds(1_764_000_000_000_000)
_RESPONSE = wire.length_delimited(1, _USER.SerializeToString(deterministic=True))


class ConstantUsers(users_pb2_grpc.UserServiceServicer):
    def GetUser(self, request: users_pb2.GetUserRequest, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        return _RESPONSE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    settings = Settings(listen=args.listen)
    logs.configure(settings.log_level, settings.log_format)
    server = new_grpc_server(settings)
    add_service(server, USER_SERVICE, ConstantUsers())
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)  # SERVING for ""
    server.add_insecure_port(settings.listen)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):  # short waits, so the main thread gets to run the signal handler
        pass
    server.stop(1).wait()


if __name__ == "__main__":
    main()
