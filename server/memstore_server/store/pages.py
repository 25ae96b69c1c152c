"""A page of a listing and its cursor, as the stores return them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R", bound=Sequence[Any])


@dataclass(frozen=True)
class Page(Generic[T]):
    """Items in id order, and the cursor that continues after them (0: nothing follows)."""

    items: list[T]
    next_cursor: int


def split_page(rows: Sequence[R], limit: int) -> tuple[Sequence[R], int]:
    """Given up to limit+1 rows (each starting with its id), the page to return and its next_cursor."""
    if len(rows) > limit:
        page = rows[:limit]
        return page, page[-1][0]
    return rows, 0
