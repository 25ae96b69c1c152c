"""The change feed's store against real PostgreSQL: what the triggers record, and snapshot
windows that skip no transaction however commits interleave with sequence order.

Transactions are held open on purpose here (raw connections), which the wire cannot do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import peewee
import psycopg2
import pytest
from memstore.v1 import users_pb2
from memstore_server.errors import FailedPrecondition
from memstore_server.store.changes import ChangeBatch, ChangeStore, Position, Snapshot
from memstore_server.store.sessions import SessionStore
from memstore_server.store.user_writes import Change
from memstore_server.store.users import UserStore
from memstore_server.validation import Metadata

from tests.support import unique, wait_for

CREATED = users_pb2.UserEvent.TYPE_CREATED
UPDATED = users_pb2.UserEvent.TYPE_UPDATED
DELETED = users_pb2.UserEvent.TYPE_DELETED
EMPTY = Metadata({}, "{}")
_SET_MESSAGE = "UPDATE users SET message = %s WHERE user_id = %s"


@pytest.fixture
def changes(db: peewee.Database) -> ChangeStore:
    return ChangeStore(db)


@pytest.fixture
def user_store(db: peewee.Database) -> UserStore:
    return UserStore(db)


@pytest.fixture
def hand_written(db: peewee.Database) -> Iterator[list[str]]:
    """user_ids whose stored bytes a test wrote by hand: deleted afterwards, so that no other
    test (a listing, a snapshot) meets bytes that are not what the columns say."""
    user_ids: list[str] = []
    yield user_ids
    with db.connection_context():
        db.execute_sql("DELETE FROM users WHERE user_id = ANY(%s)", (user_ids,))


@pytest.fixture
def raw(database_url: str, hand_written: list[str]) -> Iterator[list[psycopg2.extensions.connection]]:
    """Raw connections for transactions held open by hand; closed (rolled back) afterwards,
    before the hand-written users are deleted."""
    opened: list[psycopg2.extensions.connection] = []
    yield opened
    for conn in opened:
        conn.close()


def connect(raw: list[psycopg2.extensions.connection], database_url: str) -> psycopg2.extensions.connection:
    raw.append(psycopg2.connect(database_url))
    return raw[-1]


def now(changes: ChangeStore) -> Position:
    return Position(changes.state().now)


def read_all(changes: ChangeStore, start: Position, limit: int = 1000) -> tuple[list[ChangeBatch], Position]:
    """Every change after ``start`` up to now, page by page; the batches and the end position."""
    batches = [changes.read(start, limit)]
    while batches[-1].end.window is not None:
        batches.append(changes.read(batches[-1].end, limit))
    return batches, batches[-1].end


def events_of(batches: list[ChangeBatch], *user_ids: str) -> list[tuple[int, users_pb2.User]]:
    found = []
    for batch in batches:
        for change in batch.changes:
            user = users_pb2.User.FromString(change.user)
            if user.user_id in user_ids:
                found.append((change.type, user))
    return found


def test_each_write_is_one_change_carrying_what_get_user_returns(
    changes: ChangeStore, user_store: UserStore, db: peewee.Database
) -> None:
    sessions = SessionStore(db)
    start = now(changes)
    user_id = unique("u")
    created = user_store.create(user_id, "a@example.com", "A", "B", EMPTY)
    updated = user_store.update(user_id, Change(first_name="C"))
    session_id = unique("s")
    sessions.create(session_id, user_id, EMPTY)
    counted = user_store.get(user_id)
    sessions.delete(session_id)
    uncounted = user_store.get(user_id)
    batches, _ = read_all(changes, start)
    found = events_of(batches, user_id)
    assert [kind for kind, _ in found] == [CREATED, UPDATED, UPDATED, UPDATED]
    assert [user.SerializeToString(deterministic=True) for _, user in found] == [
        created,
        updated,
        counted,
        uncounted,
    ]
    assert found[2][1].session_count == 1
    assert found[3][1].session_count == 0
    sequences = [change.sequence for batch in batches for change in batch.changes]
    assert sequences == sorted(sequences)


def test_delete_with_sessions_is_one_deleted_change_and_a_recreated_user_is_created(
    changes: ChangeStore, user_store: UserStore, db: peewee.Database
) -> None:
    user_id = unique("u")
    first = users_pb2.User.FromString(user_store.create(user_id, "", "", "", EMPTY))
    for _ in range(3):
        SessionStore(db).create(unique("s"), user_id, EMPTY)
    start = now(changes)
    user_store.delete(user_id)
    second = users_pb2.User.FromString(user_store.create(user_id, "", "", "", EMPTY))
    found = events_of(read_all(changes, start)[0], user_id)
    assert [kind for kind, _ in found] == [DELETED, CREATED]
    deleted, recreated = found[0][1], found[1][1]
    assert (deleted.user_id, deleted.uuid, deleted.id) == (user_id, first.uuid, first.id)
    assert deleted.session_count == 3
    assert recreated == second
    assert recreated.uuid != first.uuid


def test_writes_of_one_user_in_one_transaction_are_one_change_with_the_last_state(
    changes: ChangeStore,
    raw: list[psycopg2.extensions.connection],
    database_url: str,
    hand_written: list[str],
) -> None:
    user_id = unique("u")
    hand_written.append(user_id)
    start = now(changes)
    conn = connect(raw, database_url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO users (user_id) VALUES (%s)", (user_id,))
        cur.execute("UPDATE users SET message = %s WHERE user_id = %s", (b"", user_id))
        cur.execute("UPDATE users SET session_count = 5 WHERE user_id = %s", (user_id,))
        last = users_pb2.User(user_id=user_id, session_count=5).SerializeToString()
        cur.execute("UPDATE users SET message = %s WHERE user_id = %s", (last, user_id))
    batches, _ = read_all(changes, start)
    assert [(c.type, c.user) for b in batches for c in b.changes if c.user == last] == [(CREATED, last)]
    assert sum(len(b.changes) for b in batches) >= 1
    assert len(events_of(batches, user_id)) == 1


def test_a_write_that_leaves_the_user_as_it_was_records_nothing(
    changes: ChangeStore, user_store: UserStore, raw: list[psycopg2.extensions.connection], database_url: str
) -> None:
    user_id = unique("u")
    user_store.create(user_id, "", "", "", EMPTY)
    start = now(changes)
    conn = connect(raw, database_url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE users SET message = message WHERE user_id = %s", (user_id,))
    assert events_of(read_all(changes, start)[0], user_id) == []


def fetch_one(cursor: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None
    return row


def marker(user_id: str, name: str) -> bytes:
    """Stored bytes written by hand, recognisable in the feed."""
    return users_pb2.User(user_id=user_id, first_name=name).SerializeToString()


def test_a_transaction_held_open_while_later_ones_commit_is_not_skipped(
    changes: ChangeStore,
    user_store: UserStore,
    raw: list[psycopg2.extensions.connection],
    database_url: str,
    hand_written: list[str],
) -> None:
    held_user, later_user = unique("held"), unique("later")
    hand_written.append(held_user)
    user_store.create(held_user, "", "", "", EMPTY)
    start = now(changes)
    held = connect(raw, database_url)
    with held.cursor() as cur:  # takes its xid and its sequence now, commits last
        cur.execute(
            "UPDATE users SET message = %s WHERE user_id = %s", (marker(held_user, "held"), held_user)
        )
    user_store.create(later_user, "", "", "", EMPTY)
    batches, middle = read_all(changes, start)
    assert events_of(batches, later_user)
    assert not events_of(batches, held_user)
    highest_seen = max(c.sequence for b in batches for c in b.changes)
    held.commit()
    batches, _ = read_all(changes, middle)
    found = events_of(batches, held_user)
    assert [(kind, user.first_name) for kind, user in found] == [(UPDATED, "held")]
    held_sequence = next(c.sequence for b in batches for c in b.changes)
    # Why snapshots: a reader that went on after the highest sequence seen would skip it.
    assert held_sequence < highest_seen
    assert not events_of(batches, later_user)


def test_a_transaction_with_the_older_xid_that_commits_second_comes_second(
    changes: ChangeStore,
    user_store: UserStore,
    raw: list[psycopg2.extensions.connection],
    database_url: str,
    hand_written: list[str],
) -> None:
    """T2 takes its xid first, then blocks on the row T1 has locked, and commits after T1:
    that user's changes come T1 then T2, whatever the page size."""
    user_id, other = unique("u"), unique("other")
    hand_written += [user_id, other]
    user_store.create(user_id, "", "", "", EMPTY)
    user_store.create(other, "", "", "", EMPTY)
    start = now(changes)
    t1, t2 = connect(raw, database_url), connect(raw, database_url)
    with t2.cursor() as cur:
        cur.execute("UPDATE users SET message = %s WHERE user_id = %s", (marker(other, "t2"), other))
        cur.execute("SELECT pg_current_xact_id()::text")
        t2_xid = int(fetch_one(cur)[0])
    with t1.cursor() as cur:
        cur.execute("UPDATE users SET message = %s WHERE user_id = %s", (marker(user_id, "t1"), user_id))
        cur.execute("SELECT pg_current_xact_id()::text")
        assert int(fetch_one(cur)[0]) > t2_xid

    def t2_writes() -> None:
        with t2.cursor() as cur:
            cur.execute("UPDATE users SET message = %s WHERE user_id = %s", (marker(user_id, "t2"), user_id))
        t2.commit()

    writer = threading.Thread(target=t2_writes)
    writer.start()
    probe = connect(raw, database_url)
    probe.autocommit = True

    def t2_waits_for_the_lock() -> bool:
        with probe.cursor() as cur:
            cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (t2.info.backend_pid,))
            row = cur.fetchone()
            return row is not None and row[0] == "Lock"

    try:
        assert wait_for(t2_waits_for_the_lock, 30)
        assert events_of(read_all(changes, start)[0], user_id, other) == []  # neither has committed
        t1.commit()
    finally:
        writer.join(60)
    assert not writer.is_alive()
    for page_size in (1, 2, 1000):
        batches, _ = read_all(changes, start, limit=page_size)
        assert [user.first_name for _, user in events_of(batches, user_id)] == ["t1", "t2"]
        assert [user.first_name for _, user in events_of(batches, other)] == ["t2"]


def test_a_window_read_in_pages_gives_every_change_once_in_sequence_order(
    changes: ChangeStore, user_store: UserStore
) -> None:
    start = now(changes)
    user_ids = [unique("page") for _ in range(7)]
    for user_id in user_ids:
        user_store.create(user_id, "", "", "", EMPTY)
    whole = [c for b in read_all(changes, start)[0] for c in b.changes]
    batches, end = read_all(changes, start, limit=3)
    paged = [c for b in batches for c in b.changes]
    assert [c.sequence for c in paged] == [c.sequence for c in whole]
    assert [c.sequence for c in paged] == sorted({c.sequence for c in paged})
    assert [user.user_id for _, user in events_of(batches, *user_ids)] == user_ids
    assert end.window is None
    for batch in batches:  # every position inside a batch resumes right after its change
        for index, change in enumerate(batch.changes):
            rest = [c.sequence for b in read_all(changes, batch.position_after(index))[0] for c in b.changes]
            assert change.sequence not in rest
            assert set(rest) >= {c.sequence for c in paged if c.sequence > change.sequence}


def test_the_initial_listing_and_its_snapshot_agree(changes: ChangeStore, user_store: UserStore) -> None:
    before, during = unique("before"), unique("during")
    user_store.create(before, "", "", "", EMPTY)
    listing = changes.listing()
    listing.open()
    try:
        user_store.create(during, "", "", "", EMPTY)
        user_store.update(before, Change(first_name="after the snapshot"))
        listed, after = [], 0
        while True:
            ids, users = listing.page(after, 500)
            if not ids:
                break
            listed += [users_pb2.User.FromString(user) for user in users]
            after = ids[-1]
    finally:
        listing.close()
    by_id = {user.user_id: user for user in listed}
    assert during not in by_id
    assert by_id[before].first_name == ""
    found = events_of(read_all(changes, Position(listing.snapshot))[0], before, during)
    assert [(kind, user.user_id) for kind, user in found] == [(CREATED, during), (UPDATED, before)]


def test_pruning_expires_older_positions_and_keeps_newer_ones_readable(
    changes: ChangeStore, user_store: UserStore
) -> None:
    old = now(changes)
    user_store.create(unique("pruned"), "", "", "", EMPTY)
    kept = now(changes)
    assert changes.prune(0, batch=2) >= 1
    with pytest.raises(FailedPrecondition) as raised:
        changes.read(old, 100)
    assert raised.value.reason == "RESUME_TOKEN_EXPIRED"
    user_id = unique("kept")
    user_store.create(user_id, "", "", "", EMPTY)
    assert [kind for kind, _ in events_of(read_all(changes, kept)[0], user_id)] == [CREATED]
    state = changes.state()
    assert state.pruned_below <= state.now.xmin
    assert changes.prune(3600, batch=100) == 0  # nothing as old as an hour


def test_snapshots_round_trip_and_reject_what_postgresql_would() -> None:
    assert Snapshot.parse("10:20:12,15").text == "10:20:12,15"
    assert Snapshot.parse("10:10:") == Snapshot(10, 10)
    assert Snapshot(10, 20, (12, 15)).is_well_formed()
    for bad in (
        Snapshot(0, 1),
        Snapshot(5, 4),
        Snapshot(5, 9, (4,)),
        Snapshot(5, 9, (9,)),
        Snapshot(5, 9, (7, 6)),
    ):
        assert not bad.is_well_formed(), bad
    assert not Snapshot(1, 2**63).is_well_formed()
