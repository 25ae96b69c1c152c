"""Filters (a subset of AIP-160) on listings and counts: text -> checked tree -> parameterised SQL.

``syntax`` parses, ``fields`` says what each resource may be filtered on, and
``compiler`` turns a tree into a WHERE condition. ``compile_filter`` is the one
entry point; its errors carry the character they are about.
"""

from __future__ import annotations

from memstore_server.filtering.compiler import Condition, compile_tree
from memstore_server.filtering.fields import SESSIONS, USERS, Resource
from memstore_server.filtering.syntax import (
    MAX_COMPARISONS,
    MAX_FILTER_CHARS,
    MAX_NESTING,
    FilterError,
    parse,
)

__all__ = [
    "MAX_COMPARISONS",
    "MAX_FILTER_CHARS",
    "MAX_NESTING",
    "SESSIONS",
    "USERS",
    "Condition",
    "FilterError",
    "Resource",
    "compile_filter",
]


def compile_filter(text: str, resource: Resource) -> Condition | None:
    """The SQL condition of the filter ``text`` on ``resource``; None for an empty filter.

    Raises FilterError, naming the character, when the filter is not valid.
    """
    tree = parse(text)
    return None if tree is None else compile_tree(tree, resource)
