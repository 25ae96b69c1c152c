"""The input rules of the API, applied before anything touches the database.

A :class:`RequestChecker` collects every violation of one request, so a caller
learns about all of its bad fields at once, and raises one InvalidArgument.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import email_validator
from google.protobuf import field_mask_pb2, struct_pb2

from memstore_server.errors import FieldViolation, InvalidArgument
from memstore_server.filtering import Condition, FilterError, Resource, compile_filter

MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 255
MAX_METADATA_BYTES = 64 * 1024
# Objects and lists nest at most this deep, the metadata object itself being level 1.
# Every JSON level costs a protobuf parser up to three levels of recursion (Struct, map
# entry, Value) and responses sit a few levels deeper than requests; stock parsers stop
# at 100 levels (Python, C++, Java), so 20 leaves every client room to spare.
MAX_METADATA_DEPTH = 20
MAX_BATCH_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# The one object key a JavaScript client (protobuf-es builds objects by assignment) loses.
_UNREADABLE_KEY = "__proto__"
# Integral doubles below this are stored as JSON integers, so they read back as written.
_EXACT_INTEGER_LIMIT = 2**53

JSONValue = Any  # None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]


@dataclass(frozen=True)
class Metadata:
    """A validated metadata object and its compact JSON text, ready for a jsonb column."""

    value: dict[str, JSONValue]
    json_text: str


def metadata_json(value: dict[str, JSONValue]) -> str:
    """The compact JSON form by which metadata size is measured and sent to PostgreSQL."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def metadata_size(value: dict[str, JSONValue], json_text: str | None = None) -> int:
    """Bytes of metadata as stored, the one measure held against MAX_METADATA_BYTES.

    That is its compact JSON with every number written out in full, as PostgreSQL
    keeps (and returns) a jsonb number: ``1e300`` is 301 bytes there, not 6, and a
    limit measured on the short form would let 64 KiB of request store megabytes.
    ``json_text`` is ``metadata_json(value)`` when the caller already has it.
    """
    text = metadata_json(value) if json_text is None else json_text
    return len(text.encode("utf-8")) + _number_growth(value)


def _number_growth(value: JSONValue) -> int:
    """How many bytes longer the numbers in ``value`` are in full than in Python's short form."""
    if isinstance(value, float):
        short = repr(value)
        return len(format(Decimal(short), "f")) - len(short)
    if isinstance(value, dict):
        return sum(_number_growth(item) for item in value.values())
    if isinstance(value, list):
        return sum(_number_growth(item) for item in value)
    return 0


def check_merged_metadata(value: dict[str, JSONValue]) -> None:
    """Refuse a merge whose result, though each part was in bounds, breaks the size limit."""
    size = metadata_size(value)
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument.single(
            "metadata", f"the merged metadata would be {size} bytes; at most {MAX_METADATA_BYTES} are allowed"
        )


class RequestChecker:
    """Checks the fields of one request and raises all violations together."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        # A bad filter gets a reason of its own, so callers can tell it from other bad input.
        self.reason = "INVALID_ARGUMENT"

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations, reason=self.reason)

    def filter(self, field: str, text: str, resource: Resource) -> Condition | None:
        """The SQL condition of a filter on ``resource``; None when it is empty (or bad)."""
        try:
            return compile_filter(text, resource)
        except FilterError as error:
            self.fail(field, str(error))
            self.reason = "INVALID_FILTER"
            return None

    def identifier(self, field: str, value: str, *, required: bool = True) -> str:
        """A caller-chosen id: 1-255 characters, no control characters."""
        if not value:
            if required:
                self.fail(field, "is required")
            return value
        if len(value) > MAX_ID_LENGTH:
            self.fail(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
        elif any(unicodedata.category(char) == "Cc" for char in value):
            self.fail(field, "must not contain control characters")
        return value

    def name(self, field: str, value: str) -> str:
        """A person's name: at most 255 characters, no NUL (PostgreSQL text cannot hold it)."""
        if len(value) > MAX_NAME_LENGTH:
            self.fail(field, f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
        elif "\x00" in value:
            self.fail(field, "must not contain NUL characters")
        return value

    def email(self, field: str, value: str) -> str:
        """Empty, or a syntactically valid address (no DNS lookup) of at most 255 characters."""
        if not value:
            return value
        if len(value) > MAX_NAME_LENGTH:
            self.fail(field, f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
            return value
        try:
            email_validator.validate_email(value, check_deliverability=False)
        except email_validator.EmailNotValidError as error:
            self.fail(field, f"is not a valid email address: {error}")
        return value

    def metadata(self, field: str, struct: struct_pb2.Struct) -> Metadata:
        """A JSON object of at most 64 KiB as stored and 20 levels deep, with no NUL
        characters and only finite numbers."""
        value = self._object(field, struct, 1)
        try:
            json_text = metadata_json(value)
        except ValueError:  # only reached when _object already recorded the bad number
            return Metadata({}, "{}")
        size = metadata_size(value, json_text)
        if size > MAX_METADATA_BYTES:
            self.fail(
                field,
                f"must be at most {MAX_METADATA_BYTES} bytes as compact JSON with numbers written "
                f"out in full (as stored), got {size}",
            )
        return Metadata(value, json_text)

    def batch_size(self, field: str, count: int) -> bool:
        """Whether a batch of ``count`` requests may be looked at: 1 to MAX_BATCH_SIZE."""
        if count == 0:
            self.fail(field, "must hold at least one request")
        elif count > MAX_BATCH_SIZE:
            self.fail(field, f"holds {count} requests; at most {MAX_BATCH_SIZE} are allowed per call")
        return 0 < count <= MAX_BATCH_SIZE

    def page_size(self, field: str, value: int) -> int:
        """0 means the default; above the maximum is coerced to it; negative is refused."""
        if value < 0:
            self.fail(field, "must not be negative")
            return DEFAULT_PAGE_SIZE
        if value == 0:
            return DEFAULT_PAGE_SIZE
        return min(value, MAX_PAGE_SIZE)

    def cursor(self, field: str, value: int) -> int:
        """The last id already seen; 0 starts at the beginning."""
        if value < 0:
            self.fail(field, "must not be negative")
            return 0
        return value

    def update_mask(
        self, field: str, mask: field_mask_pb2.FieldMask, allowed: Iterable[str]
    ) -> frozenset[str]:
        """The named fields, each of which must be updatable."""
        allowed_set = frozenset(allowed)
        paths = frozenset(mask.paths)
        for path in sorted(paths - allowed_set):
            self.fail(field, f"cannot update {path!r}; updatable fields are {', '.join(sorted(allowed_set))}")
        if not paths:
            self.fail(field, "names no field; leave it unset to update the fields that are present")
        return paths & allowed_set

    def _object(self, path: str, struct: struct_pb2.Struct, depth: int) -> dict[str, JSONValue]:
        result: dict[str, JSONValue] = {}
        for key, item in struct.fields.items():
            item_path = f"{path}.{key}"
            if "\x00" in key:
                self.fail(path, "keys must not contain NUL characters")
                continue
            if key == _UNREADABLE_KEY:
                self.fail(
                    item_path,
                    f"the key {_UNREADABLE_KEY!r} is not allowed: JavaScript clients cannot read it back "
                    "(assigning it sets an object's prototype instead of a property)",
                )
                continue
            result[key] = self._value(item_path, item, depth)
        return result

    def _nested(self, path: str, depth: int) -> bool:
        """Whether a container at ``path`` (at level ``depth``) is within the depth limit."""
        if depth <= MAX_METADATA_DEPTH:
            return True
        self.fail(
            path,
            f"nests objects or lists {depth} levels deep; metadata may nest at most "
            f"{MAX_METADATA_DEPTH} levels (the metadata object itself is level 1)",
        )
        return False

    def _value(self, path: str, item: struct_pb2.Value, depth: int) -> JSONValue:
        kind = item.WhichOneof("kind")
        if kind == "string_value":
            if "\x00" in item.string_value:
                self.fail(path, "must not contain NUL characters")
            return item.string_value
        if kind == "number_value":
            number = item.number_value
            if not math.isfinite(number):
                self.fail(path, "must be a finite number (no NaN or infinity)")
                return None
            if number.is_integer() and abs(number) < _EXACT_INTEGER_LIMIT:
                return int(number)
            return number
        if kind == "bool_value":
            return item.bool_value
        if kind == "struct_value":
            if not self._nested(path, depth + 1):
                return None
            return self._object(path, item.struct_value, depth + 1)
        if kind == "list_value":
            if not self._nested(path, depth + 1):
                return None
            return [
                self._value(f"{path}[{index}]", element, depth + 1)
                for index, element in enumerate(item.list_value.values)
            ]
        return None  # null_value, or a Value with no kind set, which JSON can only show as null
