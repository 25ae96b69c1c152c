"""Filters on ListUsers, ListUsersChunked and ListSessions, and the counts, over the wire.

The property test generates filter trees, renders them as text (leaving out the
parentheses that OR's precedence makes needless, so precedence is tested too) and
checks that the server selects exactly the users a small evaluator here selects.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import grpc
import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.config import Settings

from tests.support import (
    GRPCURL,
    TIMEOUT,
    RunningServer,
    ServerAddress,
    bulk_users,
    details_of,
    expect_error,
    filtered_listing,
    struct,
)

pytestmark = pytest.mark.usefixtures("empty_store")

# The users every test filters: ASCII text (PostgreSQL's lower() and Python's agree on it),
# numbers exact as doubles, LIKE's own characters (% and _) in names.
PEOPLE: list[dict[str, Any]] = [
    {
        "user_id": "ann",
        "email": "Ann@Example.com",
        "first_name": "Ann",
        "last_name": "Smith",
        "metadata": {"plan": "pro", "n": 3, "flag": True, "nested": {"tier": "gold"}},
    },
    {
        "user_id": "bob",
        "email": "bob@example.org",
        "first_name": "Bob",
        "last_name": "Smithers",
        "metadata": {"plan": "free", "n": 10, "flag": False, "nested": {"tier": 2}},
    },
    {
        "user_id": "cy",
        "email": "cy@EXAMPLE.COM",
        "first_name": "50%_off",
        "last_name": "Sm",
        "metadata": {"plan": None, "n": 2.5, "nested": {}},
    },
    {
        "user_id": "dee",
        "email": "",
        "first_name": "",
        "last_name": "Jones",
        "metadata": {"n": "10", "flag": None, "plan-v2": {"tier": "pro"}},
    },
    {
        "user_id": "eve",
        "email": "eve@example.com",
        "first_name": "Eve",
        "last_name": "smith",
        "metadata": {"plan": ["pro"], "nested": {"tier": {"x": 1}}},
    },
    {
        "user_id": "fay",
        "email": "fay@sub.example.com",
        "first_name": "50 off",
        "last_name": "",
        "metadata": {},
    },
    {
        "user_id": "gus",
        "email": "GUS@example.com",
        "first_name": "Gus",
        "last_name": "O'Neil",
        "metadata": {"plan": "pro", "n": -1, "flag": True, "nested": {"tier": "silver"}},
    },
    {
        "user_id": "hal",
        "email": "hal@example.net",
        "first_name": "H*l",
        "last_name": "Smith",
        "metadata": {"plan": "Pro", "n": 0, "nested": "flat"},
    },
]
SESSIONS_OF = {"ann": 2, "bob": 1, "gus": 3}


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    value: Any  # str, int, float, bool, None, or a datetime (rendered as RFC 3339)


@dataclass(frozen=True)
class HasKey:
    path: tuple[str, ...]
    key: str


@dataclass(frozen=True)
class Neg:
    operand: Tree
    dash: bool


@dataclass(frozen=True)
class Both:
    left: Tree
    right: Tree


@dataclass(frozen=True)
class Either:
    left: Tree
    right: Tree


Tree = Union[Cmp, HasKey, Neg, Both, Either]  # noqa: UP007 - a runtime alias of forward references


def render_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dt.datetime):
        return '"' + value.isoformat().replace("+00:00", "Z") + '"'
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_field(field: str) -> str:
    return ".".join(part if part.isidentifier() else f"`{part}`" for part in field.split("."))


def render(tree: Tree) -> str:
    if isinstance(tree, Cmp):
        return f"{render_field(tree.field)} {tree.op} {render_value(tree.value)}"
    if isinstance(tree, HasKey):
        return f"{render_field('.'.join(('metadata', *tree.path)))}:{tree.key}"
    if isinstance(tree, Neg):
        inner = render(tree.operand)
        if not isinstance(tree.operand, (Cmp, HasKey, Neg)):
            inner = f"({inner})"
        return f"-{inner}" if tree.dash else f"NOT {inner}"
    if isinstance(tree, Both):  # AND binds loosest: its operands need no parentheses
        return f"{render(tree.left)} AND {render(tree.right)}"
    # OR binds tighter than AND: an AND beneath it needs them, an OR does not.
    parts = [
        render(side) if not isinstance(side, Both) else f"({render(side)})"
        for side in (tree.left, tree.right)
    ]
    return " OR ".join(parts)


def _like(value: str, text: str) -> bool | None:
    """The wildcard match of ``text`` against ``value``; None when ``value`` has no wildcard."""
    leading, trailing = value.startswith("*"), value.endswith("*") and len(value) > 1
    if not (leading or trailing):
        return None
    middle = value[1 if leading else 0 : -1 if trailing else None]
    if leading and trailing:
        return middle in text
    return text.endswith(middle) if leading else text.startswith(middle)


def _order(op: str, left: Any, right: Any) -> bool:
    if op in ("=", "!="):
        return bool(left == right) == (op == "=")
    return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", type(None): "null", dict: "object", list: "array"}[type(value)]


_MISSING = object()


def _walk(metadata: dict[str, Any], path: list[str]) -> Any:
    node: Any = metadata
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def evaluate(tree: Tree, user: dict[str, Any]) -> bool:
    """The reference: what the filter language's rules say about ``user``."""
    if isinstance(tree, Neg):
        return not evaluate(tree.operand, user)
    if isinstance(tree, Both):
        return evaluate(tree.left, user) and evaluate(tree.right, user)
    if isinstance(tree, Either):
        return evaluate(tree.left, user) or evaluate(tree.right, user)
    if isinstance(tree, HasKey):
        found = _walk(user["metadata"], list(tree.path))
        return isinstance(found, dict) and tree.key in found
    name, *path = tree.field.split(".")
    if name == "metadata":
        found = _walk(user["metadata"], path)
        if found is _MISSING or _json_type(found) != _json_type(tree.value):
            return False
        if isinstance(tree.value, str) and tree.op in ("=", "!="):
            like = _like(tree.value, found)
            if like is not None:
                return like == (tree.op == "=")
        return _order(tree.op, found, tree.value)
    actual = user[name]
    if isinstance(actual, str):
        value = tree.value
        if name == "email":
            actual, value = actual.lower(), value.lower()
        if tree.op in ("=", "!="):
            like = _like(value, actual)
            if like is not None:
                return like == (tree.op == "=")
        return _order(tree.op, actual, value)
    return _order(tree.op, actual, tree.value)


OPS = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
EQUALITY = st.sampled_from(["=", "!="])
TEXTS = st.sampled_from(
    [
        "ann@example.com",
        "ANN@EXAMPLE.COM",
        "*@example.com",
        "*EXAMPLE.COM",
        "bob*",
        "*example*",
        "Smith",
        "Sm*",
        "*th",
        "smith",
        "50%*",
        "50%_off",
        "*_*",
        "H*l",
        "H*",
        "",
        "*",
        "Jones",
        "b",
        "pro",
        "Pro",
        "pro*",
        "gold",
        "*l*",
        "10",
        "O'Neil",
        'say "hi"',
        "back\\slash",
    ]
)


def leaves(times: list[dt.datetime]) -> st.SearchStrategy[Tree]:
    string_fields = st.sampled_from(["user_id", "email", "first_name", "last_name"])
    metadata_fields = st.sampled_from(
        [
            "metadata.plan",
            "metadata.n",
            "metadata.flag",
            "metadata.nested.tier",
            "metadata.plan-v2.tier",
            "metadata.missing",
            "metadata.nested",
        ]
    )
    numbers = st.sampled_from([-1, 0, 2, 2.5, 3, 10, 1e3])
    return st.one_of(
        st.builds(Cmp, string_fields, OPS, TEXTS),
        st.builds(Cmp, st.just("session_count"), OPS, st.integers(0, 4)),
        st.builds(Cmp, st.sampled_from(["created_at", "updated_at"]), OPS, st.sampled_from(times)),
        st.builds(Cmp, metadata_fields, OPS, st.one_of(TEXTS, numbers)),
        st.builds(Cmp, metadata_fields, EQUALITY, st.booleans()),
        st.builds(Cmp, metadata_fields, st.just("="), st.none()),
        st.builds(
            HasKey,
            st.sampled_from([(), ("nested",), ("plan-v2",), ("plan",)]),
            st.sampled_from(["plan", "tier", "n", "flag", "x"]),
        ),
    )


def trees(times: list[dt.datetime]) -> st.SearchStrategy[Tree]:
    return st.recursive(
        leaves(times),
        lambda inner: st.one_of(
            st.builds(Neg, inner, st.booleans()),
            st.builds(Both, inner, inner),
            st.builds(Either, inner, inner),
        ),
        max_leaves=8,
    )


def create_people(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> list[dict[str, Any]]:
    """PEOPLE as stored (with their ids, times and session counts), in id order."""
    requests = [
        users_pb2.CreateUserRequest(**{**person, "metadata": struct(person["metadata"])}) for person in PEOPLE
    ]
    users.BatchCreateUsers(users_pb2.BatchCreateUsersRequest(requests=requests), timeout=TIMEOUT)
    for user_id, count in SESSIONS_OF.items():
        for n in range(count):
            sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(
                    session_id=f"{user_id}-s{n}", user_id=user_id, metadata=struct({"n": n, "kind": "chat"})
                ),
                timeout=TIMEOUT,
            )
    stored = []
    for person in PEOPLE:
        user = users.GetUser(users_pb2.GetUserRequest(user_id=person["user_id"]), timeout=TIMEOUT).user
        stored.append(
            {
                **person,
                "id": user.id,
                "session_count": user.session_count,
                "created_at": user.created_at.ToDatetime(dt.timezone.utc),
                "updated_at": user.updated_at.ToDatetime(dt.timezone.utc),
            }
        )
    return sorted(stored, key=lambda user: user["id"])


@pytest.fixture
def people(
    users: users_pb2_grpc.UserServiceStub, sessions: sessions_pb2_grpc.SessionServiceStub
) -> list[dict[str, Any]]:
    return create_people(users, sessions)


def listed(users: users_pb2_grpc.UserServiceStub, text: str, limit: int = 1000) -> list[str]:
    """Every user_id ListUsers returns for the filter ``text``, page after page."""
    return [user.user_id for user in filtered_listing(users, text, limit)]


def streamed(users: users_pb2_grpc.UserServiceStub, text: str, chunk_size: int, cursor: int = 0) -> list[Any]:
    return list(
        users.ListUsersChunked(
            users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size, cursor=cursor, filter=text),
            timeout=TIMEOUT,
        )
    )


def count(users: users_pb2_grpc.UserServiceStub, text: str) -> int:
    response: users_pb2.CountUsersResponse = users.CountUsers(
        users_pb2.CountUsersRequest(filter=text), timeout=TIMEOUT
    )
    return response.count


def selected(people: list[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [person["user_id"] for person in people if predicate(person)]


PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_random_filters_select_what_the_reference_evaluator_selects(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]]
) -> None:
    moments = sorted(person["created_at"] for person in people)
    times = [moments[0] - dt.timedelta(seconds=1), *moments[::3], moments[-1] + dt.timedelta(seconds=1)]

    @PROPERTY
    @given(trees(times))
    def check(tree: Tree) -> None:
        text = render(tree)
        expected = selected(people, lambda person: evaluate(tree, person))
        assert listed(users, text) == expected, text
        assert count(users, text) == len(expected), text

    check()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # OR binds tighter than AND: a AND b OR c is a AND (b OR c).
        ('last_name = "Smith" AND first_name = "Ann" OR first_name = "Hal"', ["ann"]),
        ('last_name = "Smith" AND (first_name = "Ann" OR first_name = "Hal")', ["ann"]),
        ('(last_name = "Smith" AND first_name = "Ann") OR first_name = "H*"', ["ann", "hal"]),
        ('first_name = "H*" OR first_name = "Ann" AND last_name = "Smith"', ["ann", "hal"]),
        # A missing path, or another JSON type, matches neither = nor !=; NOT is the complement.
        ('metadata.plan != "pro"', ["bob", "hal"]),
        ('NOT metadata.plan = "pro"', ["bob", "cy", "dee", "eve", "fay", "hal"]),
        ('-metadata.plan = "pro"', ["bob", "cy", "dee", "eve", "fay", "hal"]),
        ("metadata.plan = null", ["cy"]),
        ("metadata.n > 2", ["ann", "bob", "cy"]),
        ('metadata.n = "10"', ["dee"]),
        ("metadata.n = 10.0", ["bob"]),
        ("metadata.n = 1e1", ["bob"]),
        ("metadata.flag = true", ["ann", "gus"]),
        ("metadata.flag != true", ["bob"]),
        ('metadata.nested.tier = "gold"', ["ann"]),
        ('metadata.nested.tier < "h"', ["ann"]),
        ('metadata.`plan-v2`.tier = "pro"', ["dee"]),
        ("metadata:plan", ["ann", "bob", "cy", "eve", "gus", "hal"]),
        ("metadata.nested:tier", ["ann", "bob", "eve", "gus"]),
        ("metadata.nested.tier:x", ["eve"]),
        ("metadata.plan:pro", []),  # a list holding "pro" is not an object with that key
        ('metadata.plan = "pro"', ["ann", "gus"]),  # ["pro"] is not "pro"
        # Wildcards at the start and/or end; % and _ are plain characters; * elsewhere is literal.
        ('email = "*@example.com"', ["ann", "cy", "eve", "gus"]),
        ('last_name = "Sm*"', ["ann", "bob", "cy", "hal"]),
        ('last_name = "*ith"', ["ann", "eve", "hal"]),
        ('first_name = "*0*"', ["cy", "fay"]),
        ('first_name = "50%*"', ["cy"]),
        ('first_name = "50_*"', []),
        ('first_name = "H*l"', ["hal"]),
        ('first_name != "*n"', ["bob", "cy", "dee", "eve", "fay", "gus", "hal"]),
        ('first_name = "*"', [p["user_id"] for p in PEOPLE]),
        # email compares case-insensitively; every other string is case-sensitive.
        ('email = "ann@example.COM"', ["ann"]),
        ('email = "*@EXAMPLE.com"', ["ann", "cy", "eve", "gus"]),
        ('last_name = "smith"', ["eve"]),
        ('metadata.plan = "Pro"', ["hal"]),
        ('email = ""', ["dee"]),
        # Strings order by code point (C collation): upper case before lower case.
        ('last_name < "a"', ["ann", "bob", "cy", "dee", "fay", "gus", "hal"]),
        ('user_id >= "eve" AND user_id < "gus"', ["eve", "fay"]),
        ("session_count >= 2", ["ann", "gus"]),
        ("session_count = 0 AND metadata.n <= 0", ["hal"]),
        ('last_name = "O\'Neil"', ["gus"]),
    ],
)
def test_filters_select_by_the_documented_rules(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]], text: str, expected: list[str]
) -> None:
    assert listed(users, text) == expected
    assert listed(users, text, limit=1) == expected
    assert count(users, text) == len(expected)


def test_not_is_the_complement_of_every_comparison(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]]
) -> None:
    everyone = [person["user_id"] for person in people]
    for text in [
        'metadata.plan = "pro"',
        "metadata.n < 3",
        'metadata.nested.tier != "gold"',
        "metadata.x:y",
        'email = "*example.com"',
        "metadata.flag = null",
    ]:
        chosen = set(listed(users, text))
        assert listed(users, f"NOT ({text})") == [u for u in everyone if u not in chosen], text


def test_timestamps_compare_as_instants_in_any_offset(users: users_pb2_grpc.UserServiceStub) -> None:
    made = [
        users.CreateUser(users_pb2.CreateUserRequest(user_id=f"t{n}"), timeout=TIMEOUT).user for n in range(5)
    ]
    third = made[2].created_at.ToDatetime(dt.timezone.utc)
    in_utc = third.isoformat().replace("+00:00", "Z")
    elsewhere = third.astimezone(dt.timezone(dt.timedelta(hours=-5, minutes=-30))).isoformat()
    for moment in (in_utc, elsewhere):
        assert listed(users, f'created_at <= "{moment}"') == ["t0", "t1", "t2"]
        assert listed(users, f'created_at > "{moment}"') == ["t3", "t4"]
        assert listed(users, f'created_at = "{moment}"') == ["t2"]
    assert listed(users, f'updated_at >= "{in_utc}" AND id != {made[3].id}') == ["t2", "t4"]


def test_an_empty_filter_lists_and_counts_everything(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]]
) -> None:
    assert listed(users, "") == listed(users, "   ") == [p["user_id"] for p in people]
    assert count(users, "") == len(people)


def test_filtered_pages_keep_cursor_rules(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]]
) -> None:
    text = 'last_name = "Sm*"'  # ann, bob, cy, hal
    first = users.ListUsers(users_pb2.ListUsersRequest(limit=2, filter=text), timeout=TIMEOUT)
    assert [u.user_id for u in first.users] == ["ann", "bob"]
    assert first.next_cursor == first.users[-1].id
    second = users.ListUsers(
        users_pb2.ListUsersRequest(limit=2, cursor=first.next_cursor, filter=text), timeout=TIMEOUT
    )
    assert [u.user_id for u in second.users] == ["cy", "hal"]
    assert second.next_cursor == 0  # nothing matching follows, though other users do
    none = users.ListUsers(users_pb2.ListUsersRequest(filter='user_id = "nobody"'), timeout=TIMEOUT)
    assert list(none.users) == []
    assert none.next_cursor == 0


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_filtered_stream_sends_only_matches_and_resumes_from_next_cursor(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]], chunk_size: int
) -> None:
    text = 'email = "*example.com" OR metadata.n < 0'
    expected = listed(users, text)
    assert expected == ["ann", "cy", "eve", "fay", "gus"]
    chunks = streamed(users, text, chunk_size)
    assert [u.user_id for c in chunks for u in c.users] == expected
    assert all(c.users for c in chunks)
    assert chunks[-1].next_cursor == 0
    assert [c.next_cursor for c in chunks[:-1]] == [c.users[-1].id for c in chunks[:-1]]
    # A broken stream resumes from any next_cursor received: no user twice, none skipped.
    for index, chunk in enumerate(chunks[:-1]):
        received = [u.user_id for c in chunks[: index + 1] for u in c.users]
        rest = streamed(users, text, chunk_size, cursor=chunk.next_cursor)
        assert received + [u.user_id for c in rest for u in c.users] == expected


def test_filtered_stream_with_no_match_is_empty(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]]
) -> None:
    assert streamed(users, "metadata.n > 1000", 2) == []


def test_sessions_are_filtered_and_counted(
    users: users_pb2_grpc.UserServiceStub,
    sessions: sessions_pb2_grpc.SessionServiceStub,
    people: list[dict[str, Any]],
) -> None:
    sessions.CreateSession(
        sessions_pb2.CreateSessionRequest(session_id="lone", metadata=struct({"n": 1})), timeout=TIMEOUT
    )

    def session_ids(text: str, user_id: str = "", limit: int = 1) -> list[str]:
        found, cursor = [], 0
        while True:
            page = sessions.ListSessions(
                sessions_pb2.ListSessionsRequest(limit=limit, cursor=cursor, user_id=user_id, filter=text),
                timeout=TIMEOUT,
            )
            found += [s.session_id for s in page.sessions]
            if not page.next_cursor:
                return found
            cursor = page.next_cursor

    def counted(text: str) -> int:
        response = sessions.CountSessions(sessions_pb2.CountSessionsRequest(filter=text), timeout=TIMEOUT)
        return int(response.count)

    cases = {
        "metadata.n = 1": ["ann-s1", "gus-s1", "lone"],
        'user_id = "gus" AND metadata.n >= 1': ["gus-s1", "gus-s2"],
        'user_id = ""': ["lone"],
        'user_id != ""': ["ann-s0", "ann-s1", "bob-s0", "gus-s0", "gus-s1", "gus-s2"],
        'session_id = "*-s0"': ["ann-s0", "bob-s0", "gus-s0"],
        "NOT metadata:kind": ["lone"],
        "": ["ann-s0", "ann-s1", "bob-s0", "gus-s0", "gus-s1", "gus-s2", "lone"],
    }
    for text, expected in cases.items():
        assert session_ids(text) == expected, text
        assert counted(text) == len(expected), text
    assert session_ids("metadata.n = 0", user_id="gus") == ["gus-s0"]
    details = expect_error(
        sessions.ListSessions,
        sessions_pb2.ListSessionsRequest(filter="email = 'x'"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details.reason == "INVALID_FILTER"
    details = expect_error(
        sessions.CountSessions,
        sessions_pb2.CountSessionsRequest(filter="session_count = 1"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "unknown field 'session_count'" in details.violations["filter"]


LONG = "user_id = " + '"' + "x" * 2040 + '"'
THIRTY_THREE = " OR ".join(f"id = {n}" for n in range(33))


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("user_id =", 10, "expected a value"),
        ('user_id = "a" AND', 18, "expected a field name"),
        ('user_id = "a" OR OR', 18, "expected a field name"),
        ('user_id "a"', 9, "expected an operator"),
        ('user_id == "a"', 10, "expected a value"),
        ('(user_id = "a"', 15, "expected ')' to close the '(' at character 1"),
        ('user_id = "a")', 14, "expected AND, OR or the end"),
        ('user_id = "a" user_id = "b"', 15, "expected AND, OR or the end"),
        ('user_id = "a" and id = 1', 15, "expected AND, OR or the end"),
        ('user_id = "unterminated', 11, "never closed"),
        ('user_id = "bad \\n escape"', 16, 'only \\" and \\\\ are escapes'),
        ("user_id = 'single'", 11, "expected a value"),
        ('nickname = "x"', 1, "unknown field 'nickname'"),
        ('session_id = "x"', 1, "unknown field 'session_id'"),
        ('email.domain = "x"', 1, "email is not an object"),
        ("email = 3", 9, "email is a string"),
        ('session_count = "x"', 17, "session_count is an integer"),
        ("session_count = 1.5", 17, "session_count is an integer"),
        ("id > 9223372036854775808", 6, "out of its range"),
        ("created_at > 5", 14, "created_at is a timestamp"),
        ('created_at > "2026-01-02"', 14, "not an RFC 3339 timestamp"),
        ('created_at > "2026-02-30T00:00:00Z"', 14, "not an RFC 3339 timestamp"),
        ('updated_at < "2026-01-02T03:04:05"', 14, "not an RFC 3339 timestamp"),
        ('metadata = "x"', 1, "compare a key of metadata"),
        ("metadata.x < null", 14, "null compares only with ="),
        ("metadata.x != null", 15, "null compares only with ="),
        ("metadata.x > true", 14, "true and false compare only with = and !="),
        ("email:x", 1, "applies only to metadata"),
        ("metadata.:x", 10, "expected a key after '.'"),
        ("metadata.``.x = 1", 10, "cannot be empty"),
        ("metadata.x = 1e99999", 14, "numbers are at most"),
        ("NOT", 4, "expected a field name"),
        ("-", 2, "expected a field name"),
        ("()", 2, "expected a field name"),
        ("(" * 33 + "id = 1" + ")" * 33, 33, "nest at most 32 levels"),
        ("NOT " * 33 + "id = 1", 129, "nest at most 32 levels"),
        (LONG, 2049, "at most 2048 characters"),
        (THIRTY_THREE, len(THIRTY_THREE) - 6, "at most 32 comparisons"),
    ],
)
def test_every_bad_filter_is_invalid_filter_naming_its_character(
    users: users_pb2_grpc.UserServiceStub, text: str, position: int, says: str
) -> None:
    calls: list[tuple[Any, Any]] = [
        (users.ListUsers, users_pb2.ListUsersRequest(filter=text)),
        (users.CountUsers, users_pb2.CountUsersRequest(filter=text)),
    ]
    for call, request in calls:
        details = expect_error(call, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert details.reason == "INVALID_FILTER"
        assert list(details.violations) == ["filter"]
        assert details.violations["filter"].startswith(f"at character {position}: "), details.violations
        assert says in details.violations["filter"], details.violations
    with pytest.raises(grpc.RpcError) as raised:
        streamed(users, text, 10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bad_filter_is_reported_with_the_other_bad_fields(users: users_pb2_grpc.UserServiceStub) -> None:
    details = expect_error(
        users.ListUsers, users_pb2.ListUsersRequest(limit=-1, filter="id ="), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details.reason == "INVALID_FILTER"
    assert set(details.violations) == {"limit", "filter"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_any_text_is_either_a_filter_or_invalid_filter(
    users: users_pb2_grpc.UserServiceStub, text: str
) -> None:
    """Never UNKNOWN, INTERNAL or SQL text: whatever is typed is parsed or refused with a position."""
    failure: grpc.RpcError | None = None
    try:
        users.CountUsers(users_pb2.CountUsersRequest(filter=text), timeout=TIMEOUT)
    except grpc.RpcError as error:
        failure = error
    if failure is not None:
        details = details_of(failure)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (text, details)
        assert details.reason == "INVALID_FILTER"
        assert details.violations["filter"].startswith("at character "), details


def test_concurrent_filtered_listings_and_counts_agree(
    users: users_pb2_grpc.UserServiceStub, people: list[dict[str, Any]], db: peewee.Database
) -> None:
    texts = ['metadata.plan = "pro"', 'email = "*example.com"', "metadata.n >= 0", 'last_name = "Sm*"'] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda text: (listed(users, text, limit=1), count(users, text)), texts))
    for text, (found, counted) in zip(texts, results, strict=True):
        assert found == listed(users, text), text
        assert counted == len(found), text


def test_filtered_stream_pages_read_again_user_by_user_keep_the_filter(
    db: peewee.Database, start_server: Callable[[Settings], RunningServer]
) -> None:
    """Pages too large for one message (and users lacking stored bytes) are read again by id
    range: only the matching users of that range may come back."""
    limit = 1024 * 1024
    ids = bulk_users(db, 60, pad=60_000)  # no stored bytes yet, and eighteen pass the limit
    handle = start_server(Settings(listen="127.0.0.1:0", max_message_bytes=limit))
    with grpc.insecure_channel(
        f"127.0.0.1:{handle.port}", options=[("grpc.max_receive_message_length", limit)]
    ) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        request = users_pb2.ListUsersChunkedRequest(
            chunk_size=1000, filter="metadata.n > 20 AND metadata.n <= 50"
        )
        messages = list(stub.ListUsersChunked(request, timeout=TIMEOUT))
    assert len(messages) > 1
    assert [u.id for m in messages for u in m.users] == ids[20:50]
    assert messages[-1].next_cursor == 0


def test_the_readme_filtering_examples_work_as_pasted(server: ServerAddress, repo_root: Path) -> None:
    """The grpcurl block of the README's Filtering section, run as written (against this suite's
    server): every call succeeds but the one shown failing, and each answers what it should."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Filtering") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh\n"))]
    assert "alias grpcurl=.venv/bin/grpcurl" in block
    script = block.replace("alias grpcurl=.venv/bin/grpcurl", f'grpcurl() {{ "{GRPCURL}" "$@"; }}').replace(
        "localhost:50051", server.target
    )
    ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert ran.stderr.count("ERROR:") == 1, ran.stderr
    assert "INVALID_FILTER" in ran.stderr
    assert "at character 17: session_count is an integer" in ran.stderr
    answers = [json.loads(part) for part in re.split(r"(?<=\n})\n(?=\{)", ran.stdout.strip())]
    assert [user["user_id"] for user in answers[0]["users"]] == ["ann", "bob", "cy"]  # BatchCreateUsers
    assert [user["user_id"] for user in answers[1]["users"]] == ["ann"]  # metadata.plan = "pro"
    assert answers[2] == {"count": "1"}  # cy: an example.com address and no plan
    assert [user["user_id"] for user in answers[3]["users"]] == ["ann", "bob"]  # the stream's one chunk
    assert answers[4] == {"count": "1"}  # cy's plan-v2 tier
    assert answers[6] == {"count": "1"}  # after answers[5], the session created
