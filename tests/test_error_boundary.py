"""The error boundary: what a caller sees when something unexpected or the database fails."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import peewee
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.app import USER_SERVICE
from memstore_server.boundary import guard_errors
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.handlers import HandlerTable
from memstore_server.observe import observe

from tests.support import (
    TIMEOUT,
    LoopThread,
    RunningServer,
    ServerAddress,
    details_of,
    expect_error,
    struct,
    unique,
    wait_for,
)


class _BrokenUsers(users_pb2_grpc.UserServiceServicer):
    """A servicer whose every call hits a bug, to see what leaks to the caller."""

    async def GetUser(  # noqa: N802 - gRPC method name
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> users_pb2.GetUserResponse:
        raise RuntimeError('syntax error at or near "SELECT secret_column FROM users"')

    async def ListUsersChunked(  # noqa: N802
        self, request: users_pb2.ListUsersChunkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[users_pb2.ListUsersChunkedResponse]:
        yield users_pb2.ListUsersChunkedResponse(users=[users_pb2.User(user_id="first")], next_cursor=1)
        raise KeyError("internal detail")


async def _start_broken(table: HandlerTable) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    table.register(server, [observe, guard_errors])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
def broken_server() -> Iterator[users_pb2_grpc.UserServiceStub]:
    """The real wrappers (observation, error boundary) around a servicer that fails."""
    table = HandlerTable()
    table.add_service(USER_SERVICE, _BrokenUsers())
    loop = LoopThread()
    server, port = loop.call(_start_broken(table))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield users_pb2_grpc.UserServiceStub(channel)
    loop.call(server.stop(None))
    loop.close()


def test_an_unexpected_error_is_internal_with_nothing_internal_in_it(
    broken_server: users_pb2_grpc.UserServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    details = expect_error(
        broken_server.GetUser, users_pb2.GetUserRequest(user_id="u"), grpc.StatusCode.INTERNAL
    )
    assert "secret_column" not in details.message
    assert "Traceback" not in details.message
    assert details.reason == "INTERNAL"
    assert any("secret_column" in (r.exc_text or "") or r.exc_info for r in caplog.records), "not logged"


def test_an_error_mid_stream_ends_the_stream_with_internal(
    broken_server: users_pb2_grpc.UserServiceStub,
) -> None:
    responses = broken_server.ListUsersChunked(users_pb2.ListUsersChunkedRequest(), timeout=TIMEOUT)
    assert next(responses).users[0].user_id == "first"
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INTERNAL
    assert "internal detail" not in details.message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def server_without_database() -> Iterator[grpc.Channel]:
    """A memstore whose database cannot be reached (nothing listens on its port)."""
    db: peewee.Database = open_database(
        f"postgresql://memstore@127.0.0.1:{_closed_port()}/memstore", pool_size=2, pool_timeout=1
    )
    running = RunningServer(Settings(listen="127.0.0.1:0"), db, database_health=False)
    with grpc.insecure_channel(running.target) as channel:
        yield channel
    running.stop()


def test_database_down_is_unavailable_fast(server_without_database: grpc.Channel) -> None:
    users = users_pb2_grpc.UserServiceStub(server_without_database)
    started = time.monotonic()
    details = expect_error(users.GetUser, users_pb2.GetUserRequest(user_id="u"), grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started < 5
    assert details.reason == "DATABASE_UNAVAILABLE"
    assert "127.0.0.1" not in details.message  # no connection details leak
    with pytest.raises(grpc.RpcError) as raised:
        list(users.ListUsersChunked(users_pb2.ListUsersChunkedRequest(), timeout=TIMEOUT))
    assert details_of(raised.value).code == grpc.StatusCode.UNAVAILABLE


def _request_id(call: grpc.Call) -> str | None:
    for key, value in call.trailing_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return None


def test_every_reply_carries_a_request_id_that_the_log_knows(
    users: users_pb2_grpc.UserServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memstore_server.access")
    _, call = users.ListUsers.with_call(users_pb2.ListUsersRequest(limit=1), timeout=TIMEOUT)
    ok_id = _request_id(call)
    assert ok_id is not None
    assert len(ok_id) == 32
    with pytest.raises(grpc.RpcError) as raised:
        users.GetUser(users_pb2.GetUserRequest(user_id="missing-" + ok_id), timeout=TIMEOUT)
    failed_id = _request_id(raised.value)  # type: ignore[arg-type]
    assert failed_id is not None
    assert failed_id != ok_id
    assert details_of(raised.value).reason == "USER_NOT_FOUND"  # the rich status survives beside the id

    def logged(text: str, request_id: str) -> bool:
        lines = [record.getMessage() for record in list(caplog.records)]
        return any(text in line and f"request_id={request_id}" in line for line in lines)

    # A failed call's status reaches the caller before its log line is written: wait for it.
    assert wait_for(lambda: logged("ListUsers OK", ok_id))
    assert wait_for(lambda: logged("GetUser NOT_FOUND", failed_id))


def test_a_callers_request_id_is_kept(users: users_pb2_grpc.UserServiceStub) -> None:
    _, call = users.ListUsers.with_call(
        users_pb2.ListUsersRequest(limit=1), timeout=TIMEOUT, metadata=(("x-request-id", "trace-me-42"),)
    )
    assert _request_id(call) == "trace-me-42"


def test_internal_errors_name_the_request_id_logged_with_the_details(
    broken_server: users_pb2_grpc.UserServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        broken_server.GetUser(users_pb2.GetUserRequest(user_id="u"), timeout=TIMEOUT)
    request_id = _request_id(raised.value)  # type: ignore[arg-type]
    assert request_id is not None
    assert len(request_id) == 32
    assert request_id in details_of(raised.value).message
    logged = [r for r in caplog.records if r.exc_info and request_id in r.getMessage()]
    assert logged, "the log has no entry with the details under that request id"


def test_a_request_that_does_not_parse_is_invalid_argument(server: ServerAddress) -> None:
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary(  # bytes in, bytes out
            "/memstore.v1.UserService/GetUser", request_serializer=None, response_deserializer=None
        )
        # Field 1 (user_id) holding the UTF-8 encoding of a lone surrogate: not valid UTF-8.
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\x0a\x03\xed\xa0\x80", timeout=TIMEOUT)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in details.violations


def _every_method() -> list[tuple[str, bool, bool]]:
    """(path, request streaming, response streaming) of every method the server serves."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2
    from memstore.v1 import sessions_pb2

    files = (users_pb2.DESCRIPTOR, sessions_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
        # grpcio-health-checking's asyncio servicer has no List: it is UNIMPLEMENTED here.
        if (service.full_name, method.name) != ("grpc.health.v1.Health", "List")
    ]


def _send(channel: grpc.Channel, path: str, request_streaming: bool, response_streaming: bool) -> None:
    """Four bytes that are no message of any type (a field number 0), as the method's one request."""
    garbage = b"\xff\xff\xff\x01"
    if request_streaming:
        list(channel.stream_stream(path, None, None)(iter([garbage]), timeout=TIMEOUT))
    elif response_streaming:
        list(channel.unary_stream(path, None, None)(garbage, timeout=TIMEOUT))
    else:
        channel.unary_unary(path, None, None)(garbage, timeout=TIMEOUT)


@pytest.mark.parametrize(("path", "request_streaming", "response_streaming"), _every_method(), ids=str)
def test_garbage_to_any_method_is_invalid_argument_without_the_parsers_words(
    server: ServerAddress,
    caplog: pytest.LogCaptureFixture,
    path: str,
    request_streaming: bool,
    response_streaming: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        _send(channel, path, request_streaming, response_streaming)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "its bytes do not parse" in details.violations["request"]
    assert "Wire format" not in details.message
    assert "Error parsing" not in details.message
    assert not [r for r in caplog.records if r.levelno > logging.INFO], "logged above INFO"


def test_an_oversized_request_is_resource_exhausted_and_changes_nothing(
    users: users_pb2_grpc.UserServiceStub, server: ServerAddress
) -> None:
    user_id = unique("huge")
    request = users_pb2.CreateUserRequest(user_id=user_id, metadata=struct({"blob": "x" * (5 * 1024 * 1024)}))
    with pytest.raises(grpc.RpcError) as raised:
        users.CreateUser(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as missing:
        users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
