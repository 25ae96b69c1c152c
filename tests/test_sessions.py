"""SessionService over the wire: every RPC's success and error paths."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from tests.support import TIMEOUT, expect_error, struct, unique


def new_user(users: users_pb2_grpc.UserServiceStub) -> str:
    user_id = unique("user")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    return user_id


def test_create_and_get_a_session_of_a_user(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    user_id = new_user(users)
    session_id = unique("session")
    created = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(
            session_id=session_id, user_id=user_id, metadata=struct({"topic": "x"})
        ),
        timeout=TIMEOUT,
    ).session
    assert (created.session_id, created.user_id) == (session_id, user_id)
    assert json_format.MessageToDict(created.metadata) == {"topic": "x"}
    assert created.id > 0
    assert len(created.uuid) == 36
    assert created.created_at == created.updated_at
    fetched = sessions.GetSession(
        sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT
    ).session
    assert fetched == created


def test_a_session_may_belong_to_no_user(sessions: sessions_pb2_grpc.SessionServiceStub) -> None:
    session_id = unique("session")
    created = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id), timeout=TIMEOUT
    ).session
    assert created.user_id == ""
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_id), timeout=TIMEOUT)
    expect_error(
        sessions.GetSession, sessions_pb2.GetSessionRequest(session_id=session_id), grpc.StatusCode.NOT_FOUND
    )


def test_create_for_an_unknown_user_is_not_found_naming_the_user(
    sessions: sessions_pb2_grpc.SessionServiceStub,
) -> None:
    ghost, session_id = unique("ghost"), unique("session")
    details = expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=ghost),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details.reason == "USER_NOT_FOUND"
    assert ghost in details.message
    expect_error(
        sessions.GetSession, sessions_pb2.GetSessionRequest(session_id=session_id), grpc.StatusCode.NOT_FOUND
    )


def test_duplicate_session_id_is_already_exists_and_keeps_the_first(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    owner, other = new_user(users), new_user(users)
    session_id = unique("session")
    first = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=owner), timeout=TIMEOUT
    ).session
    details = expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=other, metadata=struct({"x": 1})),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.reason == "SESSION_ALREADY_EXISTS"
    assert details.metadata == {"session_id": session_id}
    assert (
        sessions.GetSession(sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT).session
        == first
    )
    other_user = users.GetUser(users_pb2.GetUserRequest(user_id=other), timeout=TIMEOUT).user
    assert other_user.session_count == 0


@pytest.mark.parametrize("rpc", ["GetSession", "UpdateSession", "DeleteSession"])
def test_unknown_session_is_not_found(sessions: sessions_pb2_grpc.SessionServiceStub, rpc: str) -> None:
    session_id = unique("ghost")
    request = getattr(sessions_pb2, f"{rpc}Request")(session_id=session_id)
    details = expect_error(getattr(sessions, rpc), request, grpc.StatusCode.NOT_FOUND)
    assert details.reason == "SESSION_NOT_FOUND"
    assert details.metadata == {"session_id": session_id}


@pytest.mark.parametrize("rpc", ["CreateSession", "GetSession", "UpdateSession", "DeleteSession"])
def test_empty_session_id_is_invalid(sessions: sessions_pb2_grpc.SessionServiceStub, rpc: str) -> None:
    request = getattr(sessions_pb2, f"{rpc}Request")()
    details = expect_error(getattr(sessions, rpc), request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.violations == {"session_id": "is required"}


def test_create_with_bad_fields_reports_them_all(sessions: sessions_pb2_grpc.SessionServiceStub) -> None:
    details = expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(
            session_id="tab\tinside", user_id="u" * 256, metadata=struct({"bad": "nul\x00"})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(details.violations) == {"session_id", "user_id", "metadata.bad"}


def test_update_without_metadata_only_touches_updated_at(
    sessions: sessions_pb2_grpc.SessionServiceStub,
) -> None:
    session_id = unique("session")
    created = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, metadata=struct({"a": 1})), timeout=TIMEOUT
    ).session
    updated = sessions.UpdateSession(
        sessions_pb2.UpdateSessionRequest(session_id=session_id), timeout=TIMEOUT
    ).session
    assert updated.metadata == created.metadata
    assert updated.updated_at.ToMicroseconds() > created.updated_at.ToMicroseconds()


def test_delete_session_decrements_its_users_count_and_frees_the_id(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    user_id = new_user(users)
    session_id = unique("session")
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
    )
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_id), timeout=TIMEOUT)
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user.session_count == 0
    expect_error(
        sessions.DeleteSession,
        sessions_pb2.DeleteSessionRequest(session_id=session_id),
        grpc.StatusCode.NOT_FOUND,
    )
    recreated = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
    ).session
    assert recreated.session_id == session_id
