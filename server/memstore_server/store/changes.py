"""The change feed's reads: changes between two PostgreSQL snapshots, the initial listing, pruning.

Sequences are taken before commit, so transactions commit out of sequence order and a
reader that advanced past the highest sequence it saw would skip the change of a
transaction still open. So, as PgQ does, a reader's position is a snapshot ``seen``
(``pg_current_snapshot()``): the changes it has are those of the transactions visible
in it. The next read takes a later snapshot ``window`` and returns the changes of
transactions visible in ``window`` and not in ``seen``, in sequence order; then
``window`` becomes ``seen``. Every transaction lands in exactly one window, whenever
it commits. A window too large for one read is read in pages: the position is then
(``seen``, ``window``, the last sequence returned), and the window's rows, all
committed, keep their order between pages.

Per user, this is commit order: two transactions changing one user serialise on its
row lock, so the later committer takes the higher sequence, and it cannot be visible
in an earlier window than the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee
import psycopg2.extensions
from memstore.v1 import users_pb2

from memstore_server.database import connection, own_connection
from memstore_server.errors import FailedPrecondition
from memstore_server.store import user_messages
from memstore_server.store.rows import USER_COLUMNS

CREATED = users_pb2.UserEvent.TYPE_CREATED
DELETED = users_pb2.UserEvent.TYPE_DELETED
# Transaction ids are 64-bit (xid8), below 2^63 in practice: PostgreSQL's epoch is 32 bits.
_MAX_XID = 2**63 - 1

# One statement, so the snapshot it returns is the one its rows were read with.
_READ = """
WITH now AS (
    SELECT pg_current_snapshot() AS snapshot,
           (SELECT pruned_below FROM user_changes_horizon) AS pruned_below
)
SELECT now.snapshot::text, now.pruned_below::text,
       c.sequence, c.type, c.message, c.user_row_id, c.user_id, c.uuid::text,
       (extract(epoch FROM c.commit_time) * 1000000)::bigint
FROM now LEFT JOIN LATERAL (
    SELECT * FROM user_changes c
    WHERE c.xid >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
      AND c.xid < pg_snapshot_xmax(coalesce(%(window)s::pg_snapshot, now.snapshot))
      AND NOT pg_visible_in_snapshot(c.xid, %(seen)s::pg_snapshot)
      AND pg_visible_in_snapshot(c.xid, coalesce(%(window)s::pg_snapshot, now.snapshot))
      AND c.sequence > %(after)s
    ORDER BY c.sequence
    LIMIT %(limit)s
) AS c ON true
"""
_STATE = (
    "SELECT feed_id::text, pruned_below::text, pg_current_snapshot()::text, "
    "(extract(epoch FROM now()) * 1000000)::bigint FROM user_changes_horizon"
)
# The oldest changes, up to the first one still within the retention, and older than
# every running transaction (so that no token handed out now is expired at once).
_PRUNABLE = """
SELECT max(xid)::text FROM (
    SELECT xid, bool_and(commit_time < now() - make_interval(secs => %s))
                OVER (ORDER BY xid, user_row_id) AS old
    FROM (
        SELECT xid, user_row_id, commit_time FROM user_changes
        WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY xid, user_row_id LIMIT %s
    ) AS oldest
) AS marked WHERE old
"""
# Several server processes prune the same table: one at a time is enough.
_PRUNE_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"
_PRUNE_LOCK_KEY = 0x6D656D6368616E67  # "memchang"
_RAISE_HORIZON = "UPDATE user_changes_horizon SET pruned_below = greatest(pruned_below, %s::xid8)"
_DELETE_BELOW = "DELETE FROM user_changes WHERE xid < %s::xid8"
_LIST_USERS = "SELECT id, message FROM users WHERE id > %s ORDER BY id LIMIT %s"
_BUILD_USERS = f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY(%s)"


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot: transactions below ``xmin`` had finished, none at or above
    ``xmax`` had, and of those between, ``xip`` were still running."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """From PostgreSQL's text form ``xmin:xmax:xip,xip``."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    @property
    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in self.xip)}"

    def is_well_formed(self) -> bool:
        """Whether PostgreSQL would accept it: 0 < xmin <= xip... (ascending) < xmax."""
        if not 0 < self.xmin <= self.xmax <= _MAX_XID:
            return False
        bounds = (self.xmin - 1, *self.xip, self.xmax)
        return all(a < b for a, b in itertools.pairwise(bounds))

    def not_before(self, other: Snapshot) -> bool:
        """Whether this snapshot can have been taken at or after ``other`` (a cheap sanity check)."""
        return self.xmin >= other.xmin and self.xmax >= other.xmax


@dataclass(frozen=True)
class Position:
    """Where a reader of the feed is (see the module's docstring)."""

    seen: Snapshot
    window: Snapshot | None = None
    after_sequence: int = 0


@dataclass(frozen=True)
class Change:
    """One change as recorded: the user's stored bytes after it (for a delete, before it)."""

    type: int
    sequence: int
    commit_micros: int
    user: bytes


@dataclass(frozen=True)
class ChangeBatch:
    """Changes read from ``start``, in order; ``end`` is the position after the last of them."""

    start: Position
    end: Position
    window: Snapshot
    changes: list[Change] = field(default_factory=list)

    def position_after(self, index: int) -> Position:
        """The position after ``changes[index]``: ``end`` for the last, else inside the window."""
        if index == len(self.changes) - 1:
            return self.end
        return Position(self.start.seen, self.window, self.changes[index].sequence)


@dataclass(frozen=True)
class FeedState:
    feed_id: str
    pruned_below: int
    now: Snapshot
    now_micros: int


def resume_token_expired() -> FailedPrecondition:
    return FailedPrecondition(
        "resume_token: the changes after it have been deleted (older than the server's "
        "--change-retention); start again with send_initial",
        reason="RESUME_TOKEN_EXPIRED",
    )


def _deleted_stub(row: Sequence[Any]) -> bytes:
    """A deleted user's identity, for a change recorded without stored bytes (none should be)."""
    return users_pb2.User(user_id=row[6], uuid=row[7], id=row[5]).SerializeToString(deterministic=True)


class ChangeStore:
    """Reads of ``user_changes`` (written by triggers, migrations/m0008_user_changes.py)."""

    def __init__(self, db: peewee.Database) -> None:
        self._db = db

    @property
    def db(self) -> peewee.Database:
        return self._db

    def listing(self) -> InitialListing:
        """A listing of every user as of one snapshot (not opened yet)."""
        return InitialListing(self._db)

    def state(self) -> FeedState:
        """The feed's identity, its pruning horizon, and a snapshot taken now."""
        with connection(self._db) as db:
            feed_id, pruned_below, now, micros = db.execute_sql(_STATE).fetchone()
        return FeedState(feed_id, int(pruned_below), Snapshot.parse(now), micros)

    def read(self, start: Position, limit: int) -> ChangeBatch:
        """Up to ``limit`` changes after ``start``: the rest of its window, or a new window
        up to now. FailedPrecondition (RESUME_TOKEN_EXPIRED) when some may have been pruned."""
        params = {
            "seen": start.seen.text,
            "window": start.window.text if start.window is not None else None,
            "after": start.after_sequence if start.window is not None else 0,
            "limit": limit,
        }
        with connection(self._db) as db:
            rows = db.execute_sql(_READ, params).fetchall()
            if int(rows[0][1]) > start.seen.xmin:
                raise resume_token_expired()
            now = rows[0][0]
            rows = [row for row in rows if row[2] is not None]
            built = self._build_missing(db, rows)
        window = start.window if start.window is not None else Snapshot.parse(now)
        changes = [
            Change(row[3], row[2], row[8], bytes(row[4]) if row[4] is not None else built[row[2]])
            for row in rows
        ]
        # A window read to its end becomes what is seen; else the next page starts after this one.
        done = len(changes) < limit
        end = Position(window) if done else Position(start.seen, window, changes[-1].sequence)
        return ChangeBatch(start, end, window, changes)

    @staticmethod
    def _build_missing(db: peewee.Database, rows: Sequence[Sequence[Any]]) -> dict[int, bytes]:
        """Bytes for changes recorded without stored bytes (rows written around the serving
        code), by sequence: the user as it is now, or its identity when it is gone."""
        missing = [row for row in rows if row[4] is None]
        if not missing:
            return {}
        current = user_messages.build(db, [row[5] for row in missing if row[3] != DELETED])
        return {row[2]: current.get(row[5]) or _deleted_stub(row) for row in missing}

    def prune(self, retention_seconds: float, batch: int) -> int:
        """Delete changes older than the retention, ``batch`` at a time; how many were deleted.

        The horizon is raised in the same transaction as the first deletion, so a
        reader's statement sees both or neither, and learns from the horizon when a
        token of its has lost changes.
        """
        deleted = 0
        with connection(self._db) as db:
            while True:
                with db.atomic():
                    if not db.execute_sql(_PRUNE_LOCK, (_PRUNE_LOCK_KEY,)).fetchone()[0]:
                        return deleted  # another process is pruning
                    newest = db.execute_sql(_PRUNABLE, (retention_seconds, batch)).fetchone()[0]
                    if newest is None:
                        return deleted
                    below = str(int(newest) + 1)
                    db.execute_sql(_RAISE_HORIZON, (below,))
                    deleted += db.execute_sql(_DELETE_BELOW, (below,)).rowcount


class InitialListing:
    """Every user as of one snapshot, in id order, page by page, and that snapshot.

    A REPEATABLE READ transaction on a connection of its own (outside the pool, held
    for the listing, which may take long), so the listing and the position where
    changes resume agree exactly: ``pg_current_snapshot()`` inside it is the snapshot
    every page is read with.
    """

    def __init__(self, db: peewee.Database) -> None:
        self._db = db
        self._conn: Any = None
        self.snapshot = Snapshot(1, 1)
        self.taken_micros = 0

    def open(self) -> None:
        self._conn = own_connection(self._db)
        self._conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True
        )
        with self._conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_current_snapshot()::text, (extract(epoch FROM now()) * 1000000)::bigint"
            )
            text, self.taken_micros = cursor.fetchone()
        self.snapshot = Snapshot.parse(text)

    def page(self, after: int, limit: int) -> tuple[list[int], list[bytes]]:
        """Up to ``limit`` users after the id ``after``: their ids and stored bytes."""
        with self._conn.cursor() as cursor:
            cursor.execute(_LIST_USERS, (after, limit))
            rows = cursor.fetchall()
            missing = [row[0] for row in rows if row[1] is None]
            built: dict[int, bytes] = {}
            if missing:
                cursor.execute(_BUILD_USERS, (missing,))
                built = {row[0]: user_messages.serialize(row) for row in cursor.fetchall()}
        return [row[0] for row in rows], [
            bytes(row[1]) if row[1] is not None else built[row[0]] for row in rows
        ]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
