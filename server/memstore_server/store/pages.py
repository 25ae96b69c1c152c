"""A page of a listing and its cursor, as the stores return them, and cut to a byte budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R", bound=Sequence[Any])


@dataclass(frozen=True)
class Page(Generic[T]):
    """Items in id order, each item's id beside it, and whether more follow the last one."""

    items: list[T]
    ids: list[int]
    more: bool

    @property
    def next_cursor(self) -> int:
        """The cursor that continues after this page; 0 when nothing follows."""
        return self.ids[-1] if self.more and self.ids else 0

    def within(self, sizes: Sequence[int], budget: int) -> Page[T]:
        """The longest leading part of this page whose items' ``sizes`` add up to at most
        ``budget``, and never less than one item; its cursor continues after the last kept.

        A page's ``limit`` counts items, but a response must also fit the message size
        limit: a cut page is still a correct page, so a caller that follows
        ``next_cursor`` gets every item, in fewer per response."""
        used = 0
        for index, size in enumerate(sizes):
            used += size
            if used > budget and index > 0:
                return Page(self.items[:index], self.ids[:index], True)
        return self


def split_page(rows: Sequence[R], limit: int) -> tuple[Sequence[R], bool]:
    """Given up to limit+1 rows, the page to return and whether more rows follow it."""
    if len(rows) > limit:
        return rows[:limit], True
    return rows, False
