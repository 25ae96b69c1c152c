"""ExportUsers against a real server and PostgreSQL: JSON lines built by the database.

Every accepted user comes back in its line exactly (and imports as itself);
every user once, in id order, across windows read at once and gaps in the ids;
resuming from any cursor; filters; windows too large for one message; errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_client.cli.records import create_request
from memstore_server import exporting
from memstore_server.config import Settings
from memstore_server.store import exports
from memstore_server.validation import MAX_METADATA_BYTES

from tests.support import (
    EXPORTED_FIELDS,
    TIMEOUT,
    RunningServer,
    ServerAddress,
    bulk_users,
    delete_ids,
    details_of,
    filtered_listing,
    json_values,
    rfc3339,
    struct,
    unique,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def exported(
    stub: users_pb2_grpc.UserServiceStub, cursor: int = 0, filter_text: str = ""
) -> list[users_pb2.ExportUsersResponse]:
    request = users_pb2.ExportUsersRequest(cursor=cursor, filter=filter_text)
    return list(stub.ExportUsers(request, timeout=TIMEOUT))


def lines_of(messages: list[users_pb2.ExportUsersResponse]) -> list[dict[str, Any]]:
    """Every user of the messages, checking each message's lines end in newlines and its
    next_cursor is the id of its last user."""
    records = []
    for message in messages:
        assert message.json_lines.endswith("\n")
        found = [json.loads(line) for line in message.json_lines.split("\n")[:-1]]
        assert found
        assert message.next_cursor == found[-1]["id"]
        records += found
    return records


# ------------------------------------------------------------------ every field, as accepted

texts = st.text(max_size=30)


@settings(
    max_examples=int(os.environ.get("MEMSTORE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@given(
    user_id=st.text(min_size=1, max_size=40),
    email=st.just("") | st.emails(),
    first_name=texts,
    last_name=texts,
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    created_micros=st.integers(0, 253402300799_999_999),
    updated_micros=st.integers(0, 253402300799_999_999),
)
def test_every_accepted_user_comes_back_in_its_line_and_imports_as_itself(  # noqa: PLR0917
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    user_id: str,
    email: str,
    first_name: str,
    last_name: str,
    metadata: dict[str, Any],
    created_micros: int,
    updated_micros: int,
) -> None:
    request = users_pb2.CreateUserRequest(
        user_id=f"{unique('x')}-{user_id}",
        email=email,
        first_name=first_name,
        last_name=last_name,
        metadata=struct(metadata),
    )
    refused: grpc.StatusCode | None = None
    try:
        user = users.CreateUser(request, timeout=TIMEOUT).user
    except grpc.RpcError as error:
        refused = error.code()
    assume(refused is None)  # what the server refuses (INVALID_ARGUMENT) is not exported
    # Any time PostgreSQL may hold, to the microsecond, including a whole second (no fraction):
    # whole seconds, then microseconds (an interval times a big number loses microseconds).
    with db.connection_context():
        db.execute_sql(
            "UPDATE users SET created_at = to_timestamp(%s) + %s * interval '1 microsecond', "
            "updated_at = to_timestamp(%s) WHERE id = %s",
            (*divmod(created_micros, 1_000_000), updated_micros // 1_000_000, user.id),
        )

    record = lines_of(exported(users, cursor=user.id - 1))[0]

    assert tuple(record) == EXPORTED_FIELDS
    assert (record["user_id"], record["email"], record["first_name"], record["last_name"]) == (
        request.user_id,
        email,
        first_name,
        last_name,
    )
    assert (record["uuid"], record["id"], record["session_count"]) == (user.uuid, user.id, 0)
    # Numbers are the API's doubles: a whole one comes back in full digits (as PostgreSQL keeps
    # it), which read as a double (as a Struct reads it) is the number that was stored.
    assert json_format.MessageToDict(struct(record["metadata"])) == json_format.MessageToDict(user.metadata)
    assert rfc3339(record["created_at"]) == EPOCH + timedelta(microseconds=created_micros)
    assert rfc3339(record["updated_at"]) == EPOCH + timedelta(seconds=updated_micros // 1_000_000)
    imported = create_request(record)
    assert (imported.user_id, imported.email, imported.first_name, imported.last_name) == (
        request.user_id,
        email,
        first_name,
        last_name,
    )
    assert json_format.MessageToDict(imported.metadata) == json_format.MessageToDict(request.metadata)


def test_a_line_follows_every_write_of_its_user(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    """The line is stored (m0011): each update, and each session that moves the count, must
    show in it as GetUser shows them."""
    user = users.CreateUser(
        users_pb2.CreateUserRequest(
            user_id=unique("moving"), email="a@example.com", metadata=struct({"v": 1})
        ),
        timeout=TIMEOUT,
    ).user

    def line() -> dict[str, Any]:
        (record,) = [r for r in lines_of(exported(users, cursor=user.id - 1)) if r["id"] == user.id]
        return record

    def as_got() -> dict[str, Any]:
        got = users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id), timeout=TIMEOUT).user
        return {
            "user_id": got.user_id,
            "email": got.email,
            "first_name": got.first_name,
            "last_name": got.last_name,
            "metadata": json_format.MessageToDict(got.metadata),
            "uuid": got.uuid,
            "id": got.id,
            "created_at": got.created_at.ToDatetime(timezone.utc),
            "updated_at": got.updated_at.ToDatetime(timezone.utc),
            "session_count": got.session_count,
        }

    def as_exported() -> dict[str, Any]:
        record = line()
        return {
            **record,
            "metadata": json_format.MessageToDict(struct(record["metadata"])),
            "created_at": rfc3339(record["created_at"]),
            "updated_at": rfc3339(record["updated_at"]),
        }

    assert as_exported() == as_got()
    updates = [
        users_pb2.UpdateUserRequest(user_id=user.user_id, email="b@example.com"),
        users_pb2.UpdateUserRequest(user_id=user.user_id, first_name='Zoë "the" \\ first\n'),
        users_pb2.UpdateUserRequest(user_id=user.user_id, last_name="\u2028last"),
        users_pb2.UpdateUserRequest(
            user_id=user.user_id, metadata=struct({"v": 2, "nested": {"deep": [1, "x"]}})
        ),
    ]
    for update in updates:
        users.UpdateUser(update, timeout=TIMEOUT)
        assert as_exported() == as_got()
    session_ids = [unique("session") for _ in range(3)]
    for session_id in session_ids:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user.user_id), timeout=TIMEOUT
        )
    assert as_exported()["session_count"] == 3
    sessions.DeleteSession(sessions_pb2.DeleteSessionRequest(session_id=session_ids[0]), timeout=TIMEOUT)
    assert as_exported() == as_got()
    assert as_exported()["session_count"] == 2
    assert as_exported()["last_name"] == "\u2028last"


# ------------------------------------------------------------------ every user once, in order


@pytest.fixture
def spread_users(empty_store: None, db: peewee.Database) -> list[int]:
    """About 5,000 users over many windows, with gaps: every third one and a block deleted."""
    ids = bulk_users(db, 7600)
    gone = ids[::3] + ids[2000:4000]
    delete_ids(db, gone)
    return sorted(set(ids) - set(gone))


def test_every_user_comes_once_in_id_order_across_windows_and_gaps(
    users: users_pb2_grpc.UserServiceStub, spread_users: list[int]
) -> None:
    messages = exported(users)
    assert [record["id"] for record in lines_of(messages)] == spread_users
    # Windows hold the users asked for: the gaps do not make windows of a handful.
    sizes = [message.json_lines.count("\n") for message in messages]
    first_windows = exporting.read_ahead_for(Settings().db_pool_size)  # read before any size is known
    assert sizes[:first_windows] == [exporting.FIRST_WINDOW] * first_windows
    assert all(size >= exporting.FIRST_WINDOW for size in sizes[:-1]), sizes
    # Small users: then the largest windows (or the rest of the table).
    rest = len(spread_users) - sum(sizes[:first_windows])
    assert sizes[first_windows] == min(max(exports.WINDOW_SIZES), rest), sizes


@pytest.mark.parametrize(
    ("bytes_per_user", "size"),
    [(None, exporting.FIRST_WINDOW), (0.0, 4000), (350.0, 2000), (262.0, 4000), (100_000.0, 8), (3e6, 1)],
)
def test_a_window_holds_the_most_users_whose_lines_fit_its_bytes(
    bytes_per_user: float | None, size: int
) -> None:
    assert exporting.window_size(bytes_per_user, 1024 * 1024) == size


def test_an_export_resumed_from_any_cursor_gives_exactly_the_rest(
    users: users_pb2_grpc.UserServiceStub, spread_users: list[int]
) -> None:
    cursors = [0, *(message.next_cursor for message in exported(users))]
    for cursor in [*cursors, spread_users[17], spread_users[-1] - 1]:
        rest = [record["id"] for record in lines_of(exported(users, cursor=cursor))]
        assert rest == [user_id for user_id in spread_users if user_id > cursor]


def test_an_export_after_the_last_user_or_of_no_users_has_no_messages(
    users: users_pb2_grpc.UserServiceStub, spread_users: list[int], db: peewee.Database
) -> None:
    assert exported(users, cursor=spread_users[-1]) == []
    with db.connection_context():
        db.execute_sql("TRUNCATE sessions, users")
    assert exported(users) == []


def test_a_filtered_export_gives_what_the_filtered_listing_gives(
    users: users_pb2_grpc.UserServiceStub, spread_users: list[int]
) -> None:
    for text in ("metadata.n < 300 OR metadata.n > 7000", 'user_id = "none"', "metadata.n >= 0"):
        expected = [user.id for user in filtered_listing(users, text, 1000)]
        assert [record["id"] for record in lines_of(exported(users, filter_text=text))] == expected


def test_windows_too_large_for_one_message_are_cut_into_several_that_fit(
    empty_store: None, db: peewee.Database, start_server: Callable[[Settings], RunningServer]
) -> None:
    limit = 1024 * 1024
    ids = bulk_users(db, 1500, pad=5000)  # a first window of 250 lines is about 1.3 MB
    server = start_server(Settings(listen="127.0.0.1:0", max_message_bytes=limit))
    with grpc.insecure_channel(server.target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        messages = exported(stub)
    assert all(message.ByteSize() <= limit for message in messages)
    assert len(messages) > 4
    assert [record["id"] for record in lines_of(messages)] == ids


def test_users_at_the_metadata_limit_come_back_in_small_windows_a_stock_client_reads(
    start_server: Callable[[Settings], RunningServer], empty_store: None, db: peewee.Database
) -> None:
    """Metadata at the size limit, escaped six bytes a character in JSON: after the first window,
    windows are sized by bytes (a few such users each), every message fits, every line reads
    back in a stock client as GetUser returns the user."""
    limit = 1024 * 1024
    characters = (MAX_METADATA_BYTES - 100) // 6  # chr(1) is stored as "\u0001": 6 bytes
    with db.connection_context():
        ids = [
            row[0]
            for row in db.execute_sql(
                "INSERT INTO users (user_id, metadata) SELECT 'largest-' || g || '-' || md5(random()::text), "
                "jsonb_build_object('pad', repeat(chr(1), %s)) "
                "FROM generate_series(1, 300) AS g RETURNING id",
                (characters,),
            ).fetchall()
        ]
    # One window read ahead, so only the first is sized before any bytes are known.
    server = start_server(Settings(listen="127.0.0.1:0", max_message_bytes=limit, db_pool_size=4))
    assert exporting.read_ahead_for(4) == 1
    with grpc.insecure_channel(server.target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        messages = exported(stub)
        records = lines_of(messages)
        assert [record["id"] for record in records] == sorted(ids)
        for record in records[::37]:
            got = stub.GetUser(users_pb2.GetUserRequest(user_id=record["user_id"]), timeout=TIMEOUT).user
            assert json_format.MessageToDict(struct(record["metadata"])) == json_format.MessageToDict(
                got.metadata
            )
            assert len(record["metadata"]["pad"]) == characters
    assert all(message.ByteSize() <= limit for message in messages)
    # The first window (250 users, about 16 MB) was read again user by user and cut; after it, a
    # window holds what fits half a message: at most 8 lines of about 64 KB.
    after_first = [
        message.json_lines.count("\n") for message in messages if message.next_cursor > sorted(ids)[249]
    ]
    assert after_first
    assert max(after_first) <= 8, after_first


# ------------------------------------------------------------------ errors and the plan


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"cursor": -1}, "cursor", ""),
        ({"filter": "metadata.n >"}, "filter", "INVALID_FILTER"),
        ({"filter": "colour = 3"}, "filter", "INVALID_FILTER"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    server: ServerAddress,
    users: users_pb2_grpc.UserServiceStub,
    request_fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(users.ExportUsers(users_pb2.ExportUsersRequest(**request_fields), timeout=TIMEOUT))
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details.violations
    if reason:
        assert details.reason == reason


def _plan(db: peewee.Database, query: str, params: tuple[Any, ...]) -> Iterator[str]:
    with db.connection_context():
        for (line,) in db.execute_sql(f"EXPLAIN {query}", params).fetchall():
            yield line


def test_a_window_is_read_through_the_primary_key_never_the_whole_table(
    spread_users: list[int], db: peewee.Database
) -> None:
    after, through = spread_users[10], spread_users[900]
    with db.connection_context():
        db.execute_sql("ANALYZE users")  # the plan of a table of this size, not of an empty one
    windows = (
        (exports._WINDOW, (after, through)),
        *((exports._WINDOW_ENDS[size], (after, after)) for size in exports.WINDOW_SIZES),
    )
    for statement, params in windows:
        plan = "\n".join(_plan(db, statement.text, params))
        assert "users_pkey" in plan, plan
        assert "Seq Scan" not in plan, plan
