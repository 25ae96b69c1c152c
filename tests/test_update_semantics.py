"""UpdateUser / UpdateSession: presence, deep merge, null removal, update masks, updated_at."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from tests.support import TIMEOUT, expect_error, struct, unique


def make_user(
    users: users_pb2_grpc.UserServiceStub, metadata: dict[str, Any] | None = None
) -> users_pb2.User:
    request = users_pb2.CreateUserRequest(
        user_id=unique("user"),
        email="jane@example.com",
        first_name="Jane",
        last_name="Smith",
        metadata=struct(metadata or {}),
    )
    response: users_pb2.CreateUserResponse = users.CreateUser(request, timeout=TIMEOUT)
    return response.user


def update(users: users_pb2_grpc.UserServiceStub, **fields: Any) -> users_pb2.User:
    response: users_pb2.UpdateUserResponse = users.UpdateUser(
        users_pb2.UpdateUserRequest(**fields), timeout=TIMEOUT
    )
    return response.user


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def test_absent_fields_keep_their_values(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"a": 1})
    updated = update(users, user_id=user.user_id, first_name="Janet")
    assert (updated.email, updated.first_name, updated.last_name) == ("jane@example.com", "Janet", "Smith")
    assert as_dict(updated.metadata) == {"a": 1}
    assert (updated.id, updated.uuid, updated.created_at) == (user.id, user.uuid, user.created_at)


def test_present_empty_field_clears_it(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users)
    updated = update(users, user_id=user.user_id, email="", last_name="")
    assert (updated.email, updated.first_name, updated.last_name) == ("", "Jane", "")


def test_metadata_is_deep_merged_and_null_removes_a_key(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(
        users, {"keep": "me", "foo": "bar", "drop": 1, "nested": {"x": 1, "y": {"z": 2}, "gone": 3}}
    )
    updated = update(
        users,
        user_id=user.user_id,
        metadata=struct(
            {"foo": "updated_bar", "drop": None, "nested": {"y": {"w": 4}, "gone": None}, "new": [1]}
        ),
    )
    assert as_dict(updated.metadata) == {
        "keep": "me",
        "foo": "updated_bar",
        "nested": {"x": 1, "y": {"z": 2, "w": 4}},
        "new": [1],
    }
    stored = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
    assert stored.metadata == updated.metadata


def test_merge_replaces_non_objects_and_arrays_whole(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"list": [1, 2, 3], "scalar": "s", "obj": {"a": 1}})
    updated = update(
        users, user_id=user.user_id, metadata=struct({"list": [9], "scalar": {"now": "object"}, "obj": 5})
    )
    assert as_dict(updated.metadata) == {"list": [9], "scalar": {"now": "object"}, "obj": 5}


def test_merge_into_a_missing_key_drops_nulls_inside_it(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users)
    updated = update(users, user_id=user.user_id, metadata=struct({"fresh": {"a": 1, "b": None}}))
    assert as_dict(updated.metadata) == {"fresh": {"a": 1}}


def test_update_mask_replaces_exactly_the_named_fields(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"old": True, "nested": {"a": 1}})
    updated = update(
        users,
        user_id=user.user_id,
        first_name="Named",
        last_name="Not named, so ignored",
        metadata=struct({"nested": {"b": 2}}),
        update_mask=field_mask_pb2.FieldMask(paths=["first_name", "metadata", "email"]),
    )
    assert updated.first_name == "Named"
    assert updated.last_name == "Smith"
    assert updated.email == ""  # named but absent: cleared
    assert as_dict(updated.metadata) == {"nested": {"b": 2}}  # wholesale, not merged


def test_update_mask_with_metadata_absent_empties_it(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"a": 1})
    updated = update(users, user_id=user.user_id, update_mask=field_mask_pb2.FieldMask(paths=["metadata"]))
    assert as_dict(updated.metadata) == {}
    assert updated.email == "jane@example.com"


@pytest.mark.parametrize("paths", [["user_id"], ["id"], ["nonsense"], ["email", "session_count"], []])
def test_update_mask_with_a_path_that_cannot_change_is_invalid(
    users: users_pb2_grpc.UserServiceStub, paths: list[str]
) -> None:
    user = make_user(users)
    details = expect_error(
        users.UpdateUser,
        users_pb2.UpdateUserRequest(
            user_id=user.user_id, email="x@example.com", update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "update_mask" in details.violations
    stored = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
    assert stored == user


def test_invalid_update_changes_nothing(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"a": 1})
    details = expect_error(
        users.UpdateUser,
        users_pb2.UpdateUserRequest(
            user_id=user.user_id, first_name="ok", email="broken@", metadata=struct({"b": 2})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(details.violations) == {"email"}
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user == user


def test_merge_that_would_exceed_the_metadata_limit_is_refused(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users, {"big1": "x" * 40_000})
    details = expect_error(
        users.UpdateUser,
        users_pb2.UpdateUserRequest(user_id=user.user_id, metadata=struct({"big2": "y" * 40_000})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "metadata" in details.violations
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user == user


def test_updated_at_moves_forward_on_every_update(users: users_pb2_grpc.UserServiceStub) -> None:
    user = make_user(users)
    stamps = [user.updated_at.ToMicroseconds()]
    for index in range(5):
        stamps.append(update(users, user_id=user.user_id, first_name=f"n{index}").updated_at.ToMicroseconds())
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    final = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
    assert final.created_at == user.created_at


def test_session_metadata_merges_and_masks(sessions: sessions_pb2_grpc.SessionServiceStub) -> None:
    session_id = unique("session")
    created = sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, metadata=struct({"a": 1, "b": {"c": 2}})),
        timeout=TIMEOUT,
    ).session
    merged = sessions.UpdateSession(
        sessions_pb2.UpdateSessionRequest(session_id=session_id, metadata=struct({"a": None, "b": {"d": 3}})),
        timeout=TIMEOUT,
    ).session
    assert as_dict(merged.metadata) == {"b": {"c": 2, "d": 3}}
    assert merged.updated_at.ToMicroseconds() > created.updated_at.ToMicroseconds()
    replaced = sessions.UpdateSession(
        sessions_pb2.UpdateSessionRequest(
            session_id=session_id,
            metadata=struct({"only": "this"}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
        timeout=TIMEOUT,
    ).session
    assert as_dict(replaced.metadata) == {"only": "this"}
    details = expect_error(
        sessions.UpdateSession,
        sessions_pb2.UpdateSessionRequest(
            session_id=session_id, update_mask=field_mask_pb2.FieldMask(paths=["user_id"])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "update_mask" in details.violations
