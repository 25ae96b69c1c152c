"""Filter tree -> a parameterised SQL condition, checked against the resource's fields.

Every value, metadata key and pattern travels as a parameter; the SQL text is
made only of this module's own fragments and the column SQL of fields.py.

Three rules shape the SQL:
- A condition is never NULL where it matters: NOT is ``IS NOT TRUE``, so it is the
  plain complement even where a column or a metadata path is missing (NULL).
- A metadata comparison matches only a value of the compared JSON type (AIP-160: a
  missing path, or another type, does not match, for ``!=`` too). Equality is
  ``metadata @> '{"path": value}'``: exact (metadata is always an object, and the
  containment exception for arrays applies only at the top level) and served by the
  GIN index on metadata. Paths are walked with ``->``, which never indexes into arrays.
- Strings order in PostgreSQL's C collation (code point order), email through
  ``lower(email) COLLATE "C"``, the expression its index is built on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from memstore_server.filtering.fields import Column, Kind, Resource
from memstore_server.filtering.syntax import And, Comparison, FilterError, Has, Node, Not, Or

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_SQL_OPERATORS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_JSON_TYPES = {str: "string", Decimal: "number", bool: "boolean"}


@dataclass(frozen=True)
class Condition:
    """A WHERE condition with %s placeholders, and its parameters in order."""

    sql: str
    params: tuple[Any, ...]
    # The JSON object that the metadata of every match contains, when the filter is (or is an
    # AND of terms with) a metadata equality: the first such term's. A listing can find its
    # candidates by it range by range (store/id_ranges.py); the condition still decides.
    metadata_contains: str | None = None


def compile_tree(tree: Node, resource: Resource) -> Condition:
    params: list[Any] = []
    compiler = _Compiler(resource, params, _conjuncts(tree))
    sql = compiler.node(tree)
    return Condition(sql, tuple(params), compiler.metadata_contains)


def _conjuncts(node: Node) -> tuple[Node, ...]:
    """The terms that ``node`` ANDs together, through nested ANDs: each holds for every match."""
    if isinstance(node, And):
        return tuple(term for operand in node.operands for term in _conjuncts(operand))
    return (node,)


class _Compiler:
    def __init__(self, resource: Resource, params: list[Any], conjuncts: tuple[Node, ...]) -> None:
        self.resource = resource
        self.params = params
        self.conjuncts = conjuncts  # the terms that every match satisfies on its own
        self.metadata_contains: str | None = None

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "%s"

    def node(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(self.node(operand) for operand in node.operands) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.node(operand) for operand in node.operands) + ")"
        if isinstance(node, Not):
            return f"({self.node(node.operand)}) IS NOT TRUE"
        if isinstance(node, Has):
            return self.has(node)
        return self.comparison(node)

    def column(self, node: Comparison | Has) -> Column:
        field = node.field
        column = self.resource.columns.get(field.name)
        if column is None:
            names = ", ".join(
                name if spec.kind is not Kind.METADATA else "metadata.PATH"
                for name, spec in self.resource.columns.items()
            )
            raise FilterError(
                field.position, f"unknown field {field.name!r}; a {self.resource.name} has {names}"
            )
        if field.path and column.kind is not Kind.METADATA:
            raise FilterError(field.position, f"{field.name} is not an object: it has no keys below it")
        return column

    def has(self, node: Has) -> str:
        column = self.column(node)
        if column.kind is not Kind.METADATA:
            raise FilterError(
                node.field.position, "':' (has) applies only to metadata: metadata:KEY or metadata.PATH:KEY"
            )
        if not node.field.path:
            return f"({column.sql} ? {self.param(node.key)})"
        # Each placeholder is its own parameter, in order: the path is written (and passed) twice.
        typed = f"jsonb_typeof({self.json_path(column, node.field.path)}) = 'object'"
        return f"({typed} AND {self.json_path(column, node.field.path)} ? {self.param(node.key)})"

    def comparison(self, node: Comparison) -> str:
        column = self.column(node)
        if column.kind is Kind.STRING:
            return self.string(column, node)
        if column.kind is Kind.INTEGER:
            return self.integer(column, node)
        if column.kind is Kind.TIMESTAMP:
            return self.timestamp(column, node)
        return self.metadata(column, node)

    def string(self, column: Column, node: Comparison) -> str:
        value = _expect(node, str, f'{node.field.name} is a string: compare it with a "quoted" value')
        operator = node.operator
        pattern = _like_pattern(value) if operator in ("=", "!=") else None
        if column.case_insensitive:
            target = f'lower({column.sql}) COLLATE "C"'
            placeholder = f"lower({self.param(pattern if pattern is not None else value)})"
        else:
            exact_lookup = operator == "=" and pattern is None and value != ""
            target = column.sql if exact_lookup or not column.null_is_empty else f"COALESCE({column.sql}, '')"
            if operator not in ("=", "!="):
                target += ' COLLATE "C"'
            placeholder = self.param(pattern if pattern is not None else value)
        if pattern is not None:
            return f"({target} {'LIKE' if operator == '=' else 'NOT LIKE'} {placeholder})"
        return f"({target} {_SQL_OPERATORS[operator]} {placeholder})"

    def integer(self, column: Column, node: Comparison) -> str:
        number = node.value.value
        if not isinstance(number, Decimal) or number != number.to_integral_value():
            raise FilterError(
                node.value.position, f"{node.field.name} is an integer: compare it with a whole number"
            )
        whole = int(number)
        if not _INT64_MIN <= whole <= _INT64_MAX:
            raise FilterError(
                node.value.position, f"{node.field.name} is a 64-bit integer; {whole} is out of its range"
            )
        return f"({column.sql} {_SQL_OPERATORS[node.operator]} {self.param(whole)})"

    def timestamp(self, column: Column, node: Comparison) -> str:
        text = _expect(
            node,
            str,
            f'{node.field.name} is a timestamp: compare it with an RFC 3339 string ("2026-01-02T03:04:05Z")',
        )
        moment = _rfc3339(text, node.value.position)
        return f"({column.sql} {_SQL_OPERATORS[node.operator]} {self.param(moment)})"

    def json_path(self, column: Column, keys: tuple[str, ...], *, as_text: bool = False) -> str:
        arrows = [" -> "] * len(keys)
        if as_text:
            arrows[-1] = " ->> "
        return (
            "("
            + column.sql
            + "".join(arrow + self.param(key) for arrow, key in zip(arrows, keys, strict=True))
            + ")"
        )

    def metadata(self, column: Column, node: Comparison) -> str:
        keys = node.field.path
        if not keys:
            raise FilterError(
                node.field.position, "compare a key of metadata (metadata.KEY), or test one with metadata:KEY"
            )
        value, operator = node.value.value, node.operator
        if value is None and operator != "=":
            raise FilterError(
                node.value.position,
                "null compares only with = (for a key holding anything but null, write "
                "metadata:KEY AND NOT metadata.KEY = null)",
            )
        if isinstance(value, bool) and operator not in ("=", "!="):
            raise FilterError(node.value.position, "true and false compare only with = and !=")
        if operator == "=" and not (isinstance(value, str) and _like_pattern(value) is not None):
            contained = _containing(keys, value)
            if self.metadata_contains is None and any(node is term for term in self.conjuncts):
                self.metadata_contains = contained
            return f"({column.sql} @> {self.param(contained)}::jsonb)"
        json_type = _JSON_TYPES[type(value)]
        typed = f"jsonb_typeof({self.json_path(column, keys)}) = '{json_type}'"
        if isinstance(value, str):
            pattern = _like_pattern(value) if operator in ("=", "!=") else None
            text = self.json_path(column, keys, as_text=True)
            if pattern is not None:
                like = "LIKE" if operator == "=" else "NOT LIKE"
                return f"({typed} AND {text} {like} {self.param(pattern)})"
            return f'({typed} AND {text} COLLATE "C" {_SQL_OPERATORS[operator]} {self.param(value)})'
        compared = self.json_path(column, keys)
        return f"({typed} AND {compared} {_SQL_OPERATORS[operator]} {self.param(_json_scalar(value))}::jsonb)"


def _expect(node: Comparison, kind: type, problem: str) -> Any:
    value = node.value.value
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise FilterError(node.value.position, problem)
    return value


def _like_pattern(value: str) -> str | None:
    """The LIKE pattern of a value with a leading and/or trailing ``*``; None without one."""
    leading, trailing = value.startswith("*"), value.endswith("*") and len(value) > 1
    if not (leading or trailing):
        return None
    middle = value[1 if leading else 0 : -1 if trailing else None]
    escaped = middle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return ("%" if leading else "") + escaped + ("%" if trailing else "")


def _json_scalar(value: str | Decimal | bool | None) -> str:
    if isinstance(value, Decimal):
        return str(value)  # a valid JSON number: finite, digits, optional exponent
    return json.dumps(value, ensure_ascii=False)


def _containing(keys: tuple[str, ...], value: str | Decimal | bool | None) -> str:
    """The JSON object holding ``value`` at the path ``keys``: what ``@>`` looks for."""
    text = _json_scalar(value)
    for key in reversed(keys):
        text = "{" + json.dumps(key, ensure_ascii=False) + ":" + text + "}"
    return text


def _rfc3339(text: str, position: int) -> datetime:
    match = _RFC3339.fullmatch(text)
    problem = f'{text!r} is not an RFC 3339 timestamp such as "2026-01-02T03:04:05Z" or "...05.5+02:00"'
    if match is None:
        raise FilterError(position, problem)
    year, month, day, hour, minute, second, fraction, zulu, sign, offset_h, offset_m = match.groups()
    try:
        offset = timedelta(hours=int(offset_h), minutes=int(offset_m)) if not zulu else timedelta(0)
        zone = timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "").ljust(6, "0")[:6])
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone)
    except ValueError as error:  # day 31 of a 30-day month, hour 24, offset 24:00...
        raise FilterError(position, f"{problem}: {error}") from error
