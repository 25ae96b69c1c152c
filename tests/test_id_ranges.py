"""Filtered listings read range by range of ids (store/id_ranges.py, migration 9).

The windows' arithmetic is checked on its own; then users are spread over millions
of ids, so that pages and streams cross many ranges, grow their windows, and fall
back to the plain query for a rare filter, and every listing is compared with the
users a plain reading of the table selects.
"""

from __future__ import annotations

import json
import math
from typing import Any

import peewee
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.filtering import USERS, compile_filter
from memstore_server.store import id_ranges, user_messages
from memstore_server.store import users as user_queries
from memstore_server.store.id_ranges import (
    FIRST_WALK,
    GROWTH,
    MARGIN,
    MAX_RANGES,
    RANGE_BITS,
    RANGE_SIZE,
    Densities,
    FilteredScan,
    Rest,
    Step,
    Walk,
    Window,
)

from tests.support import TIMEOUT, filtered_listing

# ---------------------------------------------------------------- the steps, on their own


def steps_of(scan: FilteredScan, found: list[int], end: int = 10**9) -> list[Step]:
    """The steps ``scan`` takes when they give ``found[i]`` rows each (0 after the list), in a
    table whose largest id is ``end``."""
    seen: list[Step] = []
    if scan.needs_end:
        scan.end = end
    for number, step in enumerate(scan):
        seen.append(step)
        rows = min(found[number] if number < len(found) else 0, scan.remaining)
        scan.found(rows, getattr(step, "through", 0) if rows else 0)
        if scan.needs_end:
            scan.end = end
    return seen


def span(step: Walk | Window) -> int:
    return step.through - step.after


def test_a_filter_never_seen_is_walked_then_windows_grow_until_a_rest_is_cheaper() -> None:
    scan = FilteredScan(after=0, needed=101, density=None)
    steps = steps_of(scan, [])
    assert steps[0] == Walk(0, FIRST_WALK)
    windows = [step for step in steps[1:-1] if isinstance(step, Window)]
    assert len(windows) == len(steps) - 2
    assert windows
    for before, after in zip(steps, windows, strict=False):
        assert isinstance(before, (Walk, Window))
        assert after.after == before.through  # contiguous: no id skipped, none read twice
        assert after.first == (after.after + 1) >> RANGE_BITS
        assert span(after) >= GROWTH * span(before) or after.count == MAX_RANGES
    assert steps[-1] == Rest(windows[-1].through)
    assert scan.remaining == 101


def test_a_filter_known_to_be_rare_goes_to_its_matches_at_once() -> None:
    assert steps_of(FilteredScan(after=0, needed=101, density=1e-4), [], end=1_000_000) == [Rest(0)]
    # In a table a hundred times larger, its matches left are many: windows first.
    assert isinstance(steps_of(FilteredScan(after=0, needed=101, density=1e-4), [])[0], Window)


def test_steps_need_the_end_of_the_table_once_one_came_up_short() -> None:
    scan = FilteredScan(after=0, needed=10, density=None)
    steps = iter(scan)
    next(steps)
    scan.found(0, 0)
    assert scan.needs_end
    with pytest.raises(RuntimeError, match="set end"):
        next(steps)


def test_a_dense_filter_is_walked_by_what_its_density_needs() -> None:
    dense = steps_of(FilteredScan(after=1000, needed=101, density=0.25), [101])
    assert dense == [Walk(1000, 1000 + math.ceil(101 * MARGIN / 0.25))]
    walked = FilteredScan(after=0, needed=10, density=None)
    assert steps_of(walked, [10]) == [Walk(0, FIRST_WALK)]
    assert walked.remaining == 0
    assert walked.density == 10 / FIRST_WALK


def test_a_sparse_filter_asks_for_the_ranges_its_density_needs() -> None:
    # 1% of ids match: 101 rows need about 10,100 ids, 12,625 with the margin: 7 ranges from 0.
    assert steps_of(FilteredScan(after=0, needed=101, density=0.01), [101]) == [Window(0, 0, 7)]
    # Near the end of a range little of it is left: one range more.
    near_end = steps_of(FilteredScan(after=RANGE_SIZE - 100, needed=101, density=0.01), [101])
    assert near_end == [Window(RANGE_SIZE - 100, 0, 8)]
    # A density that needs more than MAX_RANGES asks for MAX_RANGES (in a table large enough).
    rare = steps_of(FilteredScan(after=0, needed=101, density=1e-4), [101], end=10**9)
    assert rare == [Window(0, 0, MAX_RANGES)]


def test_a_short_step_is_followed_by_one_sized_by_what_was_found() -> None:
    scan = FilteredScan(after=0, needed=1000, density=None)
    steps = steps_of(scan, [5, 1000])
    # 5 matches in 2,048 ids walked: 995 more need about 509,000 ids, more than GROWTH * 2,048.
    assert isinstance(steps[1], Window)
    assert span(steps[1]) >= 995 * MARGIN / (5 / FIRST_WALK)
    assert scan.remaining == 0
    assert len(steps) == 2


def test_steps_stop_at_the_end_of_the_table() -> None:
    assert steps_of(FilteredScan(after=0, needed=10, density=None), [], end=1000) == [Walk(0, FIRST_WALK)]


def test_window_keys_hold_the_filter_under_each_range() -> None:
    window = Window(after=7 * RANGE_SIZE, first=7, count=2)
    assert window.keys('{"plan":"pro"}') == ['{"7":{"plan":"pro"}}', '{"8":{"plan":"pro"}}']
    assert window.through == 9 * RANGE_SIZE - 1


def test_densities_keep_the_most_recently_used_filters() -> None:
    densities = Densities(size=2)
    densities.put("a", 0.1)
    densities.put("b", 0.2)
    assert densities.get("a") == 0.1  # now the most recent
    densities.put("c", 0.3)
    assert densities.get("b") is None
    assert (densities.get("a"), densities.get("c")) == (0.1, 0.3)


# ---------------------------------------------------------------- over the wire

# Users spread over about 400,000 ids (some 200 ranges), a tenth of them in each cohort, and
# three rare ones: near the start, 3 and 5 million ids later (more than MAX_RANGES ranges apart).
SPREAD = [(1 + k * 997, {"cohort": k % 10, "k": k}) for k in range(400)]
RARE_IDS = [10, 3_000_000, 5_000_000]


@pytest.fixture
def spread(db: peewee.Database, empty_store: None) -> list[tuple[int, dict[str, Any]]]:
    """The users above, with their stored messages; the id sequence moved past them."""
    people = [(id_, {**metadata, "rare": id_ in RARE_IDS}) for id_, metadata in SPREAD]
    people += [(id_, {"rare": True}) for id_ in RARE_IDS]
    with db.connection_context(), db.atomic():
        first = db.execute_sql("SELECT nextval(pg_get_serial_sequence('users', 'id'))").fetchone()[0]
        people = [(first + id_, metadata) for id_, metadata in people]
        db.execute_sql(
            "INSERT INTO users (id, user_id, metadata) OVERRIDING SYSTEM VALUE "
            "SELECT id, 'spread-' || id, metadata::jsonb "
            "FROM unnest(%s::bigint[], %s::text[]) AS u(id, metadata)",
            ([id_ for id_, _ in people], [json.dumps(metadata) for _, metadata in people]),
        )
        db.execute_sql("SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))")
        user_messages.refill(db)
    return sorted(people)


def matching(people: list[tuple[int, dict[str, Any]]], test: Any) -> list[int]:
    return [id_ for id_, metadata in people if test(metadata)]


def listed_ids(users: users_pb2_grpc.UserServiceStub, text: str, limit: int) -> list[int]:
    return [user.id for user in filtered_listing(users, text, limit)]


def streamed_ids(
    users: users_pb2_grpc.UserServiceStub, text: str, chunk_size: int, cursor: int = 0
) -> list[int]:
    request = users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size, cursor=cursor, filter=text)
    return [user.id for chunk in users.ListUsersChunked(request, timeout=TIMEOUT) for user in chunk.users]


FILTERS = [
    ("metadata.cohort = 3", lambda m: m.get("cohort") == 3),
    ("metadata.cohort = 3 AND metadata.k > 100", lambda m: m.get("cohort") == 3 and m["k"] > 100),
    ("metadata.k >= 0 AND (metadata.cohort = 1 AND metadata.rare = false)", lambda m: m.get("cohort") == 1),
    ("metadata.rare = true", lambda m: m["rare"]),
    ("metadata.cohort = 42", lambda m: False),
]


@pytest.mark.parametrize(("text", "test"), FILTERS, ids=[text for text, _ in FILTERS])
@pytest.mark.parametrize("limit", [1, 7, 100, 1000])
def test_filtered_pages_across_ranges_are_what_the_table_holds(
    users: users_pb2_grpc.UserServiceStub,
    spread: list[tuple[int, dict[str, Any]]],
    text: str,
    test: Any,
    limit: int,
) -> None:
    expected = matching(spread, test)
    assert listed_ids(users, text, limit) == expected
    assert listed_ids(users, text, limit) == expected  # again, with the filter's density known


@pytest.mark.parametrize(("text", "test"), FILTERS, ids=[text for text, _ in FILTERS])
@pytest.mark.parametrize("chunk_size", [1, 9, 1000])
def test_filtered_streams_across_ranges_are_what_the_table_holds(
    users: users_pb2_grpc.UserServiceStub,
    spread: list[tuple[int, dict[str, Any]]],
    text: str,
    test: Any,
    chunk_size: int,
) -> None:
    assert streamed_ids(users, text, chunk_size) == matching(spread, test)


def test_pages_from_any_cursor_start_after_it(
    users: users_pb2_grpc.UserServiceStub, spread: list[tuple[int, dict[str, Any]]]
) -> None:
    cohort = matching(spread, lambda m: m.get("cohort") == 5)
    for cursor in (cohort[0] - 1, cohort[0], cohort[0] + 1, cohort[17], cohort[-1] - 1):
        expected = [id_ for id_ in cohort if id_ > cursor][:3]
        page = users.ListUsers(
            users_pb2.ListUsersRequest(limit=3, cursor=cursor, filter="metadata.cohort = 5"), timeout=TIMEOUT
        )
        assert [user.id for user in page.users] == expected
    beyond = users.ListUsers(
        users_pb2.ListUsersRequest(limit=3, cursor=spread[-1][0], filter="metadata.cohort = 5"),
        timeout=TIMEOUT,
    )
    assert list(beyond.users) == []
    assert beyond.next_cursor == 0


def test_a_page_of_a_rare_filter_crosses_millions_of_ids(
    users: users_pb2_grpc.UserServiceStub, spread: list[tuple[int, dict[str, Any]]]
) -> None:
    rare = matching(spread, lambda m: m["rare"])
    assert rare[2] - rare[1] > MAX_RANGES * RANGE_SIZE  # beyond the windows: the plain query reads it
    page = users.ListUsers(
        users_pb2.ListUsersRequest(limit=2, cursor=rare[0], filter="metadata.rare = true"), timeout=TIMEOUT
    )
    assert [user.id for user in page.users] == rare[1:3]
    assert page.next_cursor == 0


def test_a_window_is_read_through_the_range_index(db: peewee.Database) -> None:
    """A window's query is planned on users_metadata_in_id_range_idx, never on the primary key
    (which would walk every row after the cursor) nor on the plain metadata index (every match)."""
    condition = compile_filter('metadata.plan = "pro" AND email = "*@example.com"', USERS)
    assert condition is not None
    assert condition.metadata_contains == '{"plan":"pro"}'
    query, params = id_ranges.selection(Window(after=0, first=0, count=8), "id, message", condition)
    with db.connection_context(), db.atomic():
        db.execute_sql("SET LOCAL enable_seqscan = off")  # a small table is otherwise read whole
        plan = "\n".join(
            row[0]
            for row in db.execute_sql(f"EXPLAIN {user_queries._STEP_PAGE.format(query)}", (*params, 101))
        )
    assert "users_metadata_in_id_range_idx" in plan, plan
    assert "users_pkey" not in plan, plan
    assert "users_metadata_idx" not in plan, plan


def test_a_walk_is_read_through_the_primary_key_in_order(db: peewee.Database) -> None:
    condition = compile_filter('metadata.plan = "pro"', USERS)
    assert condition is not None
    query, params = id_ranges.selection(Walk(after=0, through=FIRST_WALK), "id, message", condition)
    with db.connection_context(), db.atomic():
        db.execute_sql("SET LOCAL enable_seqscan = off")
        db.execute_sql("SET LOCAL enable_bitmapscan = off")  # the primary key, in id order, or nothing
        plan = "\n".join(
            row[0]
            for row in db.execute_sql(f"EXPLAIN {user_queries._STEP_PAGE.format(query)}", (*params, 101))
        )
    assert "Index Scan using users_pkey" in plan, plan
    assert "Sort" not in plan, plan
