"""Many clients at once: uniqueness, lossless metadata merges, and counters that stay right."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import peewee
from google.protobuf import json_format
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from tests.support import TIMEOUT, struct, unique

T = TypeVar("T")
THREADS = 16


def all_at_once(count: int, action: Callable[[int], T]) -> list[T | grpc.StatusCode]:
    """Run ``action(i)`` for i in range(count) on as many threads, released together by a barrier.

    A failed call yields its status code instead of a result.
    """
    barrier = threading.Barrier(count)

    def run(index: int) -> T | grpc.StatusCode:
        barrier.wait()
        try:
            return action(index)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def assert_counters_match(db: peewee.Database) -> None:
    """Every user's session_count equals its sessions; no session points at a missing user."""
    with db.connection_context():
        wrong = db.execute_sql(
            "SELECT user_id, session_count FROM users u WHERE session_count <> "
            "(SELECT count(*) FROM sessions s WHERE s.user_id = u.user_id)"
        ).fetchall()
        orphans = db.execute_sql(
            "SELECT session_id FROM sessions s WHERE user_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)"
        ).fetchall()
    assert wrong == []
    assert orphans == []


def test_of_concurrent_creates_of_one_id_exactly_one_wins(users: users_pb2_grpc.UserServiceStub) -> None:
    user_id = unique("contested")
    results = all_at_once(
        THREADS,
        lambda i: (
            users.CreateUser(
                users_pb2.CreateUserRequest(user_id=user_id, first_name=f"writer-{i}"), timeout=TIMEOUT
            ).user
        ),
    )
    winners = [r for r in results if isinstance(r, users_pb2.User)]
    assert len(winners) == 1
    assert Counter(r for r in results if isinstance(r, grpc.StatusCode)) == {
        grpc.StatusCode.ALREADY_EXISTS: THREADS - 1
    }
    stored = users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user
    assert stored == winners[0]


def test_of_concurrent_session_creates_of_one_id_exactly_one_wins(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    owners = [unique("owner") for _ in range(4)]
    for owner in owners:
        users.CreateUser(users_pb2.CreateUserRequest(user_id=owner), timeout=TIMEOUT)
    session_id = unique("contested")
    results = all_at_once(
        THREADS,
        lambda i: (
            sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=owners[i % 4]),
                timeout=TIMEOUT,
            ).session
        ),
    )
    assert sum(isinstance(r, sessions_pb2.Session) for r in results) == 1
    assert results.count(grpc.StatusCode.ALREADY_EXISTS) == THREADS - 1
    counts = [
        users.GetUser(users_pb2.GetUserRequest(user_id=owner), timeout=TIMEOUT).user.session_count
        for owner in owners
    ]
    assert sorted(counts) == [0, 0, 0, 1]
    assert_counters_match(db)


def test_concurrent_metadata_merges_lose_no_key(users: users_pb2_grpc.UserServiceStub) -> None:
    user_id = unique("merged")
    users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, metadata=struct({"base": True, "nested": {"base": 1}})),
        timeout=TIMEOUT,
    )
    rounds = 3
    for round_number in range(rounds):
        all_at_once(
            THREADS,
            lambda i, r=round_number: (
                users.UpdateUser(  # type: ignore[misc]
                    users_pb2.UpdateUserRequest(
                        user_id=user_id, metadata=struct({f"k{r}-{i}": i, "nested": {f"n{r}-{i}": i}})
                    ),
                    timeout=TIMEOUT,
                ).user
            ),
        )
    stored = json_format.MessageToDict(
        users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT).user.metadata
    )
    expected_top = {"base", "nested"} | {f"k{r}-{i}" for r in range(rounds) for i in range(THREADS)}
    assert set(stored) == expected_top
    assert set(stored["nested"]) == {"base"} | {f"n{r}-{i}" for r in range(rounds) for i in range(THREADS)}


def test_session_counts_stay_right_under_concurrent_creates_and_deletes(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    owner = unique("busy")
    users.CreateUser(users_pb2.CreateUserRequest(user_id=owner), timeout=TIMEOUT)
    existing = [unique("old") for _ in range(THREADS)]
    for session_id in existing:
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=owner), timeout=TIMEOUT
        )

    def churn(index: int) -> str:
        if index % 2:
            sessions.DeleteSession(
                sessions_pb2.DeleteSessionRequest(session_id=existing[index]), timeout=TIMEOUT
            )
            return "deleted"
        sessions.CreateSession(
            sessions_pb2.CreateSessionRequest(session_id=unique("new"), user_id=owner), timeout=TIMEOUT
        )
        return "created"

    results = all_at_once(THREADS, churn)
    assert Counter(results) == {"deleted": THREADS // 2, "created": THREADS // 2}
    user = users.GetUser(users_pb2.GetUserRequest(user_id=owner), timeout=TIMEOUT).user
    assert user.session_count == THREADS
    assert_counters_match(db)


def test_deleting_users_while_their_sessions_change_leaves_no_orphans_and_no_deadlock(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    owners = [unique("doomed") for _ in range(4)]
    owned: dict[str, list[str]] = {owner: [] for owner in owners}
    for owner in owners:
        users.CreateUser(users_pb2.CreateUserRequest(user_id=owner), timeout=TIMEOUT)
        for _ in range(6):
            session_id = unique("s")
            sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=owner), timeout=TIMEOUT
            )
            owned[owner].append(session_id)
    rng = random.Random(7)

    def mixed(index: int) -> str:
        owner = owners[(index // 4) % len(owners)]
        kind = index % 4
        if kind == 0:
            users.DeleteUser(users_pb2.DeleteUserRequest(user_id=owner), timeout=TIMEOUT)
        elif kind == 1:
            sessions.DeleteSession(
                sessions_pb2.DeleteSessionRequest(session_id=rng.choice(owned[owner])), timeout=TIMEOUT
            )
        elif kind == 2:
            sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=unique("late"), user_id=owner), timeout=TIMEOUT
            )
        else:
            sessions.UpdateSession(
                sessions_pb2.UpdateSessionRequest(
                    session_id=rng.choice(owned[owner]), metadata=struct({"i": index})
                ),
                timeout=TIMEOUT,
            )
        return "ok"

    results = all_at_once(THREADS * 2, mixed)
    # Losing a race to the user's deletion is NOT_FOUND; nothing else may go wrong.
    assert set(results) <= {"ok", grpc.StatusCode.NOT_FOUND}
    for owner in owners:
        listing = sessions.ListSessions(sessions_pb2.ListSessionsRequest(limit=1000), timeout=TIMEOUT)
        assert all(s.user_id != owner for s in listing.sessions)
    assert_counters_match(db)


def test_chaos_of_overlapping_creates_updates_and_deletes_keeps_every_invariant(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub, db: peewee.Database
) -> None:
    user_ids = [unique("chaos") for _ in range(6)]
    operations = 40

    def worker(index: int) -> Counter[str]:
        rng = random.Random(index)
        outcomes: Counter[str] = Counter()
        mine: list[str] = []
        for step in range(operations):
            user_id = rng.choice(user_ids)
            kind = rng.choice(["create", "update", "delete", "session", "unsession"])
            try:
                if kind == "create":
                    users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
                elif kind == "update":
                    users.UpdateUser(
                        users_pb2.UpdateUserRequest(
                            user_id=user_id, metadata=struct({f"t{index}s{step}": step})
                        ),
                        timeout=TIMEOUT,
                    )
                elif kind == "delete":
                    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id), timeout=TIMEOUT)
                elif kind == "session":
                    session_id = unique("cs")
                    sessions.CreateSession(
                        sessions_pb2.CreateSessionRequest(session_id=session_id, user_id=user_id),
                        timeout=TIMEOUT,
                    )
                    mine.append(session_id)
                elif mine:
                    sessions.DeleteSession(
                        sessions_pb2.DeleteSessionRequest(session_id=mine.pop(rng.randrange(len(mine)))),
                        timeout=TIMEOUT,
                    )
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
        return outcomes

    totals: Counter[str] = Counter()
    for outcome in all_at_once(THREADS, worker):
        assert isinstance(outcome, Counter)
        totals.update(outcome)
    # Losing a race (the user is gone, or already there) is all that may happen.
    assert set(totals) <= {"OK", "NOT_FOUND", "ALREADY_EXISTS"}, totals
    assert totals["OK"] > 0
    with db.connection_context():
        (duplicates,) = db.execute_sql(
            "SELECT count(*) - count(DISTINCT user_id) FROM users WHERE user_id = ANY(%s)", (user_ids,)
        ).fetchone()
    assert duplicates == 0
    assert_counters_match(db)
