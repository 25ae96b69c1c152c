"""Every error class of memstore_client, raised where it should be, over a real wire."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_interceptor import ServerInterceptor
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_client import (
    AlreadyExistsError,
    AsyncMemstoreClient,
    AuthError,
    CreateSessionRequest,
    CreateUserRequest,
    DeadlineExceededError,
    InvalidArgumentError,
    MemstoreClient,
    MemstoreError,
    NotFoundError,
    ResumePolicy,
    UnavailableError,
    UpdateUserRequest,
)

from tests.support import unique


def test_not_found(client: MemstoreClient) -> None:
    ghost = unique("ghost")
    with pytest.raises(NotFoundError) as raised:
        client.user.get(ghost)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.reason == "USER_NOT_FOUND"
    assert raised.value.metadata == {"user_id": ghost}
    assert ghost in raised.value.message
    with pytest.raises(NotFoundError) as session_missing:
        client.session.get(unique("ghost"))
    assert session_missing.value.reason == "SESSION_NOT_FOUND"
    with pytest.raises(NotFoundError):
        client.user.get_sessions(ghost)
    with pytest.raises(NotFoundError):
        client.session.add(CreateSessionRequest(session_id=unique("s"), user_id=ghost))


def test_already_exists(client: MemstoreClient) -> None:
    user_id = unique("user")
    client.user.add(CreateUserRequest(user_id=user_id))
    with pytest.raises(AlreadyExistsError) as raised:
        client.user.add(CreateUserRequest(user_id=user_id))
    assert raised.value.reason == "USER_ALREADY_EXISTS"
    assert isinstance(raised.value, MemstoreError)


def test_invalid_argument_carries_the_field_violations(client: MemstoreClient) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.user.add(CreateUserRequest(user_id="", email="nope", metadata={"x": float("nan")}))
    fields = {violation.field for violation in raised.value.field_violations}
    assert fields == {"user_id", "email", "metadata.x"}
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgumentError):
        client.user.update(UpdateUserRequest(user_id=unique("u"), update_mask=["user_id"]))
    with pytest.raises(InvalidArgumentError):
        client.user.list(limit=-1)


def _closed_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_unavailable_when_nothing_listens() -> None:
    impatient = ResumePolicy(max_attempts=2, initial_backoff=0.01)
    with MemstoreClient(_closed_address(), timeout=5, resume=impatient) as client:
        with pytest.raises(UnavailableError) as raised:
            client.user.get("anyone")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(UnavailableError):
            list(client.user.list_chunked())


@pytest.mark.asyncio
async def test_async_client_raises_the_same_classes(async_client: AsyncMemstoreClient) -> None:
    with pytest.raises(NotFoundError) as raised:
        await async_client.user.get(unique("ghost"))
    assert raised.value.reason == "USER_NOT_FOUND"
    with pytest.raises(InvalidArgumentError) as invalid:
        await async_client.user.add(CreateUserRequest(user_id="bad\x01id"))
    assert [v.field for v in invalid.value.field_violations] == ["user_id"]
    async with AsyncMemstoreClient(_closed_address(), timeout=5) as offline:
        with pytest.raises(UnavailableError):
            await offline.user.get("anyone")


class _RequireToken(ServerInterceptor):
    """Stands in for an authenticating memstore: accepts only ``Bearer right-key``."""

    def __init__(self) -> None:
        self.seen: list[str | bytes | None] = []

    def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, name: str
    ) -> Any:
        token = dict(context.invocation_metadata()).get("authorization")
        self.seen.append(token)
        if token != "Bearer right-key":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")
        return method(request, context)


class _SlowUsers(users_pb2_grpc.UserServiceServicer):
    """Answers GetUser with NOT_FOUND at once and ListUsers only after two seconds."""

    def ListUsers(  # noqa: N802
        self, request: users_pb2.ListUsersRequest, context: grpc.ServicerContext
    ) -> users_pb2.ListUsersResponse:
        time.sleep(2)
        return users_pb2.ListUsersResponse()

    def GetUser(  # noqa: N802 - gRPC method name
        self, request: users_pb2.GetUserRequest, context: grpc.ServicerContext
    ) -> users_pb2.GetUserResponse:
        context.abort(grpc.StatusCode.NOT_FOUND, "nobody here")


@pytest.fixture
def guarded_server() -> Iterator[tuple[str, _RequireToken]]:
    guard = _RequireToken()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[guard])
    users_pb2_grpc.add_UserServiceServicer_to_server(_SlowUsers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", guard
    server.stop(None)


def test_api_key_is_sent_as_a_bearer_token_and_refusal_is_auth_error(
    guarded_server: tuple[str, _RequireToken],
) -> None:
    address, guard = guarded_server
    with MemstoreClient(address, api_key="wrong-key") as client, pytest.raises(AuthError) as raised:
        client.user.get("u")
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    with MemstoreClient(address, api_key="right-key") as client, pytest.raises(NotFoundError):
        client.user.get("u")
    assert guard.seen == ["Bearer wrong-key", "Bearer right-key"]


def test_the_default_deadline_applies_and_can_be_overridden(
    guarded_server: tuple[str, _RequireToken],
) -> None:
    address, _ = guarded_server
    with MemstoreClient(address, api_key="right-key", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.user.list()
        assert time.monotonic() - started < 1.5
        assert client.user.list(timeout=5) == []
