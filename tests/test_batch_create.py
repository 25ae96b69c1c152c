"""BatchCreateUsers over the wire: atomic, in request order, skip_existing, races, limits."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import json_format
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.config import Settings

from tests.support import TIMEOUT, RunningServer, details_of, expect_error, struct, unique
from tests.test_stored_messages import assert_fresh


def request(user_id: str, **fields: Any) -> users_pb2.CreateUserRequest:
    return users_pb2.CreateUserRequest(user_id=user_id, **fields)


def batch(
    users: users_pb2_grpc.UserServiceStub, requests: list[users_pb2.CreateUserRequest], **options: Any
) -> list[users_pb2.User]:
    response: users_pb2.BatchCreateUsersResponse = users.BatchCreateUsers(
        users_pb2.BatchCreateUsersRequest(requests=requests, **options), timeout=TIMEOUT
    )
    return list(response.users)


def stored(db: peewee.Database, user_ids: list[str]) -> set[str]:
    """Which of ``user_ids`` exist."""
    with db.connection_context():
        rows = db.execute_sql("SELECT user_id FROM users WHERE user_id = ANY(%s)", (user_ids,)).fetchall()
    return {row[0] for row in rows}


def get(users: users_pb2_grpc.UserServiceStub, user_id: str) -> users_pb2.User:
    response: users_pb2.GetUserResponse = users.GetUser(
        users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT
    )
    return response.user


def test_creates_every_user_in_request_order_as_stored(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("batch")
    requests = [
        request(
            f"{prefix}-{n}",
            email=f"u{n}@example.com",
            first_name=f"F{n}",
            last_name="L",
            metadata=struct({"n": n, "nested": {"ok": True, "list": [1, "x", None]}}),
        )
        for n in (3, 1, 2)  # not sorted: order is the request's
    ]
    created = batch(users, requests)
    assert [user.user_id for user in created] == [r.user_id for r in requests]
    for made, asked in zip(created, requests, strict=True):
        assert (made.email, made.first_name, made.last_name) == (asked.email, asked.first_name, "L")
        assert json_format.MessageToDict(made.metadata) == json_format.MessageToDict(asked.metadata)
        assert made.id > 0
        assert made.uuid
        assert made.session_count == 0
        assert made.updated_at == made.created_at
        assert get(users, made.user_id) == made
        assert assert_fresh(db, made.user_id) == made
    assert [user.id for user in created] == sorted(user.id for user in created)


def test_one_request_and_a_thousand_are_accepted(users: users_pb2_grpc.UserServiceStub) -> None:
    prefix = unique("sizes")
    assert len(batch(users, [request(f"{prefix}-one")])) == 1
    thousand = [request(f"{prefix}-{n}") for n in range(1000)]
    created = batch(users, thousand)
    assert [user.user_id for user in created] == [r.user_id for r in thousand]
    assert len({user.id for user in created}) == 1000


@pytest.mark.parametrize(("count", "words"), [(0, "at least one"), (1001, "at most 1000")])
def test_no_request_or_too_many_is_invalid_argument(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database, count: int, words: str
) -> None:
    prefix = unique("count")
    requests = [request(f"{prefix}-{n}") for n in range(count)]
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert words in details.violations["requests"]
    assert stored(db, [r.user_id for r in requests]) == set()


def test_every_bad_field_is_named_by_its_request_and_nothing_is_created(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("bad")
    requests = [request(f"{prefix}-{n}") for n in range(1000)]
    requests[3] = request(f"{prefix}-3", email="not an address")
    requests[699] = request("", first_name="no id")
    requests[998] = request(f"{prefix}-998", metadata=struct({"k": "nul\x00"}))
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(details.violations) == {
        "requests[3].email",
        "requests[699].user_id",
        "requests[998].metadata.k",
    }
    assert details.message.startswith("requests[3].email: is not a valid email address")
    assert stored(db, [r.user_id for r in requests]) == set()


def test_a_700th_user_that_exists_leaves_nothing_created(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("atomic")
    requests = [request(f"{prefix}-{n}") for n in range(1000)]
    taken = requests[699].user_id
    before = users.CreateUser(request(taken, first_name="first"), timeout=TIMEOUT).user
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.reason == "USER_ALREADY_EXISTS"
    assert details.metadata == {"user_id": taken, "index": "699"}
    assert "requests[699]" in details.message
    assert stored(db, [r.user_id for r in requests]) == {taken}
    assert get(users, taken) == before


def test_the_first_existing_user_in_request_order_is_named(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("first")
    requests = [request(f"{prefix}-{n}") for n in range(10)]
    # Created in the opposite order, so neither id nor creation order points at the first.
    for index in (8, 5, 2):
        users.CreateUser(requests[index], timeout=TIMEOUT)
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.metadata == {"user_id": requests[2].user_id, "index": "2"}
    assert len(stored(db, [r.user_id for r in requests])) == 3


@pytest.mark.parametrize("skip_existing", [False, True])
def test_a_user_id_twice_in_the_batch_is_already_exists(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database, skip_existing: bool
) -> None:
    prefix = unique("twice")
    requests = [request(f"{prefix}-{n}") for n in range(6)]
    requests[4] = request(requests[1].user_id, first_name="again")
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests, skip_existing=skip_existing),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.reason == "USER_ALREADY_EXISTS"
    assert details.metadata == {"user_id": requests[1].user_id, "index": "4"}
    assert "requests[1]" in details.message
    assert stored(db, [r.user_id for r in requests]) == set()


def test_an_existing_user_before_a_repeat_is_the_one_named(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("order")
    requests = [request(f"{prefix}-{n}") for n in range(6)]
    requests[5] = request(requests[3].user_id)
    users.CreateUser(requests[1], timeout=TIMEOUT)
    details = expect_error(
        users.BatchCreateUsers,
        users_pb2.BatchCreateUsersRequest(requests=requests),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert details.metadata == {"user_id": requests[1].user_id, "index": "1"}
    assert stored(db, [r.user_id for r in requests]) == {requests[1].user_id}


def test_skip_existing_creates_the_others_and_leaves_existing_users_exactly_as_they_are(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("skip")
    requests = [request(f"{prefix}-{n}", first_name="new") for n in range(8)]
    existing = {
        index: users.CreateUser(
            request(requests[index].user_id, first_name="old", metadata=struct({"keep": index})),
            timeout=TIMEOUT,
        ).user
        for index in (0, 4, 7)
    }
    with db.connection_context():
        bytes_before = {
            row[0]: bytes(row[1])
            for row in db.execute_sql(
                "SELECT user_id, message FROM users WHERE user_id = ANY(%s)",
                ([user.user_id for user in existing.values()],),
            )
        }
    created = batch(users, requests, skip_existing=True)
    assert [user.user_id for user in created] == [
        r.user_id for i, r in enumerate(requests) if i not in existing
    ]
    assert all(user.first_name == "new" for user in created)
    for user in existing.values():
        assert get(users, user.user_id) == user  # updated_at included: not touched
        assert assert_fresh(db, user.user_id) == user
    with db.connection_context():
        for user_id, before in bytes_before.items():
            (after,) = db.execute_sql("SELECT message FROM users WHERE user_id = %s", (user_id,)).fetchone()
            assert bytes(after) == before
    # Run again, as an interrupted import would be: nothing left to create, nothing changes.
    assert batch(users, requests, skip_existing=True) == []
    assert [get(users, user.user_id) for user in created] == created


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once; each one's result, or the RpcError it raised."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = calls[index]()
        except grpc.RpcError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    return results


def test_two_overlapping_batches_at_once_one_wins_whole_and_the_other_creates_nothing(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    for attempt in range(5):
        prefix = unique(f"race{attempt}")
        left = [request(f"{prefix}-{n}", first_name="left") for n in range(0, 600)]
        right = [request(f"{prefix}-{n}", first_name="right") for n in range(400, 1000)]
        results = _race([functools.partial(batch, users, left), functools.partial(batch, users, right)])
        failures = [r for r in results if isinstance(r, grpc.RpcError)]
        winners = [r for r in results if isinstance(r, list)]
        assert len(failures) == 1, results
        assert len(winners) == 1, results
        assert details_of(failures[0]).code == grpc.StatusCode.ALREADY_EXISTS
        winner = left if results[0] is winners[0] else right
        assert stored(db, [f"{prefix}-{n}" for n in range(1000)]) == {r.user_id for r in winner}
        assert [user.user_id for user in winners[0]] == [r.user_id for r in winner]


def test_two_overlapping_batches_with_skip_existing_create_each_user_once(
    users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    prefix = unique("skiprace")
    left = [request(f"{prefix}-{n}", first_name="left") for n in range(0, 600)]
    right = [request(f"{prefix}-{n}", first_name="right") for n in range(400, 1000)]
    results = _race(
        [lambda: batch(users, left, skip_existing=True), lambda: batch(users, right, skip_existing=True)]
    )
    assert all(isinstance(r, list) for r in results), results
    returned = [user for result in results for user in result]
    assert sorted(user.user_id for user in returned) == sorted(f"{prefix}-{n}" for n in range(1000))
    for user in returned:
        assert get(users, user.user_id) == user
        assert assert_fresh(db, user.user_id) == user


def test_a_batch_whose_response_would_not_fit_is_refused_and_creates_nothing(
    start_server: Callable[[Settings], RunningServer], db: peewee.Database
) -> None:
    running = start_server(Settings(listen="127.0.0.1:0", max_message_bytes=1024 * 1024))
    prefix = unique("big")
    # About 1,000 bytes each: the request fits in 1 MiB, but each user gains its server fields.
    requests = [request(f"{prefix}-{n:04d}", metadata=struct({"pad": "x" * 960})) for n in range(1000)]
    assert users_pb2.BatchCreateUsersRequest(requests=requests).ByteSize() < 1024 * 1024
    with grpc.insecure_channel(running.target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        details = expect_error(
            stub.BatchCreateUsers,
            users_pb2.BatchCreateUsersRequest(requests=requests),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert details.reason == "BATCH_TOO_LARGE"
        assert "send fewer" in details.violations["requests"]
        assert stored(db, [r.user_id for r in requests]) == set()
        # Half of it goes through.
        assert len(batch(stub, requests[:500])) == 500
