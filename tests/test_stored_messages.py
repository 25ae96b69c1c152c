"""The stored serialized users never go stale: after every kind of change they equal a fresh build."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import peewee
import pytest
from google.protobuf import field_mask_pb2
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.store import user_messages
from memstore_server.store.rows import USER_COLUMNS

from tests.support import TIMEOUT, struct, unique


def assert_fresh(db: peewee.Database, user_id: str) -> users_pb2.User:
    """The stored bytes equal the bytes built from the row's columns right now; returns the user."""
    with db.connection_context():
        stored, *columns = db.execute_sql(
            f"SELECT message, {USER_COLUMNS} FROM users WHERE user_id = %s", (user_id,)
        ).fetchone()
    assert stored is not None
    assert bytes(stored) == user_messages.serialize(columns)
    return users_pb2.User.FromString(bytes(stored))


def test_every_kind_of_change_stores_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_id = unique("fresh")
    users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, email="a@example.com", metadata=struct({"a": {"b": 1}})),
        timeout=TIMEOUT,
    )
    assert_fresh(db, user_id)
    changes = [
        users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann"),
        users_pb2.UpdateUserRequest(user_id=user_id, email=""),
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"a": {"c": 2}, "z": [1, None, "x"]})),
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"a": None})),
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct({"only": True}),
            last_name="L",
            update_mask=field_mask_pb2.FieldMask(paths=["metadata", "last_name"]),
        ),
    ]
    for change in changes:
        returned = users.UpdateUser(change, timeout=TIMEOUT).user
        assert assert_fresh(db, user_id) == returned
    session_ids = [unique("s") for _ in range(3)]
    for session_id in session_ids:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
        )
        assert_fresh(db, user_id)
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_ids[0]), timeout=TIMEOUT)
    final = assert_fresh(db, user_id)
    assert final.session_count == 2
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == final


def test_batch_created_users_store_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    prefix = unique("batchfresh")
    existing = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=f"{prefix}-0", metadata=struct({"old": 1})), timeout=TIMEOUT
    ).user
    requests = [
        users_pb2.CreateUserRequest(
            user_id=f"{prefix}-{n}", email=f"b{n}@example.com", metadata=struct({"n": n, "l": [n, None]})
        )
        for n in range(50)
    ]
    created = users.BatchCreateUsers(
        users_pb2.BatchCreateUsersRequest(requests=requests, skip_existing=True), timeout=TIMEOUT
    ).users
    assert len(created) == 49
    for user in created:
        assert assert_fresh(db, user.user_id) == user
    assert assert_fresh(db, existing.user_id) == existing
    # Later changes to batch-created users keep them fresh as well.
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=unique("s"), user_id=created[0].user_id), timeout=TIMEOUT
    )
    assert assert_fresh(db, created[0].user_id).session_count == 1


def test_concurrent_changes_leave_fresh_bytes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_id = unique("racy")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)

    def merge(index: int) -> None:
        users.UpdateUser(
            users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({f"k{index}": index})),
            timeout=TIMEOUT,
        )

    def add_session(index: int) -> None:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=unique(f"s{index}"), user_id=user_id),
            timeout=TIMEOUT,
        )

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(10)]
    threads += [threading.Thread(target=add_session, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    user = assert_fresh(db, user_id)
    assert user.session_count == 10
    assert set(user.metadata.fields) == {f"k{i}" for i in range(10)}


def test_a_user_without_stored_bytes_is_still_served_and_refill_restores_them(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    user_id = unique("bare")
    created = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct({"k": "v"})), timeout=TIMEOUT
    ).user
    with db.connection_context():
        db.execute_sql("UPDATE users SET message = NULL WHERE user_id = %s", (user_id,))
    assert users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user == created
    listed = users.ListUsers(
        users_pb2.ListUsersRequest(cursor=created.id - 1, limit=1), timeout=TIMEOUT
    ).users
    assert list(listed) == [created]
    streamed = users.ListUsersChunked(
        users_pb2.ListUsersChunkedRequest(cursor=created.id - 1, chunk_size=10), timeout=TIMEOUT
    )
    assert [user for chunk in streamed for user in chunk.users][:1] == [created]
    with db.connection_context(), db.atomic():
        assert user_messages.refill(db) >= 1
    assert assert_fresh(db, user_id) == created


# A trigger of these tests' own, beside the change feed's: which writes a users row gets.
_RECORD_ROW_WRITES = (
    "CREATE TABLE test_user_row_writes (position bigserial, user_id text NOT NULL, operation text NOT NULL)",
    """
    CREATE FUNCTION test_record_user_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO test_user_row_writes (user_id, operation) VALUES (NEW.user_id, TG_OP);
        RETURN NULL;
    END
    $$
    """,
    "CREATE TRIGGER test_user_row_writes AFTER INSERT OR UPDATE ON users "
    "FOR EACH ROW EXECUTE FUNCTION test_record_user_row_write()",
)
_FORGET_ROW_WRITES = (
    "DROP TRIGGER test_user_row_writes ON users",
    "DROP FUNCTION test_record_user_row_write()",
    "DROP TABLE test_user_row_writes",
)


@pytest.fixture
def row_writes(db: peewee.Database) -> Iterator[Callable[[str], list[str]]]:
    """The writes (INSERT, UPDATE) each users row has had while the test runs, by user_id, in order.

    A second write of a row in one change costs a second tuple, index entries and change
    record; the stored message must go in with the row, not after it.
    """
    with db.connection_context(), db.atomic():
        for statement in _RECORD_ROW_WRITES:
            db.execute_sql(statement)

    def writes(user_id: str) -> list[str]:
        with db.connection_context():
            cursor = db.execute_sql(
                "SELECT operation FROM test_user_row_writes WHERE user_id = %s ORDER BY position", (user_id,)
            )
            return [operation for (operation,) in cursor.fetchall()]

    try:
        yield writes
    finally:
        with db.connection_context(), db.atomic():
            for statement in _FORGET_ROW_WRITES:
                db.execute_sql(statement)


def change_records(db: peewee.Database, user_id: str) -> list[tuple[int, bytes]]:
    """The change feed's records of ``user_id``: (type, stored message), in order."""
    with db.connection_context():
        cursor = db.execute_sql(
            "SELECT type, message FROM user_changes WHERE user_id = %s ORDER BY sequence", (user_id,)
        )
        return [(kind, bytes(message)) for kind, message in cursor.fetchall()]


def test_each_change_writes_the_user_row_once_with_its_stored_bytes(
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    db: peewee.Database,
    row_writes: Callable[[str], list[str]],
) -> None:
    user_id = unique("once")
    created = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, email="a@example.com", metadata=struct({"a": {"b": 1}})),
        timeout=TIMEOUT,
    ).user
    assert row_writes(user_id) == ["INSERT"]
    assert assert_fresh(db, user_id) == created
    assert change_records(db, user_id) == [
        (users_pb2.UserEvent.TYPE_CREATED, created.SerializeToString(deterministic=True))
    ]
    changes = [
        users_pb2.UpdateUserRequest(user_id=user_id, first_name="Ann"),
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"a": {"c": 2}})),
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct({"only": True}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
    ]
    for number, change in enumerate(changes, start=2):
        returned = users.UpdateUser(change, timeout=TIMEOUT).user
        assert row_writes(user_id) == ["INSERT"] + ["UPDATE"] * (number - 1)
        assert assert_fresh(db, user_id) == returned
    session_id = unique("s")
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
    )
    assert row_writes(user_id) == ["INSERT"] + ["UPDATE"] * 4
    assert assert_fresh(db, user_id).session_count == 1
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_id), timeout=TIMEOUT)
    assert row_writes(user_id) == ["INSERT"] + ["UPDATE"] * 5
    final = assert_fresh(db, user_id)
    assert final.session_count == 0
    records = change_records(db, user_id)
    assert [kind for kind, _ in records] == [users_pb2.UserEvent.TYPE_CREATED] + [
        users_pb2.UserEvent.TYPE_UPDATED
    ] * 5
    assert records[-1][1] == final.SerializeToString(deterministic=True)


def test_a_batch_writes_each_new_user_row_once_and_leaves_existing_ones_alone(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database, row_writes: Callable[[str], list[str]]
) -> None:
    prefix = unique("batchonce")
    existing = users.CreateUser(users_pb2.CreateUserRequest(user_id=f"{prefix}-1"), timeout=TIMEOUT).user
    requests = [
        users_pb2.CreateUserRequest(user_id=f"{prefix}-{n}", metadata=struct({"n": n})) for n in (2, 1, 3)
    ]
    created = users.BatchCreateUsers(
        users_pb2.BatchCreateUsersRequest(requests=requests, skip_existing=True), timeout=TIMEOUT
    ).users
    assert [user.user_id for user in created] == [f"{prefix}-2", f"{prefix}-3"]
    assert created[0].id < created[1].id
    assert created[0].created_at == created[1].created_at == created[0].updated_at
    for user in created:
        assert row_writes(user.user_id) == ["INSERT"]
        assert assert_fresh(db, user.user_id) == user
        assert change_records(db, user.user_id) == [
            (users_pb2.UserEvent.TYPE_CREATED, user.SerializeToString(deterministic=True))
        ]
    assert row_writes(existing.user_id) == ["INSERT"]
    assert assert_fresh(db, existing.user_id) == existing


def test_stored_bytes_hold_metadata_as_postgresql_returns_it(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    """Numbers PostgreSQL writes out otherwise than the request (1e300 in full, 2^60 as a
    decimal, -0 as 0): the bytes stored with the row equal a build from what the row returns,
    whether a create, a replace, a merge or a batch wrote them."""
    metadata = {"negative_zero": -0.0, "huge": 1e300, "tiny": 1e-7, "tenth": 0.1, "big": float(2**60 + 1)}
    user_id = unique("numbers")
    created = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(metadata)), timeout=TIMEOUT
    ).user
    assert assert_fresh(db, user_id) == created
    assert math.copysign(1.0, created.metadata["negative_zero"]) == 1.0
    replaced = users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user_id=user_id,
            metadata=struct({"other_zero": -0.0, **metadata}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
        timeout=TIMEOUT,
    ).user
    assert assert_fresh(db, user_id) == replaced
    merged = users.UpdateUser(
        users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"more": {"zero": -0.0}})),
        timeout=TIMEOUT,
    ).user
    assert assert_fresh(db, user_id) == merged
    assert set(merged.metadata.fields) == {"other_zero", "more", *metadata}
    prefix = unique("batchnumbers")
    batch = users.BatchCreateUsers(
        users_pb2.BatchCreateUsersRequest(
            requests=[
                users_pb2.CreateUserRequest(user_id=f"{prefix}-{n}", metadata=struct(metadata))
                for n in range(2)
            ]
        ),
        timeout=TIMEOUT,
    ).users
    for user in batch:
        assert assert_fresh(db, user.user_id) == user
