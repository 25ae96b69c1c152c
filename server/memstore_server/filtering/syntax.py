"""The filter language's syntax: text -> tree, with the character at which it goes wrong.

A subset of AIP-160, parsed by hand (recursive descent) because the language is
small and its errors must name the exact character; the grammar, loosest first:

    expression  := factor ("AND" factor)*
    factor      := term ("OR" term)*          # OR binds tighter than AND (AIP-160)
    term        := "NOT" term | "-" term | "(" expression ")" | restriction
    restriction := field OP value | field ":" key
    field       := name ("." name)*           # name: [A-Za-z_][A-Za-z0-9_]* or `any text`
    key         := name | string
    value       := string | number | "true" | "false" | "null"
    OP          := "=" | "!=" | "<" | "<=" | ">" | ">="

Nothing here knows which fields exist or what their types are (compiler.py does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

MAX_FILTER_CHARS = 2048
MAX_COMPARISONS = 32
# Parentheses and NOTs nest at most this deep: each level is a Python call here, and the
# character limit alone would allow two thousand of them.
MAX_NESTING = 32
# Numbers beyond this many decimal orders of magnitude cannot be stored (metadata numbers are
# doubles) and PostgreSQL's numeric would refuse some of them: refused here, with a position.
MAX_NUMBER_EXPONENT = 1000

Operator = Literal["=", "!=", "<", "<=", ">", ">="]
_OPERATORS: tuple[Operator, ...] = ("<=", ">=", "!=", "=", "<", ">")  # longest first
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_LITERALS = {"true": True, "false": False, "null": None}


class FilterError(Exception):
    """What is wrong with a filter, and at which character (0-based ``position``)."""

    def __init__(self, position: int, problem: str) -> None:
        super().__init__(f"at character {position + 1}: {problem}")
        self.position = position
        self.problem = problem


@dataclass(frozen=True)
class Field:
    """A field as written: its name, and for ``metadata`` the keys of the path below it."""

    name: str
    path: tuple[str, ...]
    position: int


@dataclass(frozen=True)
class Value:
    """A literal: a string, a number (exact, as written), a boolean or null."""

    value: str | Decimal | bool | None
    position: int


@dataclass(frozen=True)
class Comparison:
    field: Field
    operator: Operator
    value: Value


@dataclass(frozen=True)
class Has:
    """``field:key``: the key exists in the object at ``field``."""

    field: Field
    key: str


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = Comparison | Has | Not | And | Or


def parse(text: str) -> Node | None:
    """The tree of ``text``; None when it is empty (or only spaces): no filter."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(
            MAX_FILTER_CHARS, f"a filter is at most {MAX_FILTER_CHARS} characters; this one has {len(text)}"
        )
    parser = _Parser(text)
    parser.skip_spaces()
    if parser.at_end():
        return None
    tree = parser.expression(0)
    parser.skip_spaces()
    if not parser.at_end():
        raise FilterError(parser.pos, f"expected AND, OR or the end of the filter, found {parser.found()}")
    return tree


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.comparisons = 0

    # Characters.
    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def found(self) -> str:
        """What stands at the current position, for an error message."""
        if self.at_end():
            return "the end of the filter"
        match = _NAME.match(self.text, self.pos)
        token = match.group() if match else self.text[self.pos]
        return repr(token)

    def word(self) -> str | None:
        """The name at the current position (without moving), if any."""
        match = _NAME.match(self.text, self.pos)
        return match.group() if match else None

    def keyword(self, keyword: str) -> bool:
        """Consume ``keyword`` when it stands here as a whole word."""
        if self.word() == keyword:
            self.pos += len(keyword)
            return True
        return False

    # The grammar.
    def expression(self, depth: int) -> Node:
        operands = [self.factor(depth)]
        while True:
            self.skip_spaces()
            if not self.keyword("AND"):
                break
            operands.append(self.factor(depth))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def factor(self, depth: int) -> Node:
        operands = [self.term(depth)]
        while True:
            self.skip_spaces()
            if not self.keyword("OR"):
                break
            operands.append(self.term(depth))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def term(self, depth: int) -> Node:
        self.skip_spaces()
        start = self.pos
        if depth >= MAX_NESTING:
            raise FilterError(start, f"parentheses and NOT nest at most {MAX_NESTING} levels deep")
        if self.keyword("NOT"):
            return Not(self.term(depth + 1))
        if self.text.startswith("-", start):
            self.pos += 1
            return Not(self.term(depth + 1))
        if self.text.startswith("(", start):
            self.pos += 1
            inner = self.expression(depth + 1)
            self.skip_spaces()
            if not self.text.startswith(")", self.pos):
                raise FilterError(
                    self.pos, f"expected ')' to close the '(' at character {start + 1}, found {self.found()}"
                )
            self.pos += 1
            return inner
        return self.restriction()

    def restriction(self) -> Node:
        field = self.field()
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise FilterError(field.position, f"a filter holds at most {MAX_COMPARISONS} comparisons")
        self.skip_spaces()
        if self.text.startswith(":", self.pos):
            self.pos += 1
            self.skip_spaces()
            return Has(field, self.key())
        for operator in _OPERATORS:
            if self.text.startswith(operator, self.pos):
                self.pos += len(operator)
                return Comparison(field, operator, self.value())
        raise FilterError(
            self.pos,
            f"expected an operator (=, !=, <, <=, >, >=) or ':' after the field, found {self.found()}",
        )

    def field(self) -> Field:
        start = self.pos
        word = self.word()
        if word is None or word in _KEYWORDS:
            raise FilterError(start, f"expected a field name, '(', NOT or '-', found {self.found()}")
        self.pos += len(word)
        path = []
        while self.text.startswith(".", self.pos):
            self.pos += 1
            path.append(self.name("a key after '.'"))
        return Field(word, tuple(path), start)

    def name(self, expected: str) -> str:
        """A plain name or a backquoted one (with \\` and \\\\ escapes)."""
        if self.text.startswith("`", self.pos):
            return self.quoted("`")
        word = self.word()
        if word is None:
            raise FilterError(
                self.pos, f"expected {expected} (a name, or any key in backquotes), found {self.found()}"
            )
        self.pos += len(word)
        return word

    def key(self) -> str:
        if self.text.startswith('"', self.pos):
            return self.quoted('"')
        return self.name("a key after ':'")

    def quoted(self, quote: str) -> str:
        """The text between ``quote``s at the current position; only the quote and the
        backslash may be escaped (by a backslash)."""
        start = self.pos
        self.pos += 1
        chars = []
        while True:
            if self.at_end():
                raise FilterError(start, f"this {quote} is never closed")
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                break
            if char == "\\":
                escaped = self.text[self.pos + 1 : self.pos + 2]
                if escaped not in (quote, "\\"):
                    raise FilterError(
                        self.pos, f"only \\{quote} and \\\\ are escapes here; write a backslash as \\\\"
                    )
                chars.append(escaped)
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        text = "".join(chars)
        if "\x00" in text:
            raise FilterError(start, "a NUL character cannot be compared")
        if quote == "`" and not text:
            raise FilterError(start, "a key in backquotes cannot be empty")
        return text

    def value(self) -> Value:
        self.skip_spaces()
        start = self.pos
        if self.text.startswith('"', start):
            return Value(self.quoted('"'), start)
        number = _NUMBER.match(self.text, start)
        if number:
            self.pos = number.end()
            parsed = Decimal(number.group())
            if abs(parsed.adjusted()) > MAX_NUMBER_EXPONENT and parsed != 0:
                raise FilterError(start, f"numbers are at most 1e{MAX_NUMBER_EXPONENT} in size and precision")
            return Value(parsed, start)
        word = self.word()
        if word in _LITERALS:
            self.pos += len(word)
            return Value(_LITERALS[word], start)
        raise FilterError(
            start, f'expected a value (a "string", a number, true, false or null), found {self.found()}'
        )
