"""Every RPC driven with open-ended input: the answer is OK or a specific client error, never more.

Invariants, for each generated call: the status is OK or one of the client errors
(INVALID_ARGUMENT naming a field, read back in full by a default-configured client
however many fields are bad, NOT_FOUND, ALREADY_EXISTS, ...), never UNKNOWN or
INTERNAL, and never RESOURCE_EXHAUSTED: nothing sent here is too large to receive,
so that status could only mean an error or a page too large for its message; a
call that fails changes nothing stored; what a call stored is within the metadata
limits as PostgreSQL holds it, and reads back the same through the Python stubs,
the Python client and, at the end, the TypeScript client, one at a time and in
whole-table listings, among users and sessions as large as the limits allow; an
update that leaves metadata alone never fails because of it; and the server is
healthy at the end.
MEMSTORE_FUZZ_EXAMPLES sets the examples per RPC (``make fuzz`` raises it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_client import MemstoreClient
from memstore_server.config import DEFAULT_MAX_MESSAGE_BYTES
from memstore_server.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH

from tests.reliability import record
from tests.support import (
    TIMEOUT,
    ServerAddress,
    compact_size_as_stored,
    create_user_request_nested,
    details_of,
    stored_compact_size,
    trailer_bytes,
    unique,
)

EXAMPLES = int(os.environ.get("MEMSTORE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Not RESOURCE_EXHAUSTED: it is what a default client reports for an error whose trailers
# are too large, and what a page too large for its message becomes.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
# What the error of a bad request may take in trailers, however many fields are bad.
MAX_ERROR_TRAILER_BYTES = 8 * 1024
KNOWN_USERS = [f"fuzz-user-{n}" for n in range(4)]
SERVICE_METHODS = [
    method
    for file in (users_pb2.DESCRIPTOR, sessions_pb2.DESCRIPTOR)
    for service in file.services_by_name.values()
    for method in service.methods
]
KNOWN_SESSIONS = [f"fuzz-session-{n}" for n in range(4)]

# Strings as the wire carries them (no surrogates: proto3 strings are UTF-8), control
# characters and NUL included, sometimes very long, sometimes the ids that exist.
texts = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=5),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=250, max_size=300),
    st.just("x" * 20_000),
)
user_ids = st.one_of(st.sampled_from(KNOWN_USERS), texts)
session_ids = st.one_of(st.sampled_from(KNOWN_SESSIONS), texts)
int32s = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 1000, 1001, 2**31 - 1, -(2**31)])
)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]))
# None: just before the largest users or sessions (see ``largest``), wherever the table has them.
cursors = st.none() | int64s
# Every magnitude: the extremes of a double, subnormals, the edge of exact integers, -0.
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**60), 2**60)
    | st.sampled_from(
        [1e300, -1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 1e-7, 1e16, -0.0, 2**53, 2**53 + 1]
    )
)
keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        value = {"d": value}
    return value


metadata_values = st.one_of(
    st.none(),
    st.dictionaries(keys, json_values, max_size=6),
    # Deep nesting, up to where this client can still build it; deeper goes as raw bytes below.
    st.integers(1, 30).map(_deep),
    st.integers(1, 3000).map(lambda n: {"big": list(range(n))}),  # huge arrays
    st.integers(60_000, 70_000).map(lambda n: {"pad": "x" * n}),  # around the 64 KiB limit
    # The largest metadata there is as a protobuf (small numbers: 2 bytes as JSON, 11 as a
    # Struct), and short numbers that are long as stored (1e300: 6 bytes sent, 301 stored).
    st.integers(MAX_METADATA_BYTES // 2 - 8, MAX_METADATA_BYTES // 2 + 8).map(lambda n: {"n": [1] * n}),
    st.integers(150, 250).map(lambda n: {"big": [1e300] * n}),
    # Many bad places at once, and bad places with long paths: an error to carry them all.
    st.integers(50, 400).map(lambda n: {"nans": [math.nan] * n}),
    st.integers(1000, 6000).map(lambda n: {"k" * n: math.inf}),
    st.integers(20, 200).map(lambda n: {f"{'key' * 100}{i}": {"\x00": math.nan} for i in range(n)}),
)
masks = st.none() | st.lists(
    st.sampled_from(["email", "first_name", "last_name", "metadata", "user_id", "id", "", "metadata.x"]),
    max_size=3,
)
# Hundreds of paths no update knows, some of them long.
unknown_masks = st.lists(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=300), min_size=50, max_size=300
)


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    result = struct_pb2.Struct()
    result.update(value)
    return result


def mask(paths: list[str] | None) -> field_mask_pb2.FieldMask | None:
    return None if paths is None else field_mask_pb2.FieldMask(paths=paths)


def snapshot(db: peewee.Database) -> tuple[Any, ...]:
    """What is stored, by the version of each row: a write that commits makes a new version
    (a new xmin) even when it stores the same values, and one rolled back leaves it as it was.
    Cheap beside hashing the rows' text, which for the largest rows is most of a fuzz run."""
    version = "sum(hashtext(id::text || ':' || xmin::text))"
    with db.connection_context():
        row = db.execute_sql(
            f"SELECT (SELECT count(*) FROM users), (SELECT coalesce({version}, 0) FROM users), "
            f"(SELECT count(*) FROM sessions), (SELECT coalesce({version}, 0) FROM sessions)"
        ).fetchone()
    return tuple(row)


class Tally:
    def __init__(self) -> None:
        self.calls = 0
        self.codes: dict[str, int] = {}


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counts = Tally()
    started = time.monotonic()
    yield counts
    record(
        "bad input (fuzz)",
        f"hypothesis-generated requests to all {len(SERVICE_METHODS)} RPCs plus raw bytes "
        f"({EXAMPLES} examples each): "
        "control characters, NUL, 20 kB strings, metadata 1-64 levels deep, the largest metadata, "
        "doubles of every magnitude, NaN/inf, hundreds of bad fields in one request, extreme limits "
        f"and cursors, listings over {LARGEST_COUNT} users and sessions as large as the limits allow",
        counts.calls,
        f"no UNKNOWN, INTERNAL or RESOURCE_EXHAUSTED; every error within "
        f"{MAX_ERROR_TRAILER_BYTES // 1024} KiB of trailers; every failed call left the tables "
        f"unchanged; every accepted write within the limits as stored and read back by the stubs, "
        f"the Python client and the TypeScript client; codes "
        f"{dict(sorted(counts.codes.items()))}; {time.monotonic() - started:.0f}s",
    )


@pytest.fixture(scope="module")
def seeded(
    db: peewee.Database, users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> None:
    with db.connection_context():
        db.execute_sql("DELETE FROM users WHERE user_id LIKE 'fuzz-%%'")
        db.execute_sql("DELETE FROM sessions WHERE session_id LIKE 'fuzz-%%'")
    for user_id, session_id in zip(KNOWN_USERS, KNOWN_SESSIONS, strict=True):
        users.CreateUser(
            users_pb2.CreateUserRequest(user_id=user_id, metadata=struct({"a": {"b": 1}})), timeout=TIMEOUT
        )
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id), timeout=TIMEOUT
        )


# As large as the limits allow, as protobuf: the most small numbers 64 KiB of JSON holds ("1," is
# 2 bytes there, 11 in a Struct) and names of 255 four-byte characters; more of them than one
# default-sized message holds, so every listing that reaches them has a page to cut.
LARGEST_METADATA = {"n": [1] * ((MAX_METADATA_BYTES - len('{"n":[]}') + 1) // 2)}
LARGEST_NAME = "\U0001d11e" * 255
LARGEST_COUNT = 14


# A whole-table stream may take this long (see test_listings).
STREAM_TIMEOUT = 6 * TIMEOUT


@dataclass(frozen=True)
class Largest:
    """Where the largest users and the largest sessions (of KNOWN_USERS[0]) start: cursors."""

    users_after: int
    sessions_after: int


@pytest.fixture(scope="module")
def largest(
    seeded: None, users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> Iterator[Largest]:
    metadata = struct(LARGEST_METADATA)
    created = [
        users.CreateUser(
            users_pb2.CreateUserRequest(
                user_id=f"fuzz-largest-{n}",
                first_name=LARGEST_NAME,
                last_name=LARGEST_NAME,
                metadata=metadata,
            ),
            timeout=TIMEOUT,
        ).user
        for n in range(LARGEST_COUNT)
    ]
    owned = [
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(
                session_id=f"fuzz-largest-{n}", user_id=KNOWN_USERS[0], metadata=metadata
            ),
            timeout=TIMEOUT,
        ).session
        for n in range(LARGEST_COUNT)
    ]
    assert sum(user.ByteSize() for user in created) > DEFAULT_MAX_MESSAGE_BYTES
    assert sum(session.ByteSize() for session in owned) > DEFAULT_MAX_MESSAGE_BYTES
    yield Largest(created[0].id - 1, owned[0].id - 1)
    # Gone again, so the modules after this one list tables of ordinary size.
    for user in created:
        users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id), timeout=TIMEOUT)
    for session in owned:
        sessions.DeleteSession(
            sessions_pb2.DeleteSessionRequest(session_id=session.session_id), timeout=TIMEOUT
        )


def check(
    db: peewee.Database, tally: Tally, call: Callable[[], Any], *, leaves_metadata: bool = False
) -> Any:
    """Make ``call``; a failure must be a client error and must leave the store as it was,
    and when the call ``leaves_metadata`` alone it must not fail because of metadata.
    Returns the response of a call that succeeded, else None."""
    before = snapshot(db)
    tally.calls += 1
    failure: grpc.RpcError | None = None
    try:
        result = call()
        if isinstance(result, Iterator):
            result = list(result)
    except grpc.RpcError as error:
        failure = error
    if failure is None:
        tally.codes["OK"] = tally.codes.get("OK", 0) + 1
        return result
    code: grpc.StatusCode = failure.code()
    tally.codes[code.name] = tally.codes.get(code.name, 0) + 1
    assert code in CLIENT_ERRORS, f"{code.name}: {failure.details()}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = details_of(failure).violations
        assert violations, "INVALID_ARGUMENT without a field named"
        assert trailer_bytes(failure) <= MAX_ERROR_TRAILER_BYTES
        if leaves_metadata:
            assert not [field for field in violations if field.startswith("metadata")], violations
    assert snapshot(db) == before, "a failed call changed what is stored"
    return None


def as_floats(value: Any) -> Any:
    """``value`` with every number a float: each client has its own idea of an integer."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [as_floats(item) for item in value]
    return {key: as_floats(item) for key, item in value.items()}


class Written:
    """What the fuzzing stored, to be read back through every client."""

    def __init__(self) -> None:
        self.user_ids: set[str] = set()
        self.session_ids: set[str] = set()


@pytest.fixture(scope="module")
def written() -> Written:
    return Written()


@pytest.fixture(scope="module")
def python_client(server: ServerAddress) -> Iterator[MemstoreClient]:
    with MemstoreClient(server.target) as client:
        yield client


def within_limits_as_stored(db: peewee.Database, table: str, key: str, key_value: str) -> None:
    """What PostgreSQL holds is within the documented size, measured on its own text
    (not by the server's measure, which once counted 1e300 as 6 bytes where 301 were stored)."""
    assert stored_compact_size(db, table, key, key_value) <= MAX_METADATA_BYTES


def read_back_user(
    users: users_pb2_grpc.UserServiceStub,
    client: MemstoreClient,
    db: peewee.Database,
    written: Written,
    stored: users_pb2.User,
) -> None:
    """The user a call just returned is within the limits as stored, and reads back the same
    through the stubs and the Python client."""
    within_limits_as_stored(db, "users", "user_id", stored.user_id)
    fetched = users.GetUser(users_pb2.GetUserRequest(user_id=stored.user_id), timeout=TIMEOUT).user
    assert fetched == stored
    through_client = client.user.get(stored.user_id)
    assert as_floats(through_client.metadata) == as_floats(json_format.MessageToDict(stored.metadata))
    assert (through_client.email, through_client.first_name, through_client.last_name) == (
        stored.email,
        stored.first_name,
        stored.last_name,
    )
    written.user_ids.add(stored.user_id)


def read_back_session(
    sessions: sessions_pb2_grpc.SessionServiceStub,
    client: MemstoreClient,
    db: peewee.Database,
    written: Written,
    stored: sessions_pb2.Session,
) -> None:
    within_limits_as_stored(db, "sessions", "session_id", stored.session_id)
    fetched = sessions.GetSession(
        sessions_pb2.GetSessionRequest(session_id=stored.session_id), timeout=TIMEOUT
    ).session
    assert fetched == stored
    through_client = client.session.get(stored.session_id)
    assert as_floats(through_client.metadata) == as_floats(json_format.MessageToDict(stored.metadata))
    written.session_ids.add(stored.session_id)


pytestmark = pytest.mark.usefixtures("seeded", "largest")


# Requests as a caller means them (each one valid), and requests of any fields at all.
plain_text = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=40)
plain_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | plain_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_text, inner, max_size=4),
    max_leaves=20,
)
valid_create_user_requests = st.builds(
    users_pb2.CreateUserRequest,
    user_id=st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40).map(
        lambda text: "fuzz-batch-" + text
    ),
    email=st.sampled_from(["", "jane@example.com", "a.b+c@sub.example.org"]),
    first_name=plain_text,
    last_name=plain_text,
    metadata=st.one_of(
        st.dictionaries(plain_text.filter(lambda key: key != "__proto__"), plain_json, max_size=5),
        st.integers(0, MAX_METADATA_DEPTH - 1).map(_deep),
    ).map(struct),
)
any_create_user_requests = st.builds(
    users_pb2.CreateUserRequest,
    user_id=user_ids,
    email=texts,
    first_name=texts,
    last_name=texts,
    metadata=metadata_values.map(struct),
)


@FUZZ
@given(
    requests=st.lists(valid_create_user_requests, min_size=1, max_size=5, unique_by=lambda r: r.user_id)
    | st.lists(st.one_of(valid_create_user_requests, any_create_user_requests), max_size=5)
    | st.integers(1001, 1003).map(lambda n: [users_pb2.CreateUserRequest(user_id=f"b{i}") for i in range(n)]),
    skip_existing=st.booleans(),
)
def test_batch_create_users(
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    requests: list[users_pb2.CreateUserRequest],
    skip_existing: bool,
) -> None:
    """The batch form of CreateUser: the same inputs, several at once, none or all stored."""
    request = users_pb2.BatchCreateUsersRequest(requests=requests, skip_existing=skip_existing)
    created = check(db, tally, lambda: users.BatchCreateUsers(request, timeout=TIMEOUT))
    if created is not None:
        for user in created.users:
            read_back_user(users, python_client, db, written, user)


@FUZZ
@given(user_id=user_ids, email=texts, first=texts, last=texts, metadata=metadata_values)
def test_create_user(
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    user_id: str,
    email: str,
    first: str,
    last: str,
    metadata: dict[str, Any] | None,
) -> None:
    request = users_pb2.CreateUserRequest(
        user_id=user_id, email=email, first_name=first, last_name=last, metadata=struct(metadata)
    )
    created = check(db, tally, lambda: users.CreateUser(request, timeout=TIMEOUT))
    if created is not None:
        read_back_user(users, python_client, db, written, created.user)


@FUZZ
@given(
    user_id=user_ids,
    email=st.none() | texts,
    first=st.none() | texts,
    metadata=metadata_values,
    paths=masks | unknown_masks,
)
def test_update_user(
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    user_id: str,
    email: str | None,
    first: str | None,
    metadata: dict[str, Any] | None,
    paths: list[str] | None,
) -> None:
    request = users_pb2.UpdateUserRequest(
        user_id=user_id, email=email, first_name=first, metadata=struct(metadata), update_mask=mask(paths)
    )
    leaves_metadata = metadata is None and "metadata" not in (paths or ())
    updated = check(
        db, tally, lambda: users.UpdateUser(request, timeout=TIMEOUT), leaves_metadata=leaves_metadata
    )
    if updated is not None:
        read_back_user(users, python_client, db, written, updated.user)


@FUZZ
@given(user_id=texts, rpc=st.sampled_from(["GetUser", "DeleteUser"]))
def test_get_and_delete_user(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database, tally: Tally, user_id: str, rpc: str
) -> None:
    # Known ids are left out so the seeded users survive for the other properties.
    request = getattr(users_pb2, f"{rpc}Request")(user_id=user_id)
    check(db, tally, lambda: getattr(users, rpc)(request, timeout=TIMEOUT))


def whole_pages(pages: list[Any], items: str) -> None:
    """Each page of a listing that succeeded goes on from its last item (fewer items than asked
    for when they would not fit in one message, never a failure)."""
    for page in pages:
        listed = getattr(page, items)
        if page.next_cursor:
            assert listed, "a page before the end holds at least one item"
            assert page.next_cursor == listed[-1].id


@FUZZ
@given(
    limit=int32s, cursor=cursors, user_id=user_ids, rpc=st.sampled_from(["ListUsers", "Chunked", "Sessions"])
)
def test_listings(
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    largest: Largest,
    limit: int,
    cursor: int | None,
    user_id: str,
    rpc: str,
) -> None:
    if rpc == "ListUsers":
        request = users_pb2.ListUsersRequest(
            limit=limit, cursor=largest.users_after if cursor is None else cursor
        )
        page = check(db, tally, lambda: users.ListUsers(request, timeout=TIMEOUT))
        whole_pages([page] if page is not None else [], "users")
    elif rpc == "Chunked":
        chunked = users_pb2.ListUsersChunkedRequest(
            chunk_size=limit, cursor=largest.users_after if cursor is None else cursor
        )
        # From an early cursor in chunks of one, the stream is a message per user of a table that the
        # other fuzz tests fill by the thousand (BatchCreateUsers): tens of thousands of messages.
        streamed = check(db, tally, lambda: users.ListUsersChunked(chunked, timeout=STREAM_TIMEOUT))
        whole_pages(streamed or [], "users")
    else:
        paged = users_pb2.GetUserSessionsRequest(
            user_id=user_id, limit=limit, cursor=largest.sessions_after if cursor is None else cursor
        )
        page = check(db, tally, lambda: users.GetUserSessions(paged, timeout=TIMEOUT))
        whole_pages([page] if page is not None else [], "sessions")


@FUZZ
@given(
    session_id=session_ids,
    user_id=user_ids,
    metadata=metadata_values,
    paths=masks | unknown_masks,
    rpc=st.sampled_from(["CreateSession", "UpdateSession", "GetSession", "ListSessions"]),
    limit=int32s,
    cursor=cursors,
)
def test_sessions(
    sessions: sessions_pb2_grpc.SessionServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    largest: Largest,
    session_id: str,
    user_id: str,
    metadata: dict[str, Any] | None,
    paths: list[str] | None,
    rpc: str,
    limit: int,
    cursor: int | None,
) -> None:
    requests: dict[str, Any] = {
        "CreateSession": sessions_pb2.CreateSessionRequest(
            session_id=session_id, user_id=user_id, metadata=struct(metadata)
        ),
        "UpdateSession": sessions_pb2.UpdateSessionRequest(
            session_id=session_id, metadata=struct(metadata), update_mask=mask(paths)
        ),
        "GetSession": sessions_pb2.GetSessionRequest(session_id=session_id),
        "ListSessions": sessions_pb2.ListSessionsRequest(
            limit=limit, cursor=largest.sessions_after if cursor is None else cursor, user_id=user_id
        ),
    }
    leaves_metadata = rpc == "UpdateSession" and metadata is None and "metadata" not in (paths or ())
    response = check(
        db,
        tally,
        lambda: getattr(sessions, rpc)(requests[rpc], timeout=TIMEOUT),
        leaves_metadata=leaves_metadata,
    )
    if response is not None and rpc in ("CreateSession", "UpdateSession"):
        read_back_session(sessions, python_client, db, written, response.session)
    if response is not None and rpc == "ListSessions":
        whole_pages([response], "sessions")


@FUZZ
@given(session_id=texts)
def test_delete_session(
    sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database, tally: Tally, session_id: str
) -> None:
    request = sessions_pb2.DeleteSessionRequest(session_id=session_id)
    check(db, tally, lambda: sessions.DeleteSession(request, timeout=TIMEOUT))


# Every unary method of the API, as its descriptors have it, so a new one is fuzzed too.
METHODS = [
    f"/{method.containing_service.full_name}/{method.name}"
    for method in SERVICE_METHODS
    if not method.client_streaming and not method.server_streaming
]


@FUZZ
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200))
def test_raw_bytes(
    channel: grpc.Channel, db: peewee.Database, tally: Tally, method: str, payload: bytes
) -> None:
    """Any bytes at all (invalid UTF-8, encoded lone surrogates, cut-off fields): a client error at worst."""
    raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    check(db, tally, lambda: raw(payload, timeout=TIMEOUT))


@FUZZ
@given(depth=st.integers(1, 64))
def test_metadata_of_any_depth(
    channel: grpc.Channel,
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    depth: int,
) -> None:
    """Nesting up to 64 levels, sent as bytes (deeper than this client builds): accepted exactly
    up to the documented depth, and then readable everywhere."""
    create = channel.unary_unary(
        "/memstore.v1.UserService/CreateUser",
        request_serializer=None,
        response_deserializer=users_pb2.CreateUserResponse.FromString,
    )
    created = check(
        db, tally, lambda: create(create_user_request_nested(unique("fuzz-deep"), depth), timeout=TIMEOUT)
    )
    assert (created is not None) == (depth <= MAX_METADATA_DEPTH)
    if created is not None:
        read_back_user(users, python_client, db, written, created.user)


# Doubles as they travel (google.protobuf.Struct), every magnitude: those PostgreSQL writes out
# long (1e300: 301 digits, 5e-324: 326) beside short ones. Whole numbers below 2**53 are sent as
# ints, which is how they are stored.
travelling_numbers = (
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not (x.is_integer() and abs(x) < 2**53))
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.sampled_from([1e300, -1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 1.5e-7, 1e16])
)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@FUZZ
@given(
    numbers=st.lists(travelling_numbers, min_size=1, max_size=250),
    slack=st.integers(-64, 64),
    more=st.lists(travelling_numbers, max_size=20),
)
def test_metadata_near_the_size_limit_is_measured_as_stored(
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    tally: Tally,
    python_client: MemstoreClient,
    written: Written,
    numbers: list[float],
    slack: int,
    more: list[float],
) -> None:
    """Numbers beside padding that brings metadata to the size limit in its short form: accepted
    exactly when within the limit as PostgreSQL stores it, on create and on a merging update."""
    padding = max(0, MAX_METADATA_BYTES - len(compact_json({"n": numbers, "pad": ""})) + slack)
    metadata = {"n": numbers, "pad": "x" * padding}
    fits = compact_size_as_stored(db, compact_json(metadata)) <= MAX_METADATA_BYTES
    user_id = unique("fuzz-near")
    request = users_pb2.CreateUserRequest(user_id=user_id, metadata=struct(metadata))
    created = check(db, tally, lambda: users.CreateUser(request, timeout=TIMEOUT))
    assert (created is not None) == fits, f"as stored: {compact_size_as_stored(db, compact_json(metadata))}"
    if created is None:
        return
    read_back_user(users, python_client, db, written, created.user)
    merged_fits = compact_size_as_stored(db, compact_json({**metadata, "more": more})) <= MAX_METADATA_BYTES
    merge = users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"more": more}))
    updated = check(db, tally, lambda: users.UpdateUser(merge, timeout=TIMEOUT))
    assert (updated is not None) == merged_fits
    if updated is not None:
        read_back_user(users, python_client, db, written, updated.user)


TYPESCRIPT_CLIENT = Path(__file__).resolve().parent.parent / "client" / "typescript"
# Reads what it is given through the TypeScript client, and the whole table with
# listChunked, and prints it all as JSON: any response it cannot parse fails it.
_READ_BACK_SCRIPT = """
import { MemstoreClient } from %s;
const input = JSON.parse(await new Promise((done) => {
  let text = ""; process.stdin.on("data", (d) => (text += d)); process.stdin.on("end", () => done(text));
}));
const client = new MemstoreClient({ address: input.address });
const users = {}, sessions = {};
for (const id of input.user_ids) {
  const u = await client.user.get(id);
  users[id] = { email: u.email, first_name: u.first_name, last_name: u.last_name, metadata: u.metadata };
}
for (const id of input.session_ids) sessions[id] = { metadata: (await client.session.get(id)).metadata };
let streamed = 0;
for await (const chunk of client.user.listChunked(1000)) streamed += chunk.length;
let paged = 0;
for (let cursor = 0; ; ) {
  const page = await client.user.list(1000, cursor);
  paged += page.length;
  if (page.length === 0) break;
  cursor = page[page.length - 1].id;
}
client.close();
process.stdout.write(JSON.stringify({ users, sessions, streamed, paged }));
"""


def _built_typescript_client() -> Path:
    """The TypeScript client's entry point, built from this checkout (npm ci first if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the TypeScript client")
    npm = ["npm", "--no-audit", "--no-fund"]
    if not (TYPESCRIPT_CLIENT / "node_modules").is_dir():
        subprocess.run([*npm, "ci"], cwd=TYPESCRIPT_CLIENT, check=True, capture_output=True, timeout=900)
    subprocess.run(
        [*npm, "run", "build"], cwd=TYPESCRIPT_CLIENT, check=True, capture_output=True, timeout=600
    )
    return TYPESCRIPT_CLIENT / "dist" / "index.js"


def test_everything_accepted_reads_back_in_the_typescript_client(
    server: ServerAddress,
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    db: peewee.Database,
    written: Written,
    tmp_path: Path,
) -> None:
    assert written.user_ids, "the fuzzing stored no user to read back"
    entry = _built_typescript_client()
    script = tmp_path / "read-back.mjs"
    script.write_text(_READ_BACK_SCRIPT % json.dumps(entry.as_uri()))
    user_ids = sorted(
        u for u in written.user_ids if _exists(users.GetUser, users_pb2.GetUserRequest(user_id=u))
    )
    session_ids = sorted(
        s
        for s in written.session_ids
        if _exists(sessions.GetSession, sessions_pb2.GetSessionRequest(session_id=s))
    )
    request = {"address": server.target, "user_ids": user_ids, "session_ids": session_ids}
    result = subprocess.run(
        ["node", str(script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    for user_id in user_ids:
        stored = users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user
        got = read["users"][user_id]
        assert (got["email"], got["first_name"], got["last_name"]) == (
            stored.email,
            stored.first_name,
            stored.last_name,
        )
        assert as_floats(got["metadata"]) == as_floats(json_format.MessageToDict(stored.metadata)), user_id
    for session_id in session_ids:
        stored_session = sessions.GetSession(
            sessions_pb2.GetSessionRequest(session_id=session_id), timeout=TIMEOUT
        ).session
        assert as_floats(read["sessions"][session_id]["metadata"]) == as_floats(
            json_format.MessageToDict(stored_session.metadata)
        )
    with db.connection_context():
        (total,) = db.execute_sql("SELECT count(*) FROM users").fetchone()
    assert read["streamed"] == total
    assert read["paged"] == total


def _exists(call: Callable[..., Any], request: Any) -> bool:
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def test_server_is_healthy_after_the_fuzzing(
    channel: grpc.Channel, users: users_pb2_grpc.UserServiceStub
) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    for user_id in KNOWN_USERS:
        users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT)
