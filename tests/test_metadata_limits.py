"""The two metadata limits, depth and size, and what they protect: everything accepted reads back.

Depth: a stock protobuf parser stops at a fixed recursion depth, and a response
sits deeper than the request that carried the metadata, so metadata one parser
accepted once broke every listing that held it. Size: measured on what is stored
(numbers written out in full, as PostgreSQL keeps them), once, and only when an
update changes metadata.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import field_mask_pb2, json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.store import user_messages
from memstore_server.store.rows import USER_COLUMNS
from memstore_server.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, metadata_size

from tests.support import (
    TIMEOUT,
    create_user_request_nested,
    expect_error,
    stored_compact_size,
    struct,
    unique,
)


def nested_objects(depth: int) -> dict[str, Any]:
    """Metadata whose objects nest ``depth`` levels, the metadata object itself being level 1."""
    value: dict[str, Any] = {"leaf": "bottom"}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def nested_lists(depth: int) -> dict[str, Any]:
    """Metadata holding lists inside lists: ``depth`` levels with the metadata object."""
    value: Any = ["bottom"]
    for _ in range(depth - 2):
        value = [value]
    return {"list": value}


def read_everywhere(users: users_pb2_grpc.UserServiceStub, user_id: str, expected: dict[str, Any]) -> None:
    """Every response that carries the user parses in this stock client and holds ``expected``."""
    got = users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user
    assert json_format.MessageToDict(got.metadata) == expected
    found = []
    cursor = 0
    while True:
        page = users.ListUsers(users_pb2.ListUsersRequest(limit=1000, cursor=cursor), timeout=TIMEOUT)
        found += [user for user in page.users if user.user_id == user_id]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    streamed = [
        user
        for chunk in users.ListUsersChunked(
            users_pb2.ListUsersChunkedRequest(chunk_size=1000), timeout=TIMEOUT
        )
        for user in chunk.users
        if user.user_id == user_id
    ]
    assert [json_format.MessageToDict(user.metadata) for user in found + streamed] == [expected, expected]


@pytest.mark.parametrize("shape", [nested_objects, nested_lists])
def test_metadata_at_the_depth_limit_reads_back_in_every_response(
    users: users_pb2_grpc.UserServiceStub, shape: Any
) -> None:
    user_id = unique("deep")
    deepest = shape(MAX_METADATA_DEPTH)
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(deepest)), timeout=TIMEOUT)
    read_everywhere(users, user_id, deepest)
    updated = users.UpdateUser(
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"more": 1})), timeout=TIMEOUT
    ).user
    assert json_format.MessageToDict(updated.metadata) == {**deepest, "more": 1}
    read_everywhere(users, user_id, {**deepest, "more": 1})


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        (nested_objects(MAX_METADATA_DEPTH + 1), "metadata" + ".n" * MAX_METADATA_DEPTH),
        (nested_lists(MAX_METADATA_DEPTH + 1), "metadata.list" + "[0]" * (MAX_METADATA_DEPTH - 1)),
        (
            {"ok": 1, "bad": nested_objects(MAX_METADATA_DEPTH)},
            "metadata.bad" + ".n" * (MAX_METADATA_DEPTH - 1),
        ),
    ],
    ids=["objects", "lists", "below-a-key"],
)
def test_metadata_deeper_than_the_limit_is_refused_naming_the_field(
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    metadata: dict[str, Any],
    field: str,
) -> None:
    user_id = unique("too-deep")
    details = expect_error(
        users.CreateUser,
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(metadata)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(details.violations) == [field]
    assert f"at most {MAX_METADATA_DEPTH} levels" in details.violations[field]
    expect_error(users.GetUser, users_pb2.GetUserRequest(user_id=user_id), grpc.StatusCode.NOT_FOUND)

    # An update is refused the same way and changes nothing.
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, first_name="Ann"), timeout=TIMEOUT)
    before = users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user
    for request in (
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct(metadata)),
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct(metadata),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
    ):
        assert field in expect_error(users.UpdateUser, request, grpc.StatusCode.INVALID_ARGUMENT).violations
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == before

    session_id = unique("too-deep")
    session_details = expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(session_id=session_id, metadata=struct(metadata)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(session_details.violations) == [field]


def test_metadata_deeper_than_any_parser_takes_gets_a_message_about_depth(channel: grpc.Channel) -> None:
    """Past about 33 levels the server's own parser refuses the request before validation."""
    create_user = channel.unary_unary(
        "/memstore.v1.UserService/CreateUser",
        request_serializer=None,
        response_deserializer=users_pb2.CreateUserResponse.FromString,
    )
    details = expect_error(
        create_user, create_user_request_nested(unique("abyss"), 40), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert f"metadata may nest at most {MAX_METADATA_DEPTH} levels" in details.message
    assert "memstore.v1.CreateUserRequest" in details.message
    assert "upb" not in details.message
    assert "Error parsing" not in details.message
    # The same bytes a little shallower are a proper request, refused by the depth rule itself.
    shallower = expect_error(
        create_user,
        create_user_request_nested(unique("abyss"), MAX_METADATA_DEPTH + 1),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(shallower.violations) == ["metadata" + ".n" * MAX_METADATA_DEPTH]


def test_sessions_at_the_depth_limit_read_back(sessions: sessions_pb2_grpc.SessionServiceStub) -> None:
    session_id = unique("deep")
    deepest = nested_objects(MAX_METADATA_DEPTH)
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, metadata=struct(deepest)), timeout=TIMEOUT
    )
    got = sessions.GetSession(sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT)
    assert json_format.MessageToDict(got.session.metadata) == deepest
    listed = []
    cursor = 0
    while True:
        page = sessions.ListSessions(
            sessions_pb2.ListSessionsRequest(limit=1000, cursor=cursor), timeout=TIMEOUT
        )
        listed += [s for s in page.sessions if s.session_id == session_id]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert [json_format.MessageToDict(s.metadata) for s in listed] == [deepest]


# ---- size: one measure, on what is stored ----


finite_numbers = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.sampled_from([1e300, -1.7976931348623157e308, 5e-324, 1.5e-7, 1e16, 123456789.125])
)
storable_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=10)
storable_keys = storable_text.filter(lambda key: key != "__proto__")
stored_values = st.recursive(
    finite_numbers | storable_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(storable_keys, children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(storable_keys, stored_values, max_size=4))
def test_the_size_measure_is_what_postgresql_stores(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database, metadata: dict[str, Any]
) -> None:
    user_id = unique("measure")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(metadata)), timeout=TIMEOUT)
    with db.connection_context():
        (stored,) = db.execute_sql("SELECT metadata FROM users WHERE user_id = %s", (user_id,)).fetchone()
    assert metadata_size(stored) == stored_compact_size(db, "users", "user_id", user_id)


def test_short_numbers_that_store_long_are_measured_as_stored(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    # 1e300 is 6 bytes in a request's JSON and 301 in PostgreSQL: 300 of them are 90 KB stored.
    huge = {"values": [1e300] * 300}
    user_id = unique("huge")
    details = expect_error(
        users.CreateUser,
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(huge)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert str(metadata_size(huge)) in details.violations["metadata"]
    assert metadata_size(huge) > 90_000
    expect_error(users.GetUser, users_pb2.GetUserRequest(user_id=user_id), grpc.StatusCode.NOT_FOUND)
    session_details = expect_error(
        sessions.CreateSession,
        sessions_pb2.CreateSessionRequest(session_id=unique("huge"), metadata=struct(huge)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "metadata" in session_details.violations

    # Just under the limit as stored is accepted, and every later update that does not
    # grow it past the limit succeeds, including ones that leave metadata alone.
    fits = {"values": [1e300] * 200}
    assert metadata_size(fits) <= MAX_METADATA_BYTES
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(fits)), timeout=TIMEOUT)
    renamed = users.UpdateUser(
        users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann"), timeout=TIMEOUT
    )
    assert renamed.user.first_name == "Ann"
    assert json_format.MessageToDict(renamed.user.metadata) == fits
    merged = users.UpdateUser(
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"note": "x"})), timeout=TIMEOUT
    )
    assert json_format.MessageToDict(merged.user.metadata) == {**fits, "note": "x"}
    grown = expect_error(
        users.UpdateUser,
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"more": [1e300] * 100})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "merged metadata would be" in grown.violations["metadata"]
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == merged.user


def _oversize_in_place(db: peewee.Database, table: str, key: str, key_value: str) -> None:
    """Make a stored row's metadata larger than today's limit, as an older release could store it."""
    oversized = json.dumps({"values": [10**300] * 300, "keep": "me"})
    with db.connection_context(), db.atomic():
        db.execute_sql(
            f"UPDATE {table} SET metadata = %s::jsonb WHERE {key} = %s",
            (oversized, key_value),
        )
        if table == "users":
            rows = db.execute_sql(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = %s", (key_value,)
            ).fetchall()
            for row in rows:
                user_messages.save(db, row)


def test_updates_that_leave_oversized_metadata_alone_never_fail(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_id = unique("legacy")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
    _oversize_in_place(db, "users", "user_id", user_id)
    for request in (
        users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann"),
        users_pb2.UpdateUserRequest(
            user_id=user_id, last_name="Lee", update_mask=field_mask_pb2.FieldMask(paths=["last_name"])
        ),
        users_pb2.UpdateUserRequest(user_id=user_id, email="ann@example.com"),
    ):
        user = users.UpdateUser(request, timeout=TIMEOUT).user
        assert json_format.MessageToDict(user.metadata)["keep"] == "me"
    assert (user.first_name, user.last_name, user.email) == ("Ann", "Lee", "ann@example.com")
    # Merging into it is a change of metadata, so the limit applies, and nothing changes.
    details = expect_error(
        users.UpdateUser,
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"k": 1})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "merged metadata would be" in details.violations["metadata"]
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == user
    # Replacing it with something small is how such a row is brought within the limit.
    replaced = users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct({"k": 1}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
        timeout=TIMEOUT,
    ).user
    assert json_format.MessageToDict(replaced.metadata) == {"k": 1}

    session_id = unique("legacy")
    sessions.CreateSession(sessions_pb2.CreateSessionRequest(session_id=session_id), timeout=TIMEOUT)
    _oversize_in_place(db, "sessions", "session_id", session_id)
    touched = sessions.UpdateSession(
        sessions_pb2.UpdateSessionRequest(session_id=session_id), timeout=TIMEOUT
    ).session
    assert json_format.MessageToDict(touched.metadata)["keep"] == "me"
    expect_error(
        sessions.UpdateSession,
        sessions_pb2.UpdateSessionRequest(session_id=session_id, metadata=struct({"k": 1})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    got = sessions.GetSession(sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT).session
    assert json_format.MessageToDict(got.metadata)["keep"] == "me"
    assert math.isclose(json_format.MessageToDict(got.metadata)["values"][0], 1e300)
