"""Filtered listings read span by span of ids, so a page's work follows the page, not the table.

PostgreSQL alone reads a filtered page in one of two ways, chosen by an estimate that
for metadata containment is often off by a hundredfold: walk the primary key from the
cursor, checking every row until the page is full (100 rows read per match for a 1%
filter; the whole table for a rare one), or take every match in the table from the
GIN index on metadata, then sort them to keep a page (10,000 rows for a 1% filter at
a million users, growing with the table). This module decides instead, step by step,
from what the steps before it found:

- Walk: the primary key over a bounded span of ids after the cursor, checking each row.
  Cheapest for a dense filter, and the first step of a filter not seen before, which
  measures how dense it is.
- Window: for a filter with a metadata equality (``metadata.plan = "pro"``, alone or
  ANDed with other terms), the users of a few ranges of RANGE_SIZE ids whose metadata
  contains it, from ``users_metadata_in_id_range_idx`` (migration 9), which keys
  metadata by the id's range. Reads about one row per match.
- Rest: once a window of MAX_RANGES ranges has come up short, the filter is rare: the
  rest of the page is the matches after it, through the plain GIN index (few rows).

Each step is sized by the density found so far (matches per id): about what the rest
of the page needs, with a margin, and at least GROWTH times the step before when that
found nothing. Densities are remembered per filter (Densities), so the next page of a
filter starts with the right step. The steps decide only which rows are looked at;
the filter's whole condition decides which are returned, so a page is exactly what
the plain query would return.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from memstore_server.filtering import Condition

# Ids per range: 2**11. Keep in step with migrations/m0009_metadata_by_id_range.py.
RANGE_BITS = 11
RANGE_SIZE = 1 << RANGE_BITS
# The first walk of a filter whose density is unknown.
FIRST_WALK = RANGE_SIZE
# What reading costs, in µs, as measured on a million users (a cached table): checking a row
# of a walk; fetching a candidate of a window or a rest (each on its own heap page); probing
# the range index for one range; planning and running one more statement.
CHECK_US = 0.4
CANDIDATE_US = 6.0
PROBE_US = 20.0
STATEMENT_US = 500.0
# Above this density a walk reads an id for less than a window: CHECK_US against
# PROBE_US / RANGE_SIZE + density * CANDIDATE_US.
DENSE = (CHECK_US - PROBE_US / RANGE_SIZE) / CANDIDATE_US
# A step that came up short is followed by one at least this many times its span.
GROWTH = 4
# The largest window, and the largest walk.
MAX_RANGES = 256
MAX_SPAN = MAX_RANGES * RANGE_SIZE
# Steps ask for this many times the ids the density says would do: matches are not even.
MARGIN = 1.25
# Filters whose density is remembered, the most recently used kept.
REMEMBERED_FILTERS = 1024

# The candidates of a window: users whose metadata, keyed by their id's range, contains one
# of the window's keys. The filter's whole condition is applied on top, as IS TRUE so that
# PostgreSQL cannot take it for an index condition, the cursor as ``id + 0`` so that it cannot
# walk the primary key instead, and OFFSET 0 keeps the ordering outside: the plan is the range
# index's, whatever the statistics say.
CANDIDATES = (
    "SELECT {columns} FROM users WHERE memstore_metadata_in_id_range(id, metadata) @> ANY(%s::jsonb[]) "
    "AND id + 0 > %s AND ({condition}) IS TRUE OFFSET 0"
)
# A walk's rows: the primary key through a bounded span, the condition checked on each row.
WALKED = "SELECT {columns} FROM users WHERE id > %s AND id <= %s AND ({condition}) IS TRUE"
# The rest of a rare filter's page: every match after the cursor, by the filter's own indexes.
REST = "SELECT {columns} FROM users WHERE id + 0 > %s AND {condition} OFFSET 0"


@dataclass(frozen=True)
class Walk:
    """Users with ids after ``after`` through ``through``, by the primary key."""

    after: int
    through: int


@dataclass(frozen=True)
class Window:
    """Users after ``after`` in ranges ``first`` to ``first + count - 1`` of ids, by the range index."""

    after: int
    first: int
    count: int

    @property
    def through(self) -> int:
        return ((self.first + self.count) << RANGE_BITS) - 1

    def keys(self, contains: str) -> list[str]:
        """The JSON objects that a candidate's keyed metadata contains, one per range."""
        return [f'{{"{number}":{contains}}}' for number in range(self.first, self.first + self.count)]


@dataclass(frozen=True)
class Rest:
    """Every match after ``after``: the filter is rare there."""

    after: int


Step = Walk | Window | Rest


class Densities:
    """Matches per id of recently listed filters, shared by the threads that read pages."""

    def __init__(self, size: int = REMEMBERED_FILTERS) -> None:
        self._size = size
        self._known: OrderedDict[object, float] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> float | None:
        with self._lock:
            density = self._known.get(key)
            if density is not None:
                self._known.move_to_end(key)
            return density

    def put(self, key: object, density: float) -> None:
        with self._lock:
            self._known[key] = density
            self._known.move_to_end(key)
            while len(self._known) > self._size:
                self._known.popitem(last=False)


class FilteredScan:
    """The steps of one read of ``needed`` rows after the id ``after`` that match a filter with a
    metadata equality.

    Iterate for the next step; after reading it (at most ``remaining`` rows, in id
    order), call ``found``. Whenever ``needs_end`` is true, set ``end`` (the table's
    largest id) before taking the next step. Iteration ends when the read has its rows,
    the steps have passed ``end``, or after a Rest.
    """

    def __init__(self, after: int, needed: int, density: float | None) -> None:
        self.after = after
        self.remaining = needed
        self.end: int | None = None
        self._known_density = density
        self._position = after  # every id up to here has been looked at
        self._matches = 0
        self._last: Walk | Window | None = None

    def __iter__(self) -> Iterator[Step]:
        while self.remaining > 0:
            if self.needs_end:
                raise RuntimeError("FilteredScan: set end before the next step (needs_end)")
            if self.end is not None and self._position >= self.end:
                return
            step = self._next_step()
            if isinstance(step, Rest):
                yield step
                return
            self._last = step
            yield step
            if self.remaining > 0:
                self._position = step.through

    def found(self, rows: int, last_id: int) -> None:
        """The step gave ``rows`` rows (at most ``remaining``), the last of them ``last_id``."""
        self._matches += rows
        self.remaining -= rows
        if self.remaining == 0:
            self._position = last_id

    @property
    def density(self) -> float | None:
        """Matches per id over the ids looked at so far; None before any were."""
        looked_at = self._position - self.after
        return self._matches / looked_at if looked_at > 0 else None

    @property
    def needs_end(self) -> bool:
        """True when the next step depends on where the table ends: once a step has come up
        short, or from the start for a filter known to be sparse (a rest may do)."""
        if self.remaining == 0 or self.end is not None:
            return False
        if self._last is not None:
            return True
        return self._known_density is not None and self._known_density < DENSE

    def _next_step(self) -> Step:
        last = self._last
        if last is None and self._known_density is None:
            return Walk(self._position, self._position + FIRST_WALK)
        looked_at = self._position - self.after
        # A point estimate sizes the step; one erring high (a match more than seen) decides
        # whether reading every match left is cheaper than stepping on.
        density = self._known_density if last is None else self._matches / looked_at
        likely_most = density if last is None else (self._matches + 1) / looked_at
        assert density is not None
        assert likely_most is not None
        if self.end is not None and self._rest_is_cheaper(likely_most):
            return Rest(self._position)
        last_span = 0 if last is None else last.through - last.after
        span = min(MAX_SPAN, max(last_span * GROWTH, _ids_for(self.remaining, density)))
        if density >= DENSE:
            return Walk(self._position, self._position + span)
        first = (self._position + 1) >> RANGE_BITS
        unread_of_first = ((first + 1) << RANGE_BITS) - 1 - self._position
        count = 1 + math.ceil(max(0, span - unread_of_first) / RANGE_SIZE)
        return Window(self._position, first, min(MAX_RANGES, count))

    def _rest_is_cheaper(self, density: float) -> bool:
        """Whether fetching every match after the position (at ``density``) costs less than
        windows reaching the page's remaining matches would."""
        assert self.end is not None
        rest = STATEMENT_US + density * (self.end - self._position) * CANDIDATE_US
        ids = _ids_for(self.remaining, density) if density > 0 else self.end - self._position
        ids = min(ids, self.end - self._position)
        windows = (
            STATEMENT_US * math.ceil(ids / MAX_SPAN)
            + PROBE_US * ids / RANGE_SIZE
            + CANDIDATE_US * min(self.remaining * MARGIN, density * ids)
        )
        return rest <= windows


def _ids_for(needed: int, density: float) -> int:
    """Ids that hold about ``needed`` matches at ``density``, with the margin."""
    if density <= 0:
        return 0
    return math.ceil(needed * MARGIN / density)


def selection(step: Step, columns: str, where: Condition) -> tuple[str, tuple[Any, ...]]:
    """The SELECT of ``columns`` of the rows ``step`` looks at that match ``where`` (unordered,
    to be ordered by id outside), and its parameters."""
    if isinstance(step, Walk):
        return WALKED.format(columns=columns, condition=where.sql), (step.after, step.through, *where.params)
    if isinstance(step, Window):
        assert where.metadata_contains is not None, "a window needs the filter's metadata equality"
        keys = step.keys(where.metadata_contains)
        return CANDIDATES.format(columns=columns, condition=where.sql), (keys, step.after, *where.params)
    return REST.format(columns=columns, condition=where.sql), (step.after, *where.params)
