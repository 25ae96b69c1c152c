"""UserService over the wire: every RPC's success and error paths."""

from __future__ import annotations

import re
import uuid

import grpc
import pytest
from google.protobuf import json_format
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from tests.support import TIMEOUT, expect_error, struct, unique

UUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def create(users: users_pb2_grpc.UserServiceStub, **fields: object) -> users_pb2.User:
    fields.setdefault("user_id", unique("user"))
    response: users_pb2.CreateUserResponse = users.CreateUser(
        users_pb2.CreateUserRequest(**fields),  # type: ignore[arg-type]
        timeout=TIMEOUT,
    )
    return response.user


def test_create_returns_the_stored_user_with_server_fields(users: users_pb2_grpc.UserServiceStub) -> None:
    user_id = unique("user")
    user = create(
        users,
        user_id=user_id,
        email="jane@example.com",
        first_name="Jane",
        last_name="Smith",
        metadata=struct({"foo": "bar", "nested": {"n": 1, "list": [1, "two", None, True]}}),
    )
    assert (user.user_id, user.email, user.first_name, user.last_name) == (
        user_id,
        "jane@example.com",
        "Jane",
        "Smith",
    )
    assert json_format.MessageToDict(user.metadata) == {
        "foo": "bar",
        "nested": {"n": 1, "list": [1, "two", None, True]},
    }
    assert UUID_FORM.match(user.uuid)
    assert str(uuid.UUID(user.uuid)) == user.uuid
    assert user.id > 0
    assert user.session_count == 0
    assert user.created_at.ToMicroseconds() > 0
    assert user.updated_at == user.created_at


def test_ids_strictly_increase_in_creation_order(users: users_pb2_grpc.UserServiceStub) -> None:
    ids = [create(users).id for _ in range(5)]
    assert ids == sorted(set(ids))


def test_create_with_only_user_id_has_empty_fields(users: users_pb2_grpc.UserServiceStub) -> None:
    user = create(users)
    assert (user.email, user.first_name, user.last_name) == ("", "", "")
    assert dict(user.metadata) == {}


def test_get_returns_what_create_stored(users: users_pb2_grpc.UserServiceStub) -> None:
    created = create(users, email="a@example.com", metadata=struct({"k": "v"}))
    fetched = users.GetUser(users_pb2.GetUserRequest(user_id=created.user_id), timeout=TIMEOUT).user
    assert fetched == created


def test_user_ids_are_arbitrary_text(users: users_pb2_grpc.UserServiceStub) -> None:
    for user_id in ("user/with/slashes?and=query#frag", "ユーザー 🙂", "a" * 255, " spaced id "):
        created = create(users, user_id=user_id + unique("")[-12:] if len(user_id) < 240 else user_id)
        fetched = users.GetUser(users_pb2.GetUserRequest(user_id=created.user_id), timeout=TIMEOUT).user
        assert fetched.user_id == created.user_id


def test_duplicate_create_is_already_exists_and_keeps_the_first(
    users: users_pb2_grpc.UserServiceStub,
) -> None:
    first = create(users, email="first@example.com")
    details = expect_error(
        users.CreateUser,
        users_pb2.CreateUserRequest(user_id=first.user_id, email="second@example.com"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.reason == "USER_ALREADY_EXISTS"
    assert details.metadata == {"user_id": first.user_id}
    assert first.user_id in details.message
    stored = users.GetUser(users_pb2.GetUserRequest(user_id=first.user_id), timeout=TIMEOUT).user
    assert stored == first


def test_create_without_user_id_is_invalid(users: users_pb2_grpc.UserServiceStub) -> None:
    details = expect_error(users.CreateUser, users_pb2.CreateUserRequest(), grpc.StatusCode.INVALID_ARGUMENT)
    assert details.violations == {"user_id": "is required"}
    assert details.reason == "INVALID_ARGUMENT"


def test_create_reports_every_bad_field_at_once(users: users_pb2_grpc.UserServiceStub) -> None:
    details = expect_error(
        users.CreateUser,
        users_pb2.CreateUserRequest(
            user_id="x" * 256, email="not-an-email", first_name="n" * 256, last_name="bad\x00name"
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(details.violations) == {"user_id", "email", "first_name", "last_name"}


@pytest.mark.parametrize(
    "rpc",
    ["GetUser", "DeleteUser", "GetUserSessions", "UpdateUser"],
)
def test_unknown_user_is_not_found(users: users_pb2_grpc.UserServiceStub, rpc: str) -> None:
    user_id = unique("ghost")
    request_type = getattr(users_pb2, f"{rpc}Request")
    details = expect_error(getattr(users, rpc), request_type(user_id=user_id), grpc.StatusCode.NOT_FOUND)
    assert details.reason == "USER_NOT_FOUND"
    assert details.metadata == {"user_id": user_id}
    assert user_id in details.message


@pytest.mark.parametrize("rpc", ["GetUser", "DeleteUser", "GetUserSessions", "UpdateUser"])
def test_empty_user_id_is_invalid(users: users_pb2_grpc.UserServiceStub, rpc: str) -> None:
    request_type = getattr(users_pb2, f"{rpc}Request")
    details = expect_error(getattr(users, rpc), request_type(), grpc.StatusCode.INVALID_ARGUMENT)
    assert "user_id" in details.violations


def test_delete_removes_the_user_and_its_sessions_and_frees_the_id(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    user = create(users, email="old@example.com")
    session_ids = [unique("session") for _ in range(3)]
    for session_id in session_ids:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user.user_id), timeout=TIMEOUT
        )

    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id), timeout=TIMEOUT)

    expect_error(users.GetUser, users_pb2.GetUserRequest(user_id=user.user_id), grpc.StatusCode.NOT_FOUND)
    for session_id in session_ids:
        expect_error(
            sessions.GetSession,
            sessions_pb2.GetSessionRequest(session_id=session_id),
            grpc.StatusCode.NOT_FOUND,
        )
    again = create(users, user_id=user.user_id)
    assert again.id > user.id
    assert again.uuid != user.uuid
    assert again.email == ""
    assert again.session_count == 0
    # The freed session ids can be used again too.
    sessions.CreateSession(sessions_pb2.CreateSessionRequest(session_id=session_ids[0]), timeout=TIMEOUT)


def test_delete_twice_is_not_found(users: users_pb2_grpc.UserServiceStub) -> None:
    user = create(users)
    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id), timeout=TIMEOUT)
    expect_error(
        users.DeleteUser, users_pb2.DeleteUserRequest(user_id=user.user_id), grpc.StatusCode.NOT_FOUND
    )


def test_delete_leaves_other_users_alone(users: users_pb2_grpc.UserServiceStub) -> None:
    keep, drop = create(users), create(users)
    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=drop.user_id), timeout=TIMEOUT)
    assert users.GetUser(users_pb2.GetUserRequest(user_id=keep.user_id), timeout=TIMEOUT).user == keep


def test_session_count_follows_session_creates_and_deletes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    user = create(users)
    created = [unique("session") for _ in range(4)]
    for count, session_id in enumerate(created, start=1):
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user.user_id), timeout=TIMEOUT
        )
        fetched = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
        assert fetched.session_count == count
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=created[0]), timeout=TIMEOUT)
    # A failed create (duplicate session id) must not count.
    expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(session_id=created[1], user_id=user.user_id),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    fetched = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
    assert fetched.session_count == 3
    listed = users.ListUsers(users_pb2.ListUsersRequest(cursor=user.id - 1, limit=1), timeout=TIMEOUT).users
    assert listed[0].session_count == 3


def test_session_count_does_not_touch_updated_at(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    user = create(users)
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=unique("session"), user_id=user.user_id), timeout=TIMEOUT
    )
    fetched = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
    assert fetched.updated_at == user.updated_at
